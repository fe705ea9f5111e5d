"""Work the guest's event loop hands to a thread of its own (Linux's ``schedule_work``).

A xenstore watch fires on the event loop, which must never block; what the
watch asks for (a hypercall, xenstore reads, forking a vCPU) runs on the
work's thread instead. Scheduling work that is already pending runs it once:
as a ``work_struct`` queued twice, the function sees the latest state, not
every event. The thread starts at the first :meth:`Work.schedule` (so a guest
that never needs it has none) or at :meth:`Work.start`, for work whose thread
must be made by the kernel's main thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Work"]


class Work:
    """``fn`` run on a daemon thread named ``name`` each time the work is scheduled; a failure is logged
    as ``"<label>: <failure>"`` and the thread waits for the next schedule."""

    def __init__(self, fn: Callable[[], None], name: str, failure: str, label: str, log: logging.Logger) -> None:
        self._fn, self._name, self._failure, self._label, self._log = fn, name, failure, label, log
        self._pending = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """Whether the work's thread exists (it runs for the rest of the guest's life)."""
        return self._thread is not None

    def start(self) -> None:
        """Make the work's thread now, from the calling thread, if it is not made yet."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def schedule(self) -> None:
        """Run ``fn`` soon on the work's thread (once, however many schedules come before it runs)."""
        self.start()
        self._pending.set()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                self._fn()
            except Exception:
                self._log.exception("%s: %s", self._label, self._failure)
