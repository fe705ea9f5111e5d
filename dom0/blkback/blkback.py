"""The block back end's data path (Linux ``drivers/block/xen-blkback/blkback.c``).

One :class:`BlkifRing` serves one device's ring, in a worker process of its own
(so a slow disk never stalls another's): it copies requests off the shared ring,
checks every field (a back end never trusts its front end), maps the granted
pages, and moves data between them and the image with ``preadv``/``pwritev``
straight into the mapped guest pages (no copy in between). A write is
acknowledged once ``pwritev`` returned (the data reached the file); FLUSH is
``fdatasync``; DISCARD punches a hole.

Grants are mapped through the hypervisor (``grant_map``), which checks that each
was granted to dom0 and, for a read into it, writable. With ``feature-persistent``
a mapping is kept and reused (Linux's persistent grants), up to
:data:`MAX_PERSISTENT_GRANTS`; without it, every request maps and unmaps.

A front end that breaks the ring protocol (an index more than a ring ahead) gets
its device disconnected; one that sends a bad request gets ``BLKIF_RSP_ERROR`` for
it (``BLKIF_RSP_EOPNOTSUPP`` for an unknown operation) and nothing else happens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from xenlike.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_PROTOCOL,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    RESPONSE,
    SECTOR_SIZE,
    SECTORS_PER_PAGE,
    SEGS_PER_INDIRECT_FRAME,
    BlkRequest,
    Segment,
    decode_request,
    unpack_segments,
)
from xenlike.hypercall import HypercallClient, HypercallError
from xenlike.memory import ForeignMapping
from xenlike.ring import BackRing

from .vbd import Vbd, punch_hole

__all__ = ["BlkifRing", "RequestError", "MAX_INDIRECT_SEGMENTS", "MAX_PERSISTENT_GRANTS", "MAX_RING_PAGE_ORDER"]

MAX_INDIRECT_SEGMENTS = 256  # feature-max-indirect-segments, as Linux blkback
MAX_RING_PAGE_ORDER = 4  # max-ring-page-order: up to 16 ring pages
MAX_PERSISTENT_GRANTS = 4096  # mappings kept per device (Linux: max_pgrants 1056 per queue)

log = logging.getLogger("dom0.blkback")


class RequestError(Exception):
    """A request refused; ``status`` is what the response carries."""

    def __init__(self, message: str, status: int = BLKIF_RSP_ERROR) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Grant:
    mapping: ForeignMapping
    handle: int
    writable: bool


@dataclass
class BlkifRing:
    """One device's ring and its I/O (Linux's ``struct xen_blkif_ring``)."""

    label: str  # "d3 (web) xvda", for logs
    frontend: int
    vbd: Vbd
    hypercall: HypercallClient
    memory_fd: int  # the front end's memory, which dom0 may map
    ring_refs: list[int]
    persistent: bool
    ring: BackRing = field(init=False)
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "errors": 0, "read_sectors": 0,
                                                           "write_sectors": 0, "maps": 0})

    def __post_init__(self) -> None:
        self._grants: dict[int, _Grant] = {}
        mapped = self._map([*self.ring_refs], writable=True)
        self._ring_handles = [handle for _, handle in mapped]
        self._ring_mapping = ForeignMapping(self.memory_fd, [frame for frame, _ in mapped])
        self.ring = BackRing(self._ring_mapping.view, BLKIF_PROTOCOL)

    # -- serving -------------------------------------------------------------------

    def process(self) -> bool:
        """Serve every request waiting; True if responses were pushed and the front must be kicked.

        Raises RingError if the front end broke the ring protocol.
        """
        data, count = self.ring.get_requests()
        if not count:
            return False
        responses = []
        slot = BLKIF_PROTOCOL.entry_size
        for index in range(count):
            request = decode_request(data[index * slot : (index + 1) * slot])
            responses.append(RESPONSE.pack(request.id, request.operation, self._serve(request)) + bytes(slot - RESPONSE.size))
        self.ring.put_responses(b"".join(responses))
        return self.ring.push_responses()

    def _serve(self, request: BlkRequest) -> int:
        self.stats["requests"] += 1
        try:
            if request.operation in (BLKIF_OP_READ, BLKIF_OP_WRITE):
                self._read_write(request.operation, request.sector_number, self._check_direct(request))
            elif request.operation == BLKIF_OP_INDIRECT:
                self._read_write(*self._indirect(request))
            elif request.operation == BLKIF_OP_FLUSH_DISKCACHE:
                os.fdatasync(self.vbd.fd)
            elif request.operation == BLKIF_OP_DISCARD:
                self._discard(request)
            else:
                raise RequestError(f"unknown operation {request.operation}", BLKIF_RSP_EOPNOTSUPP)
            return BLKIF_RSP_OKAY
        except RequestError as exc:
            self.stats["errors"] += 1
            log.warning("%s: request %d refused: %s", self.label, request.id, exc)
            return exc.status
        except OSError as exc:
            self.stats["errors"] += 1
            log.warning("%s: request %d failed: %s", self.label, request.id, exc)
            return BLKIF_RSP_ERROR

    # -- checks ---------------------------------------------------------------------

    def _check_direct(self, request: BlkRequest) -> tuple[Segment, ...]:
        if not 1 <= request.nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise RequestError(f"nr_segments {request.nr_segments} outside 1..{BLKIF_MAX_SEGMENTS_PER_REQUEST}")
        return request.segments

    def _indirect(self, request: BlkRequest) -> tuple[int, int, list[Segment]]:
        if request.indirect_op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            raise RequestError(f"indirect operation {request.indirect_op} is not READ or WRITE")
        if not 1 <= request.nr_segments <= MAX_INDIRECT_SEGMENTS:
            raise RequestError(f"nr_segments {request.nr_segments} outside 1..{MAX_INDIRECT_SEGMENTS}")
        pages = -(-request.nr_segments // SEGS_PER_INDIRECT_FRAME)
        if pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST:
            raise RequestError(f"{pages} indirect pages exceed {BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}")
        segments: list[Segment] = []
        for page, gref in enumerate(request.indirect_grefs[:pages]):
            view = self._page(gref, writable=False)
            wanted = min(SEGS_PER_INDIRECT_FRAME, request.nr_segments - page * SEGS_PER_INDIRECT_FRAME)
            segments += unpack_segments(view, wanted)  # copied once, then checked
        return request.indirect_op, request.sector_number, segments  # type: ignore[return-value]

    def _read_write(self, op: int, sector: int, segments: tuple[Segment, ...] | list[Segment]) -> None:
        writing = op == BLKIF_OP_WRITE
        if writing and self.vbd.readonly:
            raise RequestError("write to a read-only device")
        total = 0
        for seg in segments:
            if not seg.first_sect <= seg.last_sect < SECTORS_PER_PAGE:
                raise RequestError(f"segment sectors {seg.first_sect}..{seg.last_sect} are not within 0..7")
            total += seg.nr_sectors
        if sector + total > self.vbd.sectors:
            raise RequestError(f"sectors {sector}..{sector + total - 1} are past the end ({self.vbd.sectors} sectors)")
        # A READ writes into the guest's pages: their grants must allow writing.
        self._map_missing({seg.gref for seg in segments}, writable=not writing)
        views = []
        for seg in segments:
            page = self._page(seg.gref, writable=not writing)
            views.append(page if seg.first_sect == 0 and seg.last_sect == SECTORS_PER_PAGE - 1
                         else page[seg.first_sect * SECTOR_SIZE : (seg.last_sect + 1) * SECTOR_SIZE])
        offset = sector * SECTOR_SIZE
        try:
            if writing:
                done = os.pwritev(self.vbd.fd, views, offset)
                self.stats["write_sectors"] += total
            else:
                done = os.preadv(self.vbd.fd, views, offset)
                self.stats["read_sectors"] += total
        finally:
            if not self.persistent:
                views.clear()
                self._unmap_all()
        if done != total * SECTOR_SIZE:
            raise RequestError(f"short {'write' if writing else 'read'}: {done} of {total * SECTOR_SIZE} bytes")

    def _discard(self, request: BlkRequest) -> None:
        if self.vbd.readonly:
            raise RequestError("discard on a read-only device")
        if request.nr_sectors == 0 or request.sector_number + request.nr_sectors > self.vbd.sectors:
            raise RequestError(f"discard of sectors {request.sector_number}+{request.nr_sectors} is past the end")
        punch_hole(self.vbd.fd, request.sector_number * SECTOR_SIZE, request.nr_sectors * SECTOR_SIZE)

    # -- grants ---------------------------------------------------------------------

    def _page(self, gref: int, writable: bool) -> memoryview:
        """The granted page ``gref``, mapped (and kept, with persistent grants)."""
        grant = self._grants.get(gref)
        if grant is not None and (grant.writable or not writable):
            return grant.mapping.view
        if grant is not None:
            self._unmap(gref)
        if len(self._grants) >= MAX_PERSISTENT_GRANTS:
            self._unmap_all()
        try:
            [(frame, handle)] = self._map([gref], writable)
        except HypercallError as exc:
            raise RequestError(f"grant {gref}: {exc.strerror}") from None
        self._grants[gref] = _Grant(ForeignMapping(self.memory_fd, [frame], writable=writable), handle, writable)
        self.stats["maps"] += 1
        return self._grants[gref].mapping.view

    def _map_missing(self, grefs: set[int], writable: bool) -> None:
        """Map every gref not mapped yet in one hypercall (one by one if the batch is refused).

        A refused batch is retried gref by gref so that the failing one is found
        and named, and the good ones are still mapped.
        """
        missing = [g for g in grefs if g not in self._grants or (writable and not self._grants[g].writable)]
        if len(missing) < 2:
            return
        for gref in missing:
            if gref in self._grants:
                self._unmap(gref)
        if len(self._grants) + len(missing) > MAX_PERSISTENT_GRANTS:
            self._unmap_all()
        # Persistent grants are mapped writable when the front end allows it, so a
        # page first used for a write serves later reads without a second map.
        for mode in (True, False) if self.persistent or writable else (False,):
            if writable and not mode:
                return
            try:
                mapped = self._map(missing, mode)
            except HypercallError:
                continue
            for gref, (frame, handle) in zip(missing, mapped):
                self._grants[gref] = _Grant(ForeignMapping(self.memory_fd, [frame], writable=mode), handle, mode)
            self.stats["maps"] += len(missing)
            return
        # Refused both ways: _page maps them one by one and names the bad one.

    def _map(self, refs: list[int], writable: bool) -> list[tuple[int, int]]:
        result, _ = self.hypercall.call("grant_map", granter=self.frontend, refs=refs, readonly=not writable)
        return list(zip(result["frames"], result["handles"]))

    def _unmap(self, gref: int) -> None:
        grant = self._grants.pop(gref)
        grant.mapping.close()
        self.hypercall.call("grant_unmap", handles=[grant.handle])

    def _unmap_all(self) -> None:
        if not self._grants:
            return
        handles = []
        for grant in self._grants.values():
            grant.mapping.close()
            handles.append(grant.handle)
        self._grants.clear()
        self.hypercall.call("grant_unmap", handles=handles)

    def close(self) -> None:
        """Unmap every grant (ring included): after this the front end may revoke them."""
        self._unmap_all()
        self.ring.release()
        self._ring_mapping.close()
        self.hypercall.call("grant_unmap", handles=self._ring_handles)


def ring_refs_of(order: int, refs: dict[str, str]) -> list[int]:
    """The ring references a front end published, for a ring of 2**order pages."""
    if order == 0 and "ring-ref" in refs:
        return [int(refs["ring-ref"])]
    return [int(refs[f"ring-ref{i}"]) for i in range(1 << order)]

