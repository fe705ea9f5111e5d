"""Pages a domU allocates to share with one other domU (Linux's ``drivers/xen/gntalloc.c``, hypervisor side).

The contract is :mod:`xenlike.public.gntalloc`. :class:`GntallocAreas` keeps, per
domain, the small sealed memfds it allocated (an *area* each, for one peer), the
pseudo-frames that name their pages in grant entries, and the unmap notifications
to fire when a holder goes away. The grant checks stay in
:mod:`xenlike.hypervisor.grant_table`; ``grant_map`` asks :meth:`GntallocAreas.find`
which area a granted frame is in before it hands a domU that area's fd, and never
the granter's own memfd.

The functions at the end are the ``gntalloc_*`` hypercalls.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain, FramePool
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.public.event_channel import EvtchnError
from xenlike.public.gntalloc import GNTALLOC_MAX_AREAS, GNTALLOC_MAX_PAGES, GNTALLOC_PFN_BASE
from xenlike.public.xen import PAGE_SIZE

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["Area", "GntallocAreas", "gntalloc_alloc", "gntalloc_free", "gntalloc_unmap_notify"]

log = logging.getLogger("xenlike.hypervisor")

_SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
_FRAME_LIMIT = 1 << 32  # grant_entry_v1.frame is a uint32


@dataclass
class Area:
    """One allocation: ``count`` pages for ``peer``, frames ``base..base+count-1``, in its own memfd."""

    owner: int
    peer: int
    base: int
    count: int
    fd: int  # read-write; -1 once freed
    ro_fd: int  # the same memfd opened read-only, for read-only grants
    view: mmap.mmap  # the hypervisor's own mapping, for unmap notifications

    def contains(self, frame: int) -> bool:
        return self.base <= frame < self.base + self.count

    @property
    def freed(self) -> bool:
        return self.fd < 0


@dataclass
class _Notify:
    """Clear ``view[offset]`` and signal ``port`` of ``domid`` when ``domid`` lets go of ``frame``.

    A mapper's notification belongs to one mapping (``handle``), as gntdev's does:
    it fires when that mapping goes, not when another of the same page does.
    """

    domid: int
    area: Area
    frame: int
    offset: int
    port: int
    handle: int | None = None


@dataclass
class _DomainAreas:
    areas: list[Area] = field(default_factory=list)
    next_frame: int = GNTALLOC_PFN_BASE

    @property
    def pages(self) -> int:
        return sum(area.count for area in self.areas)


class GntallocAreas:
    """Every domain's allocated areas and the unmap notifications on them.

    ``pool`` is the host's frame pool (an area's pages are charged to it);
    ``send(domid, port)`` signals the remote end of a port, as ``EVTCHNOP_send``.
    """

    def __init__(self, pool: FramePool, send: Callable[[int, int], None]) -> None:
        self._pool = pool
        self._send = send
        self._domains: dict[int, _DomainAreas] = {}
        self._notifies: list[_Notify] = []

    def alloc(self, owner: Domain, peer: int, count: int) -> Area:
        """A sealed memfd of ``count`` pages that ``peer`` may map; refused past the per-domain limits."""
        mine = self._domains.setdefault(owner.domid, _DomainAreas())
        if not 0 < count <= GNTALLOC_MAX_PAGES:
            raise Refused(errno.EINVAL, f"{owner.label}: gntalloc of {count} pages (1..{GNTALLOC_MAX_PAGES})")
        if peer == owner.domid:
            raise Refused(errno.EINVAL, f"{owner.label}: pages to share with itself need no gntalloc")
        if len(mine.areas) >= GNTALLOC_MAX_AREAS or mine.pages + count > GNTALLOC_MAX_PAGES:
            raise Refused(
                errno.ENOSPC,
                f"{owner.label} holds {len(mine.areas)} gntalloc areas of {mine.pages} pages; the limit is "
                f"{GNTALLOC_MAX_AREAS} areas and {GNTALLOC_MAX_PAGES} pages: free one first",
            )
        if mine.next_frame + count > _FRAME_LIMIT:
            raise Refused(errno.ENOSPC, f"{owner.label} has used up its gntalloc frame numbers")
        self._pool.reserve(count, f"{owner.label}'s gntalloc of {count} pages")
        fd = os.memfd_create(f"xenlike-gntalloc-d{owner.domid}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, count * PAGE_SIZE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            ro_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            view = mmap.mmap(fd, count * PAGE_SIZE)
        except BaseException:
            os.close(fd)
            self._pool.release(count)
            raise
        area = Area(owner.domid, peer, mine.next_frame, count, fd, ro_fd, view)
        mine.next_frame += count
        mine.areas.append(area)
        return area

    def find(self, owner: int, frame: int) -> Area | None:
        """The live area of ``owner`` that holds ``frame``, if any."""
        mine = self._domains.get(owner)
        if mine is None:
            return None
        return next((area for area in mine.areas if area.contains(frame)), None)

    def owns(self, owner: int, frame: int) -> bool:
        """Whether ``frame`` is a page of a live area of ``owner`` (what the grant checks accept)."""
        return self.find(owner, frame) is not None

    def free(self, owner: int, frame: int) -> None:
        """Drop the area whose first frame is ``frame``: the owner's notifications on it fire first."""
        area = self.find(owner, frame)
        if area is None or area.base != frame:
            raise Refused(errno.EINVAL, f"d{owner} has no gntalloc area starting at frame {frame:#x}")
        self._fire(lambda n: n.domid == owner and n.area is area)
        self._release(area)

    def set_notify(self, domid: int, area: Area, frame: int, offset: int, port: int, handle: int | None = None) -> None:
        """Register (or replace) ``domid``'s unmap notification on ``frame`` of ``area``, or on mapping ``handle``."""
        if not 0 <= offset < PAGE_SIZE:
            raise Refused(errno.EINVAL, f"d{domid}: unmap-notify offset {offset} is outside the page")
        self._notifies = [
            n
            for n in self._notifies
            if not (n.domid == domid and n.frame == frame and n.area is area and n.handle == handle)
        ]
        byte = (frame - area.base) * PAGE_SIZE + offset
        self._notifies.append(_Notify(domid, area, frame, byte, port, handle))

    def unmapped(self, domid: int, handle: int) -> None:
        """``domid`` unmapped its grant mapping ``handle``: the notification on that mapping fires."""
        self._fire(lambda n: n.domid == domid and n.handle == handle)

    def domain_died(self, domid: int) -> None:
        """The domain's process is gone, and with it every mapping it had: fire all of its notifications."""
        self._fire(lambda n: n.domid == domid)

    def remove_domain(self, domid: int) -> None:
        """A domain is destroyed: its notifications fire (if they had not) and its areas go."""
        self.domain_died(domid)
        mine = self._domains.pop(domid, None)
        for area in list(mine.areas) if mine else []:
            self._release(area, mine)

    def open_fds(self) -> int:
        """How many fds the live areas hold (two each)."""
        return 2 * sum(len(mine.areas) for mine in self._domains.values())

    def _fire(self, which: Callable[[_Notify], bool]) -> None:
        fired = [n for n in self._notifies if which(n)]
        if not fired:
            return
        self._notifies = [n for n in self._notifies if not which(n)]
        for notify in fired:
            notify.area.view[notify.offset] = 0
            try:
                self._send(notify.domid, notify.port)
            except (EvtchnError, KeyError):
                pass  # the port is gone: the clear byte says it all

    def _release(self, area: Area, mine: _DomainAreas | None = None) -> None:
        mine = mine or self._domains.get(area.owner)
        if mine is not None and area in mine.areas:
            mine.areas.remove(area)
        if not area.freed:
            os.close(area.fd)
            os.close(area.ro_fd)
            area.fd = area.ro_fd = -1
            self._pool.release(area.count)
        # The view stays while a peer's notification needs it; it goes with the last reference.


# --------------------------------------------------------------------------------
# The hypercalls.


def gntalloc_alloc(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``IOCTL_GNTALLOC_ALLOC_GREF``'s allocation: ``count`` pages for ``domid``; the fd and the first frame."""
    peer = hv.domain(args["domid"])
    area = hv.gntalloc.alloc(caller, peer.domid, int(args["count"]))
    log.info("%s: gntalloc of %d pages for %s at frame %#x", caller.label, area.count, peer.label, area.base)
    return {"frame": area.base, "count": area.count}, [area.fd]


def gntalloc_free(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``IOCTL_GNTALLOC_DEALLOC_GREF``: the area starting at ``frame`` goes; peers' mappings stay valid."""
    hv.gntalloc.free(caller.domid, args["frame"])
    return {}, []


def gntalloc_unmap_notify(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``IOCTL_GNT{ALLOC,DEV}_SET_UNMAP_NOTIFY``: clear a byte and signal a port when the caller lets go.

    The owner names its page by ``frame``; a mapper names its mapping by
    ``handle`` (``grant_map``'s), and the notification fires when that mapping is
    unmapped or the mapper dies. ``port`` must be one of the caller's own.
    """
    port, offset = args["port"], int(args["offset"])
    if "handle" in args:
        mapping = next((m for m in hv.grants.mappings_of(caller.domid) if m.handle == args["handle"]), None)
        if mapping is None:
            raise Refused(errno.EINVAL, f"{caller.label} has no grant mapping with handle {args['handle']}")
        granter, frame, handle = mapping.granter, mapping.frame, mapping.handle
    else:
        granter, frame, handle = caller.domid, args["frame"], None
    area = hv.gntalloc.find(granter, frame)
    if area is None:
        raise Refused(errno.EINVAL, f"{caller.label}: frame {frame:#x} is not an allocated page of d{granter}")
    hv.evtchn.status(caller.domid, port)  # a port out of range is refused here
    hv.gntalloc.set_notify(caller.domid, area, frame, offset, port, handle)
    return {}, []
