"""The hypervisor's console (``xen/drivers/char/console.c``): its ring of log lines and ``console_io``.

Every line the hypervisor logs is also kept in :class:`ConsoleRing`, which
``xl dmesg`` reads (``sysctl readconsole``, Xen's ``read_console_ring``); a
guest's ``console_io`` writes land there too, prefixed with its domid, as many as
Xen's printk rate limit lets through (``printk_ratelimit_ms``/``_burst``: ten lines
in five seconds a domain, then a note of how many were suppressed), so a guest
cannot push the host's own messages out of the ring or fill its log.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Result

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["ConsoleRing", "GuestLines", "console_io", "CONSOLE_RING_LINES", "CONSOLE_IO_MAX"]

CONSOLE_RING_LINES = 2000  # lines xl dmesg can show; older ones are dropped, as Xen's conring overwrites
CONSOLE_IO_MAX = 1024  # characters of one console_io write that are kept
RATELIMIT_MS = 5000  # Xen's printk_ratelimit_ms
RATELIMIT_BURST = 10  # Xen's printk_ratelimit_burst

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


class GuestLines:
    """One domain's console_io lines as Xen's ``__printk_ratelimit`` lets them through: a token bucket.

    ``RATELIMIT_BURST`` lines at once, refilled at one per ``RATELIMIT_MS / RATELIMIT_BURST``;
    the lines refused are counted, and said when the next one is let through.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = float(RATELIMIT_BURST)
        self._at = clock()
        self.suppressed = 0

    def admit(self) -> bool:
        """Whether one more line may go to the log now."""
        now = self._clock()
        self._tokens = min(
            float(RATELIMIT_BURST), self._tokens + (now - self._at) * RATELIMIT_BURST * 1000 / RATELIMIT_MS
        )
        self._at = now
        if self._tokens < 1:
            self.suppressed += 1
            return False
        self._tokens -= 1
        return True


def console_io(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """HYPERVISOR_console_io's write: the guest's text goes to the hypervisor's log, line by line, rate-limited."""
    text = str(args.get("data", ""))[:CONSOLE_IO_MAX]
    if caller.console_lines is None:
        caller.console_lines = GuestLines()
    lines: GuestLines = caller.console_lines
    for line in text.splitlines():
        if not lines.admit():
            continue
        if lines.suppressed:
            log.info("(d%d) printk: %d messages suppressed.", caller.domid, lines.suppressed)
            lines.suppressed = 0
        log.info("(d%d) %s", caller.domid, line)
    return {}, []
