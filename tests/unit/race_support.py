"""What the race tests share: a call that holds its caller inside it, and a thread whose exception is kept.

A race test holds one thread inside a call (``Held`` stands in for it), lets the
other thread run what it races with, then releases the first: the interleaving
is the test's, not the scheduler's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Held:
    """Stands in for one call: stops its caller inside it until :attr:`release` is set, then makes the real call."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(10)
        return self.real(*args, **kwargs)


def run(target: Callable[[], object], errors: list[BaseException]) -> threading.Thread:
    """Start ``target`` in a daemon thread; what it raises goes into ``errors``."""

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread
