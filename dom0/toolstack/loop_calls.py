"""Functions a thread of dom0 hands to its main loop (what libxl's ``libxl__ev_*`` callbacks give a
thread that must not touch the event machinery itself).

dom0's services (xenstored, the toolstack's table, its API socket, its hypercall
channel's events) belong to the main loop. A migration's sender and receiver run
on threads of their own, so that dom0 goes on serving every other guest while
pages move; whatever they need of dom0 they ask through :meth:`LoopCalls.call`,
which the loop runs on its next turn (an eventfd wakes it).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["LoopCalls"]

T = TypeVar("T")


class LoopCalls:
    """A queue of calls for dom0's main loop; ``fd`` is readable when it has some."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Have the main loop run ``fn``; its Future holds what it returned or raised."""
        future: Future[T] = Future()
        self._queue.put((fn, future))
        os.eventfd_write(self.fd, 1)
        return future

    def call(self, fn: Callable[[], T], timeout: float | None = 30.0) -> T:
        """:meth:`submit` and wait for the result (TimeoutError if the loop does not get to it in time)."""
        return self.submit(fn).result(timeout)

    def run_pending(self) -> None:
        """The main loop's side: run every queued call."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        while True:
            try:
                fn, future = self._queue.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def close(self) -> None:
        os.close(self.fd)
