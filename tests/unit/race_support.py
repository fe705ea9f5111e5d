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


def close_while_held(
    held: Held, use: Callable[[], object], close: Callable[[], object]
) -> tuple[bool, list[BaseException], list[BaseException]]:
    """Run ``use`` until it is inside ``held``, run ``close`` in a second thread, then let go.

    Returns whether the close was still waiting when let go (it should, if it
    takes what the use holds), and what each of the two raised.
    """
    use_errors: list[BaseException] = []
    close_errors: list[BaseException] = []
    user = run(use, use_errors)
    assert held.entered.wait(10)
    closer = run(close, close_errors)
    closer.join(0.2)  # the close must not finish while the use is inside
    waited = closer.is_alive()
    held.release.set()
    user.join(10)
    closer.join(10)
    assert not user.is_alive() and not closer.is_alive()
    return waited, use_errors, close_errors
