"""Magic SysRq from the toolstack (Linux's ``drivers/xen/manage.c`` ``sysrq_handler``, ``drivers/tty/sysrq.c``).

``xl sysrq DOMAIN LETTER`` writes the letter to the guest's ``control/sysrq``;
the kernel's watch reads it, writes the node back empty (so the same letter can
be sent again) and handles it, as Linux's ``handle_sysrq`` does:

* ``h``: the letters, on the console;
* ``t``: every thread's stack, on the console (show-task-states);
* ``m``: the guest's memory: frames, free frames, grant entries (show-memory-usage);
* ``b``: reboot at once, without waiting for the workload (``SHUTDOWN_reboot``);
* ``o``: power off at once (``SHUTDOWN_poweroff``);
* ``c``: crash (``SHUTDOWN_crash``: ``on_crash`` applies).

An unknown letter prints the help, as Linux does.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable

from xenlike.public.xen import ShutdownReason
from xenlike.public.xs_wire import XsdSockmsgType as XS

from .xenbus import XenbusClient

__all__ = ["SYSRQ_PATH", "SysrqHandler", "LETTERS"]

SYSRQ_PATH = "control/sysrq"


LETTERS = {
    "b": "reboot(b)",
    "c": "crash(c)",
    "h": "help(h)",
    "m": "show-memory-usage(m)",
    "o": "poweroff(o)",
    "t": "show-task-states(t)",
}


class SysrqHandler:
    """The watch callback on ``control/sysrq`` (runs in the event-loop thread)."""

    def __init__(
        self, label: str, xenbus: XenbusClient, shutdown: Callable[[int], object], memory_report: Callable[[], str]
    ) -> None:
        self.label = label
        self.xenbus = xenbus
        self.shutdown = shutdown
        self.memory_report = memory_report

    def __call__(self, path: str, token: str) -> None:
        self.xenbus.request_async(XS.READ, SYSRQ_PATH.encode() + b"\0", self._got)

    def _got(self, msg_type: int, payload: bytes) -> None:
        letter = payload.decode(errors="replace").strip("\0")
        if msg_type != XS.READ or not letter:  # our own write of "" fires the watch too
            return
        self.xenbus.write_async(SYSRQ_PATH, "")
        self.handle(letter[0])

    def handle(self, letter: str) -> None:
        """``__handle_sysrq``: one letter."""
        label = self.label
        action = LETTERS.get(letter)
        if action is None or letter == "h":
            _say(f"[{label}] sysrq: HELP : {' '.join(LETTERS.values())}")
            return
        _say(f"[{label}] sysrq: {action.split('(')[0].replace('-', ' ').capitalize()}")
        if letter == "t":
            _show_threads()
        elif letter == "m":
            _say(self.memory_report())
        elif letter == "b":
            self.shutdown(ShutdownReason.REBOOT)
        elif letter == "o":
            self.shutdown(ShutdownReason.POWEROFF)
        elif letter == "c":
            self.shutdown(ShutdownReason.CRASH)


def _show_threads() -> None:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        _say(f"thread {names.get(ident, ident)}:\n" + "".join(traceback.format_stack(frame)).rstrip())


def _say(text: str) -> None:
    print(text, flush=True)
