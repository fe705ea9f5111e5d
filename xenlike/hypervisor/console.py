"""The hypervisor's console (``xen/drivers/char/console.c``): its ring of log lines and ``console_io``.

Every line the hypervisor logs is also kept in :class:`ConsoleRing`, which
``xl dmesg`` reads (``sysctl readconsole``, Xen's ``read_console_ring``); a
guest's ``console_io`` writes land there too, prefixed with its domid.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Result

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["ConsoleRing", "console_io", "CONSOLE_RING_LINES", "CONSOLE_IO_MAX"]

CONSOLE_RING_LINES = 2000  # lines xl dmesg can show; older ones are dropped, as Xen's conring overwrites
CONSOLE_IO_MAX = 1024  # characters of one console_io write that are kept

log = logging.getLogger("xenlike.hypervisor")


class ConsoleRing(logging.Handler):
    """The hypervisor's recent log lines, ``(XEN) [time] message``, for ``xl dmesg``."""

    def __init__(self, lines: int = CONSOLE_RING_LINES) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.setFormatter(logging.Formatter("(XEN) [%(asctime)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def read(self, clear: bool = False) -> list[str]:
        """Every line kept, oldest first; ``clear`` empties the ring (``xl dmesg -c``)."""
        lines = list(self.lines)
        if clear:
            self.lines.clear()
        return lines


def console_io(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """HYPERVISOR_console_io's write: the guest's text goes to the hypervisor's log, line by line."""
    text = str(args.get("data", ""))[:CONSOLE_IO_MAX]
    for line in text.splitlines():
        log.info("(d%d) %s", caller.domid, line)
    return {}, []
