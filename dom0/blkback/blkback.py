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
:data:`MAX_PERSISTENT_GRANTS`; without it, every request maps and unmaps. Mapped
pages live in one :class:`~xenlike.kernel.memory.ForeignArena`, placed in segment order
when first mapped, so a run of pages the front end hands out together becomes one
I/O vector; segments are decoded and checked column-wise (no Python step per
segment on the common path).

A front end that breaks the ring protocol (an index more than a ring ahead) gets
its device disconnected; one that sends a bad request gets ``BLKIF_RSP_ERROR`` for
it (``BLKIF_RSP_EOPNOTSUPP`` for an unknown operation) and nothing else happens.

``xenlike inject`` reaches a ring through :meth:`BlkifRing.inject` (dom0's
control message): ``sector-eio`` ranges answered ``BLKIF_RSP_ERROR``, and
``ring-corrupt``, which scribbles the shared ring as a broken front end would
(``dom0/faults.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenlike.kernel import trace
from xenlike.kernel.hypercall import HypercallClient
from xenlike.kernel.memory import ForeignMapping
from xenlike.public.blkif import (
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_PROTOCOL,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    REQUEST,
    RESPONSE,
    SECTOR_SIZE,
    SECTORS_PER_PAGE,
    SEGMENT_SIZE,
    SEGS_PER_INDIRECT_FRAME,
    BlkRequest,
    SegmentArray,
    decode_request,
    unpack_segment_array,
)
from xenlike.public.ring import SRING_HEADER_SIZE, BackRing, RingError
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import PAGE_SIZE

from ..faults import RING_CORRUPTIONS, SectorRanges, scribble_req_prod, scribble_slot, traced
from ..grant_cache import GrantRefused, PersistentGrants, map_frames
from .vbd import Vbd, punch_hole

if TYPE_CHECKING:
    from ..backend_worker import WorkerContext

__all__ = [
    "BlkifRing",
    "blkif_data_path",
    "RequestError",
    "MAX_INDIRECT_SEGMENTS",
    "MAX_PERSISTENT_GRANTS",
    "POLL_S",
    "MAX_RING_PAGE_ORDER",
]

MAX_INDIRECT_SEGMENTS = 256  # feature-max-indirect-segments, as Linux blkback
MAX_RING_PAGE_ORDER = 4  # max-ring-page-order: up to 16 ring pages
MAX_PERSISTENT_GRANTS = 4096  # mappings kept per device (Linux: max_pgrants 1056 per queue)
# How long an empty ring is polled after a batch before the worker sleeps: longer than a
# front end's turnaround between batches, short enough that an idle device costs nothing.
POLL_S = 1e-3
# Indirect segment lists remembered as checked (see BlkifRing._serve_indirect): more than a
# front end's pool has runs (blkfront's: eight), so its lists stay remembered.
MAX_CHECKED_RUNS = 64

# Every segment of a request covering whole pages: the common case, checked in one comparison.
_FIRST_OF_WHOLE_PAGES = bytes(MAX_INDIRECT_SEGMENTS)
_LAST_OF_WHOLE_PAGES = bytes([SECTORS_PER_PAGE - 1]) * MAX_INDIRECT_SEGMENTS
# The same, as the columns of an unpacked slot: by the number of segments.
_WHOLE_FIRSTS = [(0,) * count for count in range(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1)]
_WHOLE_LASTS = [(SECTORS_PER_PAGE - 1,) * count for count in range(BLKIF_MAX_SEGMENTS_PER_REQUEST + 1)]

log = logging.getLogger("dom0.blkback")

_IO = TraceClass.IO.value
# Trace records name an operation (blkif.h's BLKIF_OP_*); an indirect request by the one it carries.
_OP_NAMES = {
    BLKIF_OP_READ: "read",
    BLKIF_OP_WRITE: "write",
    BLKIF_OP_FLUSH_DISKCACHE: "flush",
    BLKIF_OP_DISCARD: "discard",
}


class RequestError(Exception):
    """A request refused; ``status`` is what the response carries."""

    def __init__(self, message: str, status: int = BLKIF_RSP_ERROR) -> None:
        super().__init__(message)
        self.status = status


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
    failing: SectorRanges | None = None  # sector-eio (xenlike inject); None: no sector fails
    corrupt: str | None = None  # ring-corrupt armed: "slot" or "index", until it takes effect
    _busy_until: float = field(init=False, default=0.0)  # polling before sleeping, until then
    # Indirect segment lists already checked and mapped, by (operation, the list's bytes as
    # copied): their sector count and I/O vectors, valid while the grants' generation is
    # ``_runs_generation``. See _serve_indirect.
    _checked_runs: dict[tuple[int, bytes], tuple[int, list[memoryview]]] = field(init=False, default_factory=dict)
    _runs_generation: int = field(init=False, default=-1)
    # Linux's st_rd_req, st_wr_req, st_f_req, st_ds_req, st_rd_sect, st_wr_sect, st_oo_req
    # (xen-blkback/common.h), which xentop's VBD_* columns show. oo_requests stays 0:
    # requests are served as they are taken off the ring, so there is no pool of
    # pending requests to run out of.
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "requests": 0,
            "errors": 0,
            "read_requests": 0,
            "write_requests": 0,
            "flush_requests": 0,
            "discard_requests": 0,
            "read_sectors": 0,
            "write_sectors": 0,
            "oo_requests": 0,
            "maps": 0,
        }
    )

    def __post_init__(self) -> None:
        self.grants = PersistentGrants(
            self.hypercall, self.frontend, self.memory_fd, MAX_PERSISTENT_GRANTS, self.persistent
        )
        frames, self._ring_handles = map_frames(self.hypercall, self.frontend, [*self.ring_refs], writable=True)
        self._ring_mapping = ForeignMapping(self.memory_fd, frames)
        self.ring = BackRing(self._ring_mapping.view, BLKIF_PROTOCOL, name=self.label)

    # -- serving -------------------------------------------------------------------

    def process(self) -> bool:
        """Serve every request waiting; True if responses were pushed and the front must be kicked.

        The batch is decoded in one pass over its slots (``struct.iter_unpack``);
        a READ or WRITE with direct segments, the common case, takes no per-field
        Python step beyond its checks. Raises RingError if the front end broke the
        ring protocol.
        """
        ring = self.ring
        try:
            if self.corrupt is not None:
                self._corrupt_ring()
            data, count = ring.get_requests()
        except RingError as exc:  # Linux: "Frontend provided bogus ring requests ... Halting ring processing"
            raise RingError(f"front end provided bogus ring requests: {exc}") from None
        if not count:
            return False
        slot = BLKIF_PROTOCOL.entry_size
        responses = bytearray(count * slot)
        pack_response = RESPONSE.pack_into
        io_traced = trace.mask[0] & _IO
        for index, fields in enumerate(REQUEST.iter_unpack(data)):
            op, nr_segments, req_id = fields[0], fields[1], fields[3]
            if op <= BLKIF_OP_WRITE and 1 <= nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
                if io_traced:
                    io = self._trace_decoded(req_id, op, fields[4], nr_segments)
                status = self._serve_direct(op, req_id, fields[4], nr_segments, fields)
            else:
                request = decode_request(data[index * slot : (index + 1) * slot])
                if io_traced:
                    kind = request.operation
                    if kind == BLKIF_OP_INDIRECT and request.indirect_op is not None:
                        kind = request.indirect_op
                    io = self._trace_decoded(req_id, kind, request.sector_number, request.nr_segments)
                status = self._serve(request)
            if io_traced:
                self._trace_done(io, status)
            pack_response(responses, index * slot, req_id, op, status)
        ring.put_responses(responses)
        self._busy_until = time.monotonic() + POLL_S
        return ring.push_responses()

    # -- injected faults (xenlike inject: dom0/faults.py) ------------------------------

    def inject(self, fault: dict) -> None:
        """dom0's control message: ``{"sector_eio": [[first, last], ...]}`` (every range in force) or
        ``{"ring_corrupt": "slot"|"index"}`` (armed until it takes effect)."""
        if "sector_eio" in fault:
            ranges = [(int(first), int(last)) for first, last in fault["sector_eio"]]
            self.failing = SectorRanges(ranges) if ranges else None
        if fault.get("ring_corrupt") in RING_CORRUPTIONS:
            self.corrupt = fault["ring_corrupt"]

    def _corrupt_ring(self) -> None:
        """Scribble the shared ring as a broken front end would; a slot waits for a request to scribble.

        An index stays armed: the front end may publish its own req_prod between the
        scribble and the read, and then it is scribbled again on the next pass.
        """
        ring, view = self.ring, self._ring_mapping.view
        if self.corrupt == "index":
            bogus = scribble_req_prod(view[:SRING_HEADER_SIZE], ring.rsp_prod_pvt, ring.nr_ents)
            traced("ring-corrupt", device=self.label, what="index", req_prod=bogus)
            log.warning("%s: ring index scribbled (injected fault)", self.label)
            return
        if ring.unconsumed_requests():
            start = SRING_HEADER_SIZE + (ring.req_cons & (ring.nr_ents - 1)) * ring.entry_size
            scribble_slot(view[start : start + ring.entry_size])
            traced("ring-corrupt", device=self.label, what="slot", index=ring.req_cons)
        else:
            return
        log.warning("%s: ring slot scribbled (injected fault)", self.label)
        self.corrupt = None

    def _check_failing(self, failing: SectorRanges, sector: int, count: int) -> None:
        """sector-eio: RequestError (BLKIF_RSP_ERROR) if the request touches a failing sector."""
        bad = failing.hit(sector, count)
        if bad is not None:
            traced("sector-eio", device=self.label, sector=bad)
            raise RequestError(f"sector {bad} fails with EIO (injected fault)")

    def _trace_decoded(self, req_id: int, op: int, sector: int, segments: int) -> dict:
        """Record a request taken off the ring; its fields, and its start, for :meth:`_trace_done`."""
        started = time.monotonic_ns()
        fields = {"dev": self.label, "id": req_id, "op": _OP_NAMES.get(op, op), "sector": sector}
        trace.emit_at(Event.IO_REQUEST, started, {**fields, "segments": segments}, domid=self.frontend)
        fields["start"] = started
        return fields

    def _trace_done(self, fields: dict, status: int) -> None:
        """Record a request answered: a span from its decoding to its response, with the status it carries."""
        started = fields.pop("start")
        fields["status"], fields["dur"] = status, time.monotonic_ns() - started
        trace.emit_at(Event.IO_DONE, started, fields, domid=self.frontend)

    def _poll_for_requests(self) -> bool:
        """Spin until requests arrive or the poll window closes; True if they arrived."""
        ring, deadline, clock = self.ring, self._busy_until, time.monotonic
        while clock() < deadline:
            if ring.unconsumed_requests():
                return True
            os.sched_yield()  # a front end on this CPU gets to run
        return False

    def _serve_direct(self, op: int, req_id: int, sector: int, nr_segments: int, fields: tuple) -> int:
        """A READ or WRITE with direct segments, ``fields`` its slot as ``REQUEST`` unpacks it.

        The common request (whole pages but the last, within the disk, its grants
        already mapped as it needs them, no sector failing) is served here in one
        step: its checks are comparisons of the slot's columns with constants and
        one set look-up. Anything else, a request to refuse included, goes the
        general way (:meth:`_serve_rw`), which checks it again and says why.
        """
        end = 5 + 3 * nr_segments
        grefs, lasts = fields[5:end:3], fields[7:end:3]
        last = lasts[-1]
        writing = op == BLKIF_OP_WRITE
        grants, vbd = self.grants, self.vbd
        total = (nr_segments - 1) * SECTORS_PER_PAGE + last + 1
        if (
            self.failing is None
            and self.persistent
            and last < SECTORS_PER_PAGE
            and fields[6:end:3] == _WHOLE_FIRSTS[nr_segments]
            and lasts[:-1] == _WHOLE_LASTS[nr_segments - 1]
            and sector + total <= vbd.sectors
            and not (writing and vbd.readonly)
            # A READ writes into the guest's pages: their grants must be mapped writable.
            and (all(map(grants.slot_of.__contains__, grefs)) if writing else grants.writable.issuperset(grefs))
        ):
            vectors = self._whole_page_vectors(grefs, 0, (last + 1) * SECTOR_SIZE)
            if vectors is not None:
                self.stats["write_requests" if writing else "read_requests"] += 1
                return self._answer(req_id, self._move, writing, sector, total, vectors)
        segments = SegmentArray(list(grefs), bytes(fields[6:end:3]), bytes(lasts))
        return self._serve_rw(op, req_id, sector, segments)

    def _whole_page_vectors(self, grefs: Sequence[int], head: int, tail: int) -> list[memoryview] | None:
        """One I/O vector for pages in adjacent arena slots (a run from the front end's pool), from ``head``
        bytes into the first to ``tail`` bytes into the last; None if the slots are not adjacent."""
        slot_of = self.grants.slot_of
        first = slot_of[grefs[0]]
        count = len(grefs)
        if count > 1 and [slot_of[gref] for gref in grefs] != list(range(first, first + count)):
            return None
        start = first * PAGE_SIZE
        return [self.grants.view[start + head : start + (count - 1) * PAGE_SIZE + tail]]

    def _serve_rw(self, op: int, req_id: int, sector: int, segments: SegmentArray) -> int:
        """A READ or WRITE with direct segments: :meth:`_serve` without decoding a :class:`BlkRequest`."""
        return self._answer(req_id, self._read_write, op, sector, segments)

    def _serve(self, request: BlkRequest) -> int:
        return self._answer(request.id, self._dispatch, request)

    def _answer(self, req_id: int, serve: Callable[..., object], *args: Any) -> int:
        """Run ``serve(*args)`` for request ``req_id``; the status its response carries.

        A RequestError is a refusal (its status, logged as such), an OSError a
        failure of the image (``BLKIF_RSP_ERROR``); either is counted in ``errors``.
        """
        self.stats["requests"] += 1
        try:
            try:
                serve(*args)
            finally:
                if not self.persistent:
                    self.grants.unmap_all()
            return BLKIF_RSP_OKAY
        except RequestError as exc:
            self.stats["errors"] += 1
            log.warning("%s: request %d refused: %s", self.label, req_id, exc)
            return exc.status
        except OSError as exc:
            self.stats["errors"] += 1
            log.warning("%s: request %d failed: %s", self.label, req_id, exc)
            return BLKIF_RSP_ERROR

    def _dispatch(self, request: BlkRequest) -> None:
        """Serve any request by its operation (RequestError for one refused)."""
        if request.operation in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            self._read_write(request.operation, request.sector_number, self._check_direct(request))
        elif request.operation == BLKIF_OP_INDIRECT:
            self._serve_indirect(request)
        elif request.operation == BLKIF_OP_FLUSH_DISKCACHE:
            self.stats["flush_requests"] += 1
            os.fdatasync(self.vbd.fd)
        elif request.operation == BLKIF_OP_DISCARD:
            self.stats["discard_requests"] += 1
            self._discard(request)
        else:
            raise RequestError(f"unknown operation {request.operation}", BLKIF_RSP_EOPNOTSUPP)

    # -- checks ---------------------------------------------------------------------

    def _check_direct(self, request: BlkRequest) -> SegmentArray:
        if not 1 <= request.nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise RequestError(f"nr_segments {request.nr_segments} outside 1..{BLKIF_MAX_SEGMENTS_PER_REQUEST}")
        return request.segments

    def _serve_indirect(self, request: BlkRequest) -> None:
        """An INDIRECT READ or WRITE; a segment list seen before is not decoded and checked again.

        A front end's pool hands out the same runs again and again, so the same
        indirect page contents come back. The list is copied out of the front end's
        pages once a request, as always; if those exact bytes were checked for the same
        operation (each segment within its page, every grant mapped as the operation
        needs) and no grant has been mapped or unmapped since, their sector count and
        I/O vectors are used again. What depends on the request's sector (the disk's
        end, failing sectors) and the read-only check are made every time.
        """
        op, sector, raw = self._indirect(request)
        grants = self.grants
        if grants.generation != self._runs_generation or len(self._checked_runs) >= MAX_CHECKED_RUNS:
            self._checked_runs.clear()
            self._runs_generation = grants.generation
        known = self._checked_runs.get((op, raw))
        if known is None:
            segments = unpack_segment_array(raw, request.nr_segments)
            total, vectors = self._read_write(op, sector, segments)
            if grants.generation == self._runs_generation:  # still true after this request's mappings
                self._checked_runs[(op, raw)] = (total, vectors)
            return
        total, vectors = known
        writing = op == BLKIF_OP_WRITE
        self._count_and_check_writable(writing)
        self._check_range(sector, total)
        self._move(writing, sector, total, vectors)

    def _indirect(self, request: BlkRequest) -> tuple[int, int, bytes]:
        if request.indirect_op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            raise RequestError(f"indirect operation {request.indirect_op} is not READ or WRITE")
        if not 1 <= request.nr_segments <= MAX_INDIRECT_SEGMENTS:
            raise RequestError(f"nr_segments {request.nr_segments} outside 1..{MAX_INDIRECT_SEGMENTS}")
        pages = -(-request.nr_segments // SEGS_PER_INDIRECT_FRAME)
        if pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST:
            raise RequestError(f"{pages} indirect pages exceed {BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}")
        grefs = list(request.indirect_grefs[:pages])
        self._ensure_mapped(grefs, writable=False)
        view = self.grants.view
        parts = []
        for page, gref in enumerate(grefs):
            wanted = min(SEGS_PER_INDIRECT_FRAME, request.nr_segments - page * SEGS_PER_INDIRECT_FRAME)
            start = self.grants.slot_of[gref] * PAGE_SIZE
            parts.append(view[start : start + wanted * SEGMENT_SIZE])
        # Copied once out of the front end's pages, then checked (no double fetch).
        return request.indirect_op, request.sector_number, b"".join(parts)

    @staticmethod
    def _sectors_of(segments: SegmentArray) -> int:
        """Sectors the segments cover; RequestError unless each lies within its page (blkif.h)."""
        count = len(segments)
        firsts, lasts = segments.first_sects, segments.last_sects
        if firsts == _FIRST_OF_WHOLE_PAGES[:count] and lasts == _LAST_OF_WHOLE_PAGES[:count]:
            return count * SECTORS_PER_PAGE
        for first, last in zip(firsts, lasts):
            if not first <= last < SECTORS_PER_PAGE:
                raise RequestError(f"segment sectors {first}..{last} are not within 0..{SECTORS_PER_PAGE - 1}")
        return sum(lasts) - sum(firsts) + count

    def _read_write(self, op: int, sector: int, segments: SegmentArray) -> tuple[int, list[memoryview]]:
        """Check, map and move a READ or WRITE; returns its sector count and the I/O vectors it used."""
        writing = op == BLKIF_OP_WRITE
        self._count_and_check_writable(writing)
        total = self._sectors_of(segments)
        self._check_range(sector, total)
        # A READ writes into the guest's pages: their grants must allow writing.
        self._ensure_mapped(segments.grefs, writable=not writing)
        vectors = self._io_vectors(segments)
        self._move(writing, sector, total, vectors)
        return total, vectors

    def _count_and_check_writable(self, writing: bool) -> None:
        self.stats["write_requests" if writing else "read_requests"] += 1  # counted before the checks, as Linux does
        if writing and self.vbd.readonly:
            raise RequestError("write to a read-only device")

    def _check_range(self, sector: int, total: int) -> None:
        """RequestError unless ``total`` sectors from ``sector`` lie on the disk and none is failing."""
        if sector + total > self.vbd.sectors:
            raise RequestError(f"sectors {sector}..{sector + total - 1} are past the end ({self.vbd.sectors} sectors)")
        if self.failing is not None:
            self._check_failing(self.failing, sector, total)

    def _move(self, writing: bool, sector: int, total: int, vectors: list[memoryview]) -> None:
        """``pwritev``/``preadv`` of ``total`` checked sectors at ``sector``; RequestError if short."""
        offset = sector * SECTOR_SIZE
        if writing:
            done = os.pwritev(self.vbd.fd, vectors, offset)
            self.stats["write_sectors"] += total
        else:
            done = os.preadv(self.vbd.fd, vectors, offset)
            self.stats["read_sectors"] += total
        if done != total * SECTOR_SIZE:
            raise RequestError(f"short {'write' if writing else 'read'}: {done} of {total * SECTOR_SIZE} bytes")

    def _io_vectors(self, segments: SegmentArray) -> list[memoryview]:
        """The segments' sectors in the arena, segments adjacent there merged into one vector."""
        firsts, lasts = segments.first_sects, segments.last_sects
        count = len(segments)
        if lasts[:-1] == _LAST_OF_WHOLE_PAGES[: count - 1] and firsts[1:] == _FIRST_OF_WHOLE_PAGES[: count - 1]:
            whole = self._whole_page_vectors(segments.grefs, firsts[0] * SECTOR_SIZE, (lasts[-1] + 1) * SECTOR_SIZE)
            if whole is not None:
                return whole
        view = self.grants.view
        slots = list(map(self.grants.slot_of.__getitem__, segments.grefs))
        vectors: list[memoryview] = []
        run_start = run_end = -1
        for slot, first, last in zip(slots, firsts, lasts):
            start = slot * PAGE_SIZE + first * SECTOR_SIZE
            if start != run_end:
                if run_end >= 0:
                    vectors.append(view[run_start:run_end])
                run_start = start
            run_end = slot * PAGE_SIZE + (last + 1) * SECTOR_SIZE
        vectors.append(view[run_start:run_end])
        return vectors

    def _discard(self, request: BlkRequest) -> None:
        if self.vbd.readonly:
            raise RequestError("discard on a read-only device")
        if request.nr_sectors == 0 or request.sector_number + request.nr_sectors > self.vbd.sectors:
            raise RequestError(f"discard of sectors {request.sector_number}+{request.nr_sectors} is past the end")
        if self.failing is not None:
            self._check_failing(self.failing, request.sector_number, request.nr_sectors)
        punch_hole(self.vbd.fd, request.sector_number * SECTOR_SIZE, request.nr_sectors * SECTOR_SIZE)

    # -- grants ---------------------------------------------------------------------

    def _ensure_mapped(self, grefs: list[int], writable: bool) -> None:
        """Map the request's grants (writable ones for a READ into them); a refused gref fails the request."""
        try:
            self.grants.ensure_mapped(grefs, writable)
        except GrantRefused as exc:
            raise RequestError(str(exc)) from None
        finally:
            self.stats["maps"] = self.grants.maps

    def final_check(self) -> bool:
        """True if requests are waiting; False once ``req_event`` is re-armed and none came
        (``RING_FINAL_CHECK_FOR_REQUESTS``).

        While work keeps coming (a batch was served less than :data:`POLL_S` ago)
        the ring is polled for that long before ``req_event`` is re-armed: as Linux
        blkback's ``xen_blkif_schedule`` keeps going while requests arrive, and as
        virtio's event suppression, a front end that finds ``req_event`` behind
        publishes without notifying, and the worker does not sleep between
        batches that come close together.
        """
        try:
            if self._poll_for_requests():
                return True
            return self.ring.final_check_for_requests()
        except RingError as exc:
            raise RingError(f"front end provided bogus ring requests: {exc}") from None

    def close(self) -> None:
        """Unmap every grant (ring included): after this the front end may revoke them."""
        self._checked_runs.clear()  # their vectors are views of the arena
        self.grants.close()
        self.ring.release()
        self._ring_mapping.close()
        self.hypercall.call("grant_unmap", handles=self._ring_handles)


def blkif_data_path(ctx: WorkerContext) -> BlkifRing:
    """Build a device's data path in its worker (what ``xen_blkif_map`` and ``xen_vbd_create`` do)."""
    params = ctx.params
    vbd = Vbd(ctx.fds["image"], params["path"], params["sectors"], params["readonly"])
    ring = BlkifRing(
        ctx.label, ctx.frontend_id, vbd, ctx.hypercall, ctx.memory_fd, params["ring_refs"], params["persistent"]
    )
    ring.inject({"sector_eio": params.get("sector_eio", [])})  # what an earlier worker was told
    log.info("%s: connected (%d sectors%s)", ctx.label, vbd.sectors, ", read-only" if vbd.readonly else "")
    return ring
