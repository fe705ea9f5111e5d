"""The balloon driver (Linux's ``drivers/xen/balloon.c`` and ``xen-balloon.c``): the guest follows ``memory/target``.

The toolstack writes the domain's target in KiB (``xl mem-set``). Below what the
guest holds, the driver takes frames from the kernel's allocator (runs owned by
``balloon``), and gives them back to the host with ``decrease_reservation``,
which frees their memory; above it, it takes frames back with
``populate_physmap`` and returns them to the allocator. A target the guest
cannot reach (its free frames are in use) is met as far as it can be, and
``memory/balloon`` says where it got: ``reached`` or ``short NNN`` (KiB it could
not give), as Linux's balloon reports its current size in sysfs.
"""

from __future__ import annotations

import logging

from xenlike.kernel.memory import OutOfFrames
from xenlike.public.xen import PAGE_SIZE
from xenlike.public.xs_wire import XsdSockmsgType as XS

from .guest_kernel import GuestKernel
from .workqueue import Work

__all__ = ["Balloon", "TARGET", "STATUS", "KEEP_FREE_FRAMES"]

log = logging.getLogger("domu.balloon")

TARGET = "memory/target"
STATUS = "memory/balloon"
KEEP_FREE_FRAMES = 256  # the kernel's drivers keep this much (rings, a disk's pool as it grows)
_BATCH = 4096  # frames a hypercall names


class Balloon:
    """One guest's balloon: the runs it took from the allocator, and a thread that follows the target."""

    def __init__(self, kernel: GuestKernel) -> None:
        self.kernel = kernel
        self.runs: list[tuple[int, int]] = []  # (first pfn, count), taken from the allocator
        self._work = Work(self.follow, "balloon", "the balloon failed", kernel.label, log)

    @property
    def frames(self) -> int:
        return sum(count for _, count in self.runs)

    def start(self) -> None:
        self.kernel.xenbus.watch_async(TARGET, "balloon", self._on_target)

    def _on_target(self, path: str, token: str) -> None:
        """The watch (loop thread): a thread of its own only once the target asks for a change, so a guest
        that is never ballooned costs one read at boot."""

        def got(msg_type: int, payload: bytes) -> None:
            if not self._work.started:
                try:
                    target = int(payload.decode(errors="replace").strip("\0")) * 1024 // PAGE_SIZE
                except ValueError:
                    target = None
                if target == self.kernel.memory.nr_frames:
                    return  # nothing to do, as at boot
            self._work.schedule()

        self.kernel.xenbus.request_async(XS.READ, f"{TARGET}\0".encode(), got)

    def follow(self) -> None:
        """Move towards ``memory/target`` and say in ``memory/balloon`` how far it got."""
        value = self.kernel.xenbus.read_str(TARGET)
        try:
            target = int(value or "") * 1024 // PAGE_SIZE
        except ValueError:
            log.warning("%s: memory/target %r is not a number of KiB; ignored", self.kernel.label, value)
            return
        held = self.kernel.memory.nr_frames - self.frames
        if target < held:
            self._inflate(held - target)
        elif target > held:
            self._deflate(target - held)
        short = self.kernel.memory.nr_frames - self.frames - target
        self.kernel.xenbus.write(STATUS, "reached" if short <= 0 else f"short {short * PAGE_SIZE // 1024}")
        if short > 0:
            log.info("%s: memory/target is %d KiB short of reach", self.kernel.label, short * PAGE_SIZE // 1024)

    def _inflate(self, frames: int) -> None:
        """Give ``frames`` back, or as many as the allocator can spare."""
        pages = self.kernel.pages
        taken: list[tuple[int, int]] = []
        want = min(frames, max(0, pages.free_frames - KEEP_FREE_FRAMES))
        run = min(want, _BATCH)
        while want > 0 and run > 0:
            try:
                first = pages.alloc(min(run, want), owner="balloon")
            except OutOfFrames:
                run //= 2  # fragmented: smaller runs
                continue
            count = min(run, want)
            taken.append((first, count))
            want -= count
        for first, count in taken:
            pfns = list(range(first, first + count))
            self.kernel.memory.release_frames(pfns)
            try:
                self.kernel.hypercall.call("decrease_reservation", pfns=pfns)
            except OSError as exc:
                log.warning("%s: the hypervisor kept frames %d..: %s", self.kernel.label, first, exc)
                pages.free(first)
                continue
            self.runs.append((first, count))

    def _deflate(self, frames: int) -> None:
        """Take up to ``frames`` back, the runs given last first."""
        while frames > 0 and self.runs:
            first, count = self.runs[-1]
            take = min(count, frames)
            start = first + count - take
            try:
                self.kernel.hypercall.call("populate_physmap", pfns=list(range(start, first + count)))
            except OSError as exc:
                log.info("%s: the host gives no more memory: %s", self.kernel.label, exc)
                return
            self.runs.pop()
            if take < count:  # the head stays ballooned, allocated all along: no other thread is handed it
                self.kernel.pages.trim(first, count - take)
                self.runs.append((first, count - take))
            else:
                self.kernel.pages.free(first)
            frames -= take
