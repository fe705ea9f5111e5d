"""blkfront's data path (Linux ``drivers/block/xen-blkfront.c``, its request side).

:class:`BlockDevice` is a disk as the workload sees it (``ctx.disks["xvda"]``):
``read``/``write``/``flush``/``discard``, an asynchronous ``submit_*`` interface
returning futures (up to a ring's worth of requests in flight), ``batch()`` to
queue many requests and place them on the ring with one push and at most one
notification (:class:`BlkBatch`; ``submit_*`` go through the same path, as
batches of one), and
``open()`` for a standard ``io.RawIOBase`` file. I/O goes through a pool of pages
granted to the back end once and reused (persistent grants, :mod:`.pool`);
requests of more than 11 pages use indirect descriptors. The pool hands out runs
of contiguous pages, so a request's data is one slice copy and the back end moves
it with one I/O vector. ``buffer()`` lends such a run to the workload
(:class:`BlkBuffer`, io_uring's registered buffers): it fills or reads the pages
in place and ``submit_read_buffer``/``submit_write_buffer`` do I/O on them with
no copy in the guest.

The XenBus handshake (:mod:`.xenbus`) sets a device up with :meth:`BlockDevice.setup_ring`
and :meth:`BlockDevice.setup_pool` and takes it down with
:meth:`BlockDevice.stop_io` and :meth:`BlockDevice.teardown_ring`; everything
else here runs in the workload's threads and on the kernel's event loop.

When the back end restarts (its worker died and dom0 brought it back) the device
recovers as Linux's ``blkif_recover``: :meth:`BlockDevice.hold_for_reconnect`
holds new requests and drops the old ring, keeping each request in flight (its
slot as it was placed, its pool pages and their data: Linux's shadow); the
handshake sets up a new ring, and :meth:`BlockDevice.recover` places those
requests on it again in their original order before new ones go. A request the
old back end answered before it died is complete and is not issued again; one it
served but did not answer is served twice, the same data to the same sectors in
the same order, so what was acknowledged stays and the last write to a sector
wins as before.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from xenlike.public.blkif import (
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_PROTOCOL,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
    pack_discard,
    pack_flush,
    pack_indirect,
    pack_rw_packed,
)
from xenlike.public.ring import FrontRing
from xenlike.public.xen import PAGE_SIZE

from ..xenbus_frontend import SharedRing
from .pool import MAX_POOL_PAGES, MAX_SEGMENTS, MIN_POOL_PAGES, _GrantPool, _Run, pages_per_request

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from ..xenbus_frontend import FrontDevice, XenbusFrontend

__all__ = ["BlockDevice", "BlockIOError", "BlkBatch", "BlkBuffer", "BlkFuture", "DiskFile"]

log = logging.getLogger("domu.blkfront")

MAX_RING_PAGE_ORDER = 4
# How long a waiting thread polls the ring for its responses before it sleeps: about a
# back end's turnaround, so a quick answer costs neither a sleep nor the event loop's wake-up.
POLL_S = 1e-3
POLL_MAX_BYTES = 64 << 10  # polled for only up to this size (Linux's hybrid polling sleeps for a large one)


class BlockIOError(IOError):
    """A request refused or failed: a write to a read-only disk, I/O on a detached
    disk, a misused buffer, or an error the back end answered (``BLKIF_RSP_ERROR``,
    e.g. a sector beyond the end: ``errno`` EIO; ``not supported``: EOPNOTSUPP).
    The message names the disk, the operation and its first sector."""


class _DeviceCondition(threading.Condition):
    """The device's lock and condition, whose ``notify_all`` costs nothing while no thread waits.

    Threads wait on it only for room (ring slots, pool pages), a suspend or a
    reconnect; the I/O path notifies on every completion, and threading's own
    ``notify_all`` checks ownership by trying the lock each time.
    ``waiting`` changes only with the lock held, so ``notify_all`` (also called
    with it held) sees every waiter.
    """

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.waiting = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting += 1
        try:
            return super().wait(timeout)
        finally:
            self.waiting -= 1

    def notify_all(self) -> None:
        if self.waiting:
            super().notify_all()


class _Latch:
    """One lock, held until ``remaining`` outcomes have arrived: the one wake-up a batch costs.

    A lone request has a latch of its own; the requests of a batch placed together
    share one, so completing the batch releases one lock and wakes its waiter once,
    with no lock or event per request. ``arrive`` is called with the device's lock
    held (or, for requests never placed, by the only thread that knows them).
    """

    __slots__ = ("lock", "remaining")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.remaining = 0

    def arrive(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.lock.release()


class _Poller(Protocol):
    """What a waiting thread polls: the device whose ring holds its response (see :meth:`BlockDevice._poll_begin`)."""

    def _poll_begin(self) -> None: ...

    def _poll_responses(self) -> None: ...

    def _poll_end(self) -> None: ...


class BlkFuture:
    """The outcome of one submitted request.

    Its completion is counted on a :class:`_Latch`: its own, or its batch's. A
    READ's data is produced by ``collect`` in the first thread that asks for it
    (see :meth:`BlockDevice._collect`), not on the event loop. A waiter for a
    request of at most :data:`POLL_MAX_BYTES` first polls the ring itself for up
    to :data:`POLL_S` (``poll``: its device, which completes what the back end has
    answered), so a request answered quickly costs no wake-up of the event loop and
    no sleep; only then does it sleep on the latch. Waiting on one request of a
    batch waits for the batch.
    """

    __slots__ = ("_latch", "_done", "_result", "_error", "_collect", "_poll")

    def __init__(self, poll: _Poller | None = None, latch: _Latch | None = None) -> None:
        self._latch = latch if latch is not None else _Latch()
        self._latch.remaining += 1
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._collect: Callable[[], Any] | None = None
        self._poll = poll

    def set(
        self, result: Any = None, error: BaseException | None = None, collect: Callable[[], Any] | None = None
    ) -> None:
        """Complete the request (once; later calls are ignored); its latch wakes the waiters when it is the last.

        ``collect``, if given, returns the result when it is first asked for.
        """
        if self._done:
            return
        self._result, self._error, self._collect = result, error, collect
        self._done = True
        self._latch.arrive()

    def done(self) -> bool:
        """Whether the request has completed, successfully or not (never waits)."""
        return self._done

    def result(self, timeout: float | None = 60.0) -> Any:
        """Wait for the request: a READ's bytes, None for the others.

        Raises the request's BlockIOError if it failed, TimeoutError if it has not
        completed in ``timeout`` seconds (None: wait for ever). Asking again gives
        the same outcome.
        """
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        collect = self._collect  # read once: another waiter may collect (and clear it) meanwhile
        if collect is not None:
            self._result = collect()  # BlockDevice._collect gives the same bytes to each caller
            self._collect = None
        return self._result

    def _wait(self, timeout: float | None) -> None:
        """Return once the request completed (TimeoutError after ``timeout`` seconds)."""
        if self._done:
            return
        poller = self._poll
        if poller is not None:
            poller._poll_begin()
            try:
                deadline = time.monotonic() + POLL_S
                while True:
                    poller._poll_responses()
                    if self._done or time.monotonic() >= deadline:
                        break
                    os.sched_yield()  # lets the event loop's thread have the GIL, and the back end this CPU
            finally:
                poller._poll_end()  # re-arms rsp_event, so the back end's next response notifies
        latch = self._latch
        if latch.lock.locked():
            if not latch.lock.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError("the block request did not complete in time")
            latch.lock.release()  # let other waiters through


class _Request:
    """One ring request, from when it is built until it is answered: what it is, and how to fill its slot.

    ``slot(req_id, run)`` returns the slot to place, having copied a WRITE's data
    into the run's pages (unless they are a buffer's, which hold it already).
    ``run`` is the pages a :class:`BlkBuffer` lends the request; without it the
    request takes pool pages when it is placed and gives them back when it completes.

    Once placed, the request is its own record in flight (Linux's ``shadow[]``):
    ``placed`` is its slot as it went on the ring (placed again by ``recover``),
    ``pooled`` the pool pages it holds until they are given back, ``data`` a
    READ's bytes once copied out of them.
    """

    __slots__ = ("op", "sector", "nbytes", "nr_pages", "future", "run", "placed", "pooled", "data")

    def __init__(self, op: int, sector: int, nbytes: int, nr_pages: int, future: BlkFuture, run: _Run | None) -> None:
        self.op = op
        self.sector = sector
        self.nbytes = nbytes
        self.nr_pages = nr_pages  # pool pages it needs (0 for FLUSH and DISCARD)
        self.future = future
        self.run = run
        self.placed = b""
        self.pooled: _Run | None = None
        self.data: bytes | None = None

    def slot(self, req_id: int, run: _Run | None) -> bytes:
        raise NotImplementedError


class _RwRequest(_Request):
    """A READ or WRITE of ``nbytes`` at ``sector`` on pages of guest ``memory``: direct segments, or indirect."""

    __slots__ = ("memory", "source", "nr_data", "last_sect")

    def __init__(
        self,
        op: int,
        sector: int,
        nbytes: int,
        future: BlkFuture,
        run: _Run | None,
        memory: memoryview,
        source: memoryview | None,
    ) -> None:
        nr_data = -(-nbytes // PAGE_SIZE)
        super().__init__(op, sector, nbytes, pages_per_request(nr_data), future, run)
        self.memory = memory  # the guest's frames by offset: pfns come from its own allocator
        self.source = source  # a WRITE's bytes to copy in (None: a READ, or a buffer's pages holding them)
        self.nr_data = nr_data
        self.last_sect = (nbytes - (nr_data - 1) * PAGE_SIZE) // SECTOR_SIZE - 1

    def slot(self, req_id: int, run: _Run | None) -> bytes:
        assert run is not None  # a READ or WRITE is always placed on pages
        base, nr_data = run.pfn * PAGE_SIZE, self.nr_data
        if self.source is not None:
            self.memory[base : base + self.nbytes] = self.source
        segments = run.segments(nr_data, self.last_sect)
        if nr_data <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
            return pack_rw_packed(self.op, req_id, self.sector, nr_data, segments)
        # The segment list goes into the indirect pages that follow the data pages.
        indirect = base + nr_data * PAGE_SIZE
        self.memory[indirect : indirect + len(segments)] = segments
        return pack_indirect(self.op, req_id, self.sector, nr_data, run.grefs(nr_data, run.count - nr_data))


class _ControlRequest(_Request):
    """A FLUSH or DISCARD: no pages; ``pack(req_id)`` is its slot."""

    __slots__ = ("pack",)

    def __init__(self, op: int, sector: int, future: BlkFuture, pack: Callable[[int], bytes]) -> None:
        super().__init__(op, sector, 0, 0, future, None)
        self.pack = pack

    def slot(self, req_id: int, run: _Run | None) -> bytes:
        return self.pack(req_id)


def _gathered(op: int, parts: list[BlkFuture]) -> BlkFuture:
    """One future for the parts of a split request: a READ's data joined in order, or the first error."""
    combined = BlkFuture()

    def gather() -> None:
        try:
            results = [part.result(timeout=None) for part in parts]  # the caller's result() has the timeout
            combined.set(b"".join(results) if op == BLKIF_OP_READ else None)
        except BaseException as exc:
            combined.set(error=exc)

    threading.Thread(target=gather, daemon=True).start()
    return combined


class BlkBuffer:
    """Pool pages lent to the workload, for I/O with no copy in the guest (io_uring's registered buffers).

    ``disk.buffer(nbytes)`` lends ``nbytes`` (a multiple of 512, at most one request)
    of pages, contiguous in guest memory and granted to the back end; :attr:`view`
    is a writable memoryview on them. ``disk.submit_write_buffer(sector, buf)`` has
    the back end write the pages to the disk as they are, and
    ``disk.submit_read_buffer(sector, buf)`` has it read into them (both also in a
    batch, as ``write_buffer``/``read_buffer``); their futures give None::

        with disk.buffer(1 << 20) as buf:
            buf.view[:] = data
            disk.submit_write_buffer(0, buf).result()

    The contract:

    - At most one request is in flight on a buffer, from when it is submitted (or
      queued in a batch) until its future completes: another raises BlockIOError.
      Meanwhile the back end reads the pages (WRITE: do not change them) or writes
      them (READ: their contents are undefined until the future completes).
    - The pages stay the buffer's until :meth:`release` (or the end of its ``with``
      block); the pool does not reuse them, so buffers held leave less room to
      other requests, which wait for it. Releasing a buffer with a request in
      flight raises BlockIOError; releasing twice is harmless.
    - Release, and the device's detach, release the view: using it then raises
      ValueError (a released memoryview), and :attr:`view` and submitting raise
      BlockIOError. Slices and ``memoryview()``s taken from the view share its pages
      but are not tracked: do not keep them past release. While something still
      exports the view (a numpy array on it, say) release raises BlockIOError and
      the pages stay lent.

    A buffer belongs to one thread at a time.
    """

    def __init__(self, device: BlockDevice, run: _Run, nbytes: int) -> None:
        self.device = device
        self.nbytes = nbytes
        self._run: _Run | None = run
        base = run.pfn * PAGE_SIZE
        self._view: memoryview | None = device.kernel.memory.view[base : base + nbytes]  # its own, to release
        self._future: BlkFuture | None = None

    @property
    def view(self) -> memoryview:
        """The pages, writable; BlockIOError once the buffer is released or its device detached."""
        if self._view is None:
            raise BlockIOError(f"{self.device.vdev}: the buffer was {self._gone_reason()}")
        return self._view

    @property
    def busy(self) -> bool:
        """Whether a request on the buffer is queued or in flight."""
        return self._future is not None and not self._future.done()

    def release(self) -> None:
        """Give the pages back to the pool (see the class); harmless once released."""
        if self._run is None:
            return
        if self.busy:
            raise BlockIOError(f"{self.device.vdev}: a buffer with a request in flight cannot be released")
        self._drop_view()
        run, self._run = self._run, None
        self.device._take_back(self, run)

    def _idle_run(self, device: BlockDevice) -> _Run:
        """The pages, for a request on ``device``; BlockIOError unless the buffer is usable and idle."""
        if device is not self.device:
            raise BlockIOError(f"{device.vdev}: the buffer belongs to {self.device.vdev}")
        if self._run is None or self._view is None:
            raise BlockIOError(f"{device.vdev}: the buffer was {self._gone_reason()}")
        if self.busy:
            raise BlockIOError(f"{device.vdev}: the buffer already has a request in flight")
        return self._run

    def _track(self, future: BlkFuture) -> None:
        """``future`` is the buffer's request in flight until it completes."""
        self._future = future

    def _drop_view(self) -> None:
        """Release the view handed out; BlockIOError (view kept) while something exports it."""
        view = self._view  # once: release and the device's detach may race
        if view is None:
            return
        try:
            view.release()
        except BufferError as exc:
            raise BlockIOError(f"{self.device.vdev}: the buffer's view is still exported: {exc}") from None
        self._view = None

    def _revoke(self) -> None:
        """The device is detached: drop the view, even one something still exports (logged)."""
        try:
            self._drop_view()
        except BlockIOError as exc:
            log.warning("d%d %s", self.device.kernel.domid, exc)
            self._view = None

    def _gone_reason(self) -> str:
        return "released" if self._run is None else "detached with its device"

    def __enter__(self) -> BlkBuffer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._run is None else "busy" if self.busy else "idle"
        return f"<BlkBuffer {self.device.vdev} {self.nbytes} bytes {state}>"


class BlockDevice:
    """A connected virtual disk (``ctx.disks[vdev]``).

    ``vdev`` is its name (``xvda``), ``sectors`` its length in 512-byte sectors
    (``size`` in bytes), ``readonly`` whether it was attached ``access=ro``.
    I/O counts in whole sectors: ``sector`` is where it starts and ``nbytes`` or
    ``len(data)`` is a positive multiple of 512 (ValueError otherwise; use
    :meth:`open` for byte offsets). A write to a read-only disk raises
    BlockIOError before anything is sent; a request beyond the end fails in the
    back end, BlockIOError from its result. Once the disk is detached
    (``block-detach``) every call raises BlockIOError. Any thread may submit.

    ``bus``, ``xdev``, ``kernel``, ``devid``, ``backend_id``, ``port``, ``ring``,
    ``max_segments``, ``persistent``, ``closing`` and the ``setup_*``/``stop_io``/
    ``teardown_ring`` calls are the XenBus handshake's (:mod:`.xenbus`).
    """

    model = "split"  # the device model (xenlike.public.vdisk): blkfront and blkback over a ring

    def __init__(self, bus: XenbusFrontend, xdev: FrontDevice, vdev: str) -> None:
        self.bus = bus
        self.xdev = xdev
        self.kernel = bus.kernel
        self.devid = xdev.devid
        self.vdev = vdev
        self.sectors = 0
        self.readonly = False
        self.max_segments = BLKIF_MAX_SEGMENTS_PER_REQUEST
        self.persistent = False
        self.port: int | None = None
        self.ring: FrontRing | None = None
        self._shared: SharedRing | None = None
        self._cond = _DeviceCondition()
        self._pool: _GrantPool | None = None
        self._inflight: dict[int, _Request] = {}
        self._uncollected: dict[int, _Request] = {}  # completed READs whose data is still in the pool
        self._buffers: set[BlkBuffer] = set()  # lent and not released
        self._ids = itertools.count(1)
        self._pollers = 0  # threads polling the ring for their responses (_cond held to change)
        self.closing = False
        self.suspended = False  # quiesced for a suspend: requests wait until resumed
        self.recovering = False  # the back end restarted: requests wait until recover() re-issued those in flight

    # -- geometry ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The disk's length in bytes (``sectors * 512``)."""
        return self.sectors * SECTOR_SIZE

    def __repr__(self) -> str:
        return f"<BlockDevice {self.vdev} {self.size >> 20} MiB{' ro' if self.readonly else ''}>"

    # -- set up and taken down by the handshake (its thread: see .xenbus) ----------------

    @property
    def backend_id(self) -> int:
        """The domain serving the disk (dom0)."""
        return self.xdev.otherend_id

    def setup_ring(self, order: int) -> tuple[list[int], int]:
        """Set up a ring of ``2**order`` pages granted to the back end and an event channel to it.

        The channel is bound to the event loop, which completes requests from then on.
        Returns the ring pages' grant references, in order, and the port: what the
        front end publishes (``ring-ref``/``ring-refN``, ``event-channel``).
        """
        self._shared = self.bus.setup_ring(self.xdev, 1 << order)
        self.ring = FrontRing(self._shared.view, BLKIF_PROTOCOL)
        self.port = self.bus.alloc_evtchn(self.xdev, self._on_event)
        return self._shared.grefs, self.port

    def setup_pool(self, max_indirect_segments: int) -> None:
        """Size the pool of persistent grants for the back end's ``feature-max-indirect-segments``.

        A request takes at most that many pages (at least 11, at most ``MAX_SEGMENTS``,
        fewer if the pool is small); the pool holds at most a quarter of the guest's
        free memory. Its pages are granted as requests first need them.
        """
        wanted = max(BLKIF_MAX_SEGMENTS_PER_REQUEST, min(max_indirect_segments, MAX_SEGMENTS))
        if self._pool is not None:  # a reconnect: the pool, and the requests in flight on it, stay
            if wanted < self.max_segments:
                raise BlockIOError(
                    f"{self.vdev}: the back end came back with {max_indirect_segments} indirect segments, "
                    f"fewer than the {self.max_segments} in use"
                )
            return
        self.max_segments = wanted
        self._pool = self._make_pool(max(MIN_POOL_PAGES, min(MAX_POOL_PAGES, self.kernel.pages.free_frames // 4)))

    def _make_pool(self, limit: int) -> _GrantPool:
        """A pool of at most ``limit`` pages, in chunks that each hold the largest request."""
        if pages_per_request(self.max_segments) > limit:
            self.max_segments = limit - 1  # and its one indirect page
        chunk_pages = pages_per_request(self.max_segments)
        return _GrantPool(self, chunk_pages, limit // chunk_pages)

    def stop_io(self) -> None:
        """The back end is going away: refuse new requests, fail those in flight, revoke lent buffers.

        Completed READs are copied out first, so their futures still give the data.
        """
        with self._cond:
            self.closing = True
            self._collect_all()
            for inflight in self._inflight.values():
                inflight.future.set(error=BlockIOError(f"{self.vdev} was detached"))
            self._inflight.clear()
            self._revoke_buffers()
            self._cond.notify_all()

    def quiesce(self, timeout: float) -> None:
        """For a suspend: hold new requests and wait until every request in flight is answered.

        TimeoutError (and requests flow again) if the back end has not answered
        them all within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self.suspended = True
            while self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.suspended = False
                    self._cond.notify_all()
                    raise TimeoutError(f"{len(self._inflight)} request(s) still in flight after {timeout:g}s")
                self._cond.wait(min(remaining, 0.05))
                self._collect_answered()

    def unquiesce(self) -> None:
        """After a suspend: requests held by :meth:`quiesce` go on."""
        with self._cond:
            self.suspended = False
            self._cond.notify_all()

    def hold_for_reconnect(self) -> None:
        """The back end restarted: hold new requests and let go of the old ring, keeping what is in flight.

        What the old back end answered is completed first; the rest stays in
        flight, to be placed again by :meth:`recover` once the handshake has set
        up a new ring (Linux's ``blkfront_resume``: ``blkif_free`` keeping the shadow).
        """
        with self._cond:
            self.recovering = True
            self._collect_answered()
            ring, port, shared = self.ring, self.port, self._shared
            self.ring = self.port = self._shared = None
            held = len(self._inflight)
        log.warning("d%d %s: the back end restarted; %d request(s) in flight held", self.kernel.domid, self.vdev, held)
        # The dead back end's mappings went with its hypercall channel, so the grants can end.
        # The old ring's views are left to the collector: a poller may still hold the old ring.
        if port is not None:
            self.bus.free_evtchn(self.xdev, port)
        if shared is not None:
            self.bus.teardown_ring(self.xdev, shared)
        del ring

    def recover(self) -> None:
        """``blkif_recover``: place every request still in flight on the new ring, in the order first placed,
        then let new requests go. (Requests in flight never outnumber a ring of the order the back end allows.)"""
        with self._cond:
            shadows = [inflight.placed for inflight in self._inflight.values()]  # dict order: the order placed
            placed = 0
            while placed < len(shadows):
                ring = self.ring
                assert ring is not None  # the handshake set up the new ring
                room = ring.free_requests()
                if room:
                    ring.put_requests(b"".join(shadows[placed : placed + room]))
                    placed += min(room, len(shadows) - placed)
                    self._push()
                elif not self._reap():
                    self._cond.wait(0.05)
            self.recovering = False
            self._cond.notify_all()
        log.info("d%d %s: reconnected; %d request(s) issued again", self.kernel.domid, self.vdev, len(shadows))

    def _collect_answered(self) -> None:
        """Take what the back end answered (``_cond`` held), in case its notification is held up."""
        ring = self.ring
        if ring is not None:
            self._take_responses(ring)

    def teardown_ring(self) -> None:
        """Tear the ring and its event channel down and give the grants back: the ring's and the pool's.

        Call once the back end is Closed (it has unmapped them); a page it still
        maps stays out of use. A thread still polling the ring (its request failed
        by :meth:`stop_io`, and it is on its way out) finds no ring; the ring's
        views are released here only when no poller can still hold them, and
        otherwise left to the collector, as :meth:`hold_for_reconnect` does.
        """
        with self._cond:
            ring, self.ring = self.ring, None
            unpolled = self._pollers == 0
        if self.port is not None:
            self.bus.free_evtchn(self.xdev, self.port)
        if ring is not None and unpolled:
            ring.release()
        if self._shared is not None:  # a connect that failed before granting the ring has none
            self.bus.teardown_ring(self.xdev, self._shared)
        if self._pool is not None:
            self._pool.close()

    def _revoke_buffers(self) -> None:
        """Release every lent buffer's view (``_cond`` held); their pages go with the pool."""
        for buffer in self._buffers:
            buffer._revoke()

    # -- submission ----------------------------------------------------------------------

    def batch(self) -> BlkBatch:
        """A batch of requests placed on the ring together (blk-mq plugging).

        Queue requests with its ``read``/``write``/``flush``/``discard``; leaving the
        ``with`` block (or :meth:`BlkBatch.submit`) places them with one lock and
        one push, and notifies the back end at most once per push.
        """
        return BlkBatch(self)

    def submit_read(self, sector: int, nbytes: int) -> BlkFuture:
        """Read ``nbytes`` (a multiple of 512) from ``sector``; the future gives bytes."""
        return self._submit_now(*self._read_requests(sector, nbytes))

    def submit_write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Write ``data`` (a multiple of 512 bytes) at ``sector``; acknowledged once it reached the image."""
        return self._submit_now(*self._write_requests(sector, data))

    def submit_flush(self) -> BlkFuture:
        """Everything acknowledged before is durable once this completes."""
        return self._submit_now(*self._flush_requests())

    def submit_discard(self, sector: int, nr_sectors: int) -> BlkFuture:
        """Tell the back end ``nr_sectors`` from ``sector`` are unused (they read back as zeros)."""
        return self._submit_now(*self._discard_requests(sector, nr_sectors))

    def buffer(self, nbytes: int, timeout: float | None = 60.0) -> BlkBuffer:
        """Borrow ``nbytes`` (a multiple of 512, at most one request) of pool pages (:class:`BlkBuffer`).

        Waits, as a request does, until the pool has that many contiguous pages free:
        TimeoutError after ``timeout`` seconds, BlockIOError if the device is detached.
        """
        nr_pages = self._buffer_pages(nbytes)
        with self._cond:  # one hold, so a detach revokes every buffer it lent
            buffer = BlkBuffer(self, self._wait_for_pages(nr_pages, timeout), nbytes)
            self._buffers.add(buffer)
        return buffer

    def submit_read_buffer(self, sector: int, buffer: BlkBuffer) -> BlkFuture:
        """Read ``buffer.nbytes`` from ``sector`` into the buffer's pages, with no copy; the future gives None."""
        return self._submit_now(*self._buffer_requests(BLKIF_OP_READ, sector, buffer))

    def submit_write_buffer(self, sector: int, buffer: BlkBuffer) -> BlkFuture:
        """Write the buffer's pages as they are at ``sector``, with no copy; acknowledged once in the image."""
        return self._submit_now(*self._buffer_requests(BLKIF_OP_WRITE, sector, buffer))

    def read(self, sector: int, nbytes: int) -> bytes:
        """Read ``nbytes`` (a multiple of 512) from ``sector`` and wait: :meth:`submit_read`'s result."""
        return self.submit_read(sector, nbytes).result()

    def write(self, sector: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (a multiple of 512 bytes) at ``sector`` and wait until it is in the image."""
        self.submit_write(sector, data).result()

    def flush(self) -> None:
        """Make everything written before durable, and wait (``BLKIF_OP_FLUSH_DISKCACHE``)."""
        self.submit_flush().result()

    def discard(self, sector: int, nr_sectors: int) -> None:
        """Discard ``nr_sectors`` from ``sector`` and wait; refused (BlockIOError) on a read-only disk."""
        self.submit_discard(sector, nr_sectors).result()

    def open(self) -> DiskFile:
        """A standard raw file over the disk (seekable; writable unless read-only)."""
        return DiskFile(self)

    # -- requests: built by the submitting thread, placed on the ring by _submit ---------

    # ``latch``: the batch's, which the requests' futures share (see _Latch); None for a lone request.

    def _read_requests(self, sector: int, nbytes: int, latch: _Latch | None = None) -> tuple[BlkFuture, list[_Request]]:
        return self._rw_requests(BLKIF_OP_READ, sector, nbytes, None, latch)

    def _write_requests(
        self, sector: int, data: bytes | bytearray | memoryview, latch: _Latch | None = None
    ) -> tuple[BlkFuture, list[_Request]]:
        self._check_writable()
        return self._rw_requests(BLKIF_OP_WRITE, sector, len(data), memoryview(data).cast("B"), latch)

    def _buffer_requests(
        self, op: int, sector: int, buffer: BlkBuffer, latch: _Latch | None = None
    ) -> tuple[BlkFuture, list[_Request]]:
        """A READ into or WRITE from ``buffer``'s pages: one request on them, nothing copied."""
        if op == BLKIF_OP_WRITE:
            self._check_writable()
        request = self._rw_request(op, sector, buffer.nbytes, None, buffer._idle_run(self), latch)
        buffer._track(request.future)
        return request.future, [request]

    def _check_writable(self) -> None:
        if self.readonly:
            raise BlockIOError(f"{self.vdev} is read-only")

    def _flush_requests(self, latch: _Latch | None = None) -> tuple[BlkFuture, list[_Request]]:
        request = _ControlRequest(BLKIF_OP_FLUSH_DISKCACHE, 0, self._future(0, latch), pack_flush)
        return request.future, [request]

    def _discard_requests(
        self, sector: int, nr_sectors: int, latch: _Latch | None = None
    ) -> tuple[BlkFuture, list[_Request]]:
        request = _ControlRequest(
            BLKIF_OP_DISCARD, sector, self._future(0, latch), lambda req_id: pack_discard(req_id, sector, nr_sectors)
        )
        return request.future, [request]

    def _future(self, nbytes: int, latch: _Latch | None) -> BlkFuture:
        # A large request keeps the back end copying for longer than polling pays for: its waiter sleeps.
        return BlkFuture(self if nbytes <= POLL_MAX_BYTES else None, latch)

    def _rw_requests(
        self, op: int, sector: int, nbytes: int, data: memoryview | None, latch: _Latch | None = None
    ) -> tuple[BlkFuture, list[_Request]]:
        """A READ or WRITE as ring requests: one, or several if it is larger than one request may be.

        The future of several is their gathered outcome (a READ's data joined in order);
        its parts have latches of their own.
        """
        if nbytes <= 0 or nbytes % SECTOR_SIZE:
            raise ValueError(f"{self.vdev}: I/O is in whole 512-byte sectors, not {nbytes} bytes")
        chunk = self.max_segments * PAGE_SIZE
        if nbytes <= chunk:
            request = self._rw_request(op, sector, nbytes, data, None, latch)
            return request.future, [request]
        parts = [
            self._rw_request(
                op,
                sector + off // SECTOR_SIZE,
                min(chunk, nbytes - off),
                data[off : off + chunk] if data is not None else None,
            )
            for off in range(0, nbytes, chunk)
        ]
        return _gathered(op, [part.future for part in parts]), parts

    def _rw_request(
        self,
        op: int,
        sector: int,
        nbytes: int,
        data: memoryview | None,
        lent: _Run | None = None,
        latch: _Latch | None = None,
    ) -> _Request:
        """One READ or WRITE; a WRITE's ``data`` is copied into its pages, unless ``lent`` holds it."""
        return _RwRequest(op, sector, nbytes, self._future(nbytes, latch), lent, self.kernel.memory.view, data)

    def _submit_now(self, future: BlkFuture, requests: list[_Request]) -> BlkFuture:
        """A batch of one: place ``requests`` (one operation's) at once; returns its ``future``."""
        self._submit(requests)
        return future

    def _submit(self, requests: list[_Request]) -> None:
        """Place ``requests`` on the ring in order, under one hold of ``_cond``.

        Each run that fits the free slots and pool pages is copied into the ring in
        one go and published with one push (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY);
        then, if requests remain, this waits for the back end to free room. If the
        device is detached (BlockIOError) or the wait is interrupted, the requests
        not yet placed fail with that error and it propagates.
        """
        placed = 0
        try:
            with self._cond:
                while placed < len(requests):
                    if self.closing:
                        raise BlockIOError(f"{self.vdev} is detached")
                    if self.suspended or self.recovering:
                        self._cond.wait(1.0)
                        continue
                    count = self._place_what_fits(requests, placed)
                    if count:
                        placed += count
                        self._push()
                    elif self._reap():
                        self._cond.notify_all()  # pool pages came free for other threads too
                    else:
                        self._cond.wait(1.0)
        except BaseException as exc:
            with self._cond:  # their latch may be shared with requests placed and completing
                for request in requests[placed:]:
                    request.future.set(error=exc)
            raise

    def _place_what_fits(self, requests: list[_Request], start: int) -> int:
        """Fill slots for ``requests[start:]`` while slots and pool pages last (``_cond`` held).

        The slots go into the ring's private producer index, unpublished; returns how many.
        """
        ring = self.ring
        if ring is None:  # not set up: no room
            return 0
        room = ring.free_requests()
        slots = []
        for request in requests[start : start + room]:
            run = request.run if request.run is not None else self._take_pages(request.nr_pages)
            if run is None and request.nr_pages:
                break
            req_id = next(self._ids)
            slot = request.placed = request.slot(req_id, run)
            slots.append(slot)
            if request.run is None:  # a buffer's pages stay lent when it completes
                request.pooled = run
            self._inflight[req_id] = request
        if slots:
            ring.put_requests(b"".join(slots))
        return len(slots)

    def _take_pages(self, nr_pages: int) -> _Run | None:
        """``nr_pages`` pool pages (``_cond`` held); None if none are needed or none are free."""
        if not nr_pages:
            return None
        pool = self._pool
        assert pool is not None  # setup_pool made it before the disk was handed out
        if nr_pages > pool.chunk_pages:
            raise BlockIOError(f"{self.vdev}: a request of {nr_pages} pages exceeds the pool's {pool.chunk_pages}")
        run = pool.take(nr_pages)
        if run is None and self._uncollected:
            self._collect_all()  # the pool is held by reads nobody has asked for yet
            run = pool.take(nr_pages)
        return run

    def _buffer_pages(self, nbytes: int) -> int:
        """Pool pages a buffer of ``nbytes`` takes: one request's data pages and its indirect pages."""
        if nbytes <= 0 or nbytes % SECTOR_SIZE or nbytes > self.max_segments * PAGE_SIZE:
            raise ValueError(
                f"{self.vdev}: a buffer is whole 512-byte sectors, at most "
                f"{self.max_segments * PAGE_SIZE} bytes (one request), not {nbytes}"
            )
        return pages_per_request(-(-nbytes // PAGE_SIZE))

    def _wait_for_pages(self, nr_pages: int, timeout: float | None) -> _Run:
        """``nr_pages`` contiguous pool pages, once they are free (``_cond`` held; see :meth:`buffer`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.closing:
                raise BlockIOError(f"{self.vdev} is detached")
            run = self._take_pages(nr_pages)
            if run is not None:
                return run
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{self.vdev}: no {nr_pages} pool pages came free for a buffer in time")
            self._cond.wait(remaining)

    def _take_back(self, buffer: BlkBuffer, run: _Run) -> None:
        """A released buffer's pages: back to the pool, unless the device is detached (the pool is gone)."""
        with self._cond:
            self._buffers.discard(buffer)
            if not self.closing:
                assert self._pool is not None  # the buffer's pages came from it
                self._pool.give(run)
                self._cond.notify_all()

    def _push(self) -> None:
        """Publish the placed requests; kick the back end only if it asked (``_cond`` held)."""
        ring, port = self.ring, self.port
        assert ring is not None and port is not None  # requests were placed: setup_ring set both
        if ring.push_requests():
            self.kernel.loop.notify(port)

    # -- completion (the event loop) -------------------------------------------------

    def _on_event(self, port: int) -> None:
        if self.ring is None:
            return
        with self._cond:
            ring = self.ring  # under the lock: a reconnect may have let the old one go
            if ring is None:
                return
            if self._pollers:
                self._take_responses(ring)  # a poller re-arms when it stops
            else:
                self._reap()  # re-armed: the next response notifies
            self._cond.notify_all()

    # A thread waiting for a response polls the ring itself (virtio's event suppression):
    # while one does, the event loop takes what it finds without re-arming rsp_event, so
    # the back end pushes without notifying; the last poller re-arms before it sleeps.

    def _poll_begin(self) -> None:
        """A thread starts polling; the first turns the back end's notifications off until the last re-arms."""
        with self._cond:
            self._pollers += 1
            if self._pollers == 1 and self.ring is not None:
                self.ring.disable_response_events()

    def _poll_responses(self) -> None:
        """Complete what the back end has answered, from a polling thread (rsp_event left as it is).

        An unanswered ring is seen without taking the lock (the index is a hint; the lock is taken to consume).
        """
        ring = self.ring
        if ring is None or ring.shared_rsp_prod() == ring.rsp_cons:
            return
        with self._cond:
            if ring is self.ring and self._take_responses(ring):  # not a ring a reconnect let go of
                self._cond.notify_all()

    def _poll_end(self) -> None:
        """The poller stops: complete what was answered and, if it was the last, re-arm rsp_event."""
        with self._cond:
            self._pollers -= 1
            taken = self._reap() if self._pollers == 0 else 0
            if taken:
                self._cond.notify_all()

    def _reap(self) -> int:
        """Complete what the back end answered and re-arm ``rsp_event`` (``_cond`` held); returns how many.

        What a thread waiting for room calls first: a poller may have left
        ``rsp_event`` behind, and then only this makes the next response notify.
        """
        ring = self.ring
        if ring is None:
            return 0
        taken = self._take_responses(ring)
        while ring.final_check_for_responses():
            taken += self._take_responses(ring)
        return taken

    def _take_responses(self, ring: FrontRing) -> int:
        """Complete every response ``ring`` holds (``_cond`` held); returns how many."""
        data, count = ring.get_responses()
        for req_id, op, status in BLKIF_PROTOCOL.unpack_responses(data):
            self._complete(req_id, op, status)
        return count

    def _complete(self, req_id: int, op: int, status: int) -> None:
        inflight = self._inflight.pop(req_id, None)
        if inflight is None:
            log.warning("d%d %s: response to unknown request %d", self.kernel.domid, self.vdev, req_id)
            return
        if status == BLKIF_RSP_OKAY and inflight.op == BLKIF_OP_READ and inflight.pooled is not None:
            # The data is copied out by the thread that asks for it: the event loop stays
            # short, and the buffer is allocated (and later freed) by its user's thread.
            # (A BlkBuffer's READ has no pooled run: its data stays where it landed.)
            self._uncollected[req_id] = inflight
            inflight.future.set(collect=lambda: self._collect(req_id, inflight))
            return
        if inflight.pooled is not None:
            assert self._pool is not None  # the run came from it
            self._pool.give(inflight.pooled)
        if status == BLKIF_RSP_OKAY:
            inflight.future.set()
        else:
            what = {
                BLKIF_OP_READ: "read",
                BLKIF_OP_WRITE: "write",
                BLKIF_OP_FLUSH_DISKCACHE: "flush",
                BLKIF_OP_DISCARD: "discard",
            }.get(inflight.op, f"op {inflight.op}")
            if status == BLKIF_RSP_EOPNOTSUPP:
                code, reason = errno.EOPNOTSUPP, "not supported"
            else:
                code, reason = errno.EIO, "BLKIF_RSP_ERROR"
            message = f"{self.vdev}: {what} at sector {inflight.sector} failed: {reason}"
            inflight.future.set(error=BlockIOError(code, message))

    def _collect(self, req_id: int, inflight: _Request) -> bytes:
        """A completed READ's data: copied out of its pool pages, which go back to the pool."""
        if inflight.pooled is not None:  # not copied out yet (_copy_out sets the data before it drops the run)
            with self._cond:
                if self._uncollected.pop(req_id, None) is not None:
                    self._copy_out(inflight)
                    self._cond.notify_all()
        data = inflight.data
        assert data is not None  # copied out, here or by another thread's _collect_all
        return data

    def _collect_completed(self) -> None:
        """Copy out every completed READ nobody has asked for yet, under one hold of ``_cond``."""
        with self._cond:
            if self._uncollected:
                self._collect_all()
                self._cond.notify_all()

    def _collect_all(self) -> None:
        """Copy out every completed READ nobody has asked for yet (``_cond`` held)."""
        for inflight in self._uncollected.values():
            self._copy_out(inflight)
        self._uncollected.clear()

    def _copy_out(self, inflight: _Request) -> None:
        run = inflight.pooled
        assert run is not None
        base = run.pfn * PAGE_SIZE
        inflight.data = bytes(self.kernel.memory.view[base : base + inflight.nbytes])
        inflight.pooled = None
        assert self._pool is not None  # the run came from it
        self._pool.give(run)


class BlkBatch:
    """Requests queued together and placed on the ring together (blk-mq plugging).

    ``read``/``write``/``flush``/``discard`` check their arguments and queue a
    request at once, returning its :class:`BlkFuture`; nothing reaches the ring
    until :meth:`submit`, which leaving the ``with`` block calls::

        with disk.batch() as batch:
            reads = [batch.read(s, 8 * 512) for s in sectors]
        data = batch.wait()

    A submit takes the device's lock once, copies the run of slots that fits into
    the ring, publishes it with one store of ``req_prod`` and notifies the back
    end only if ``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`` says so. A batch larger
    than the free ring slots or pool pages pushes what fits, waits for room and
    goes on, so it costs one push (and at most one notification) per ring's worth.
    Requests are placed in the order they were queued, but as on a real disk
    requests in flight together may complete in any order (a FLUSH is no barrier):
    put a :meth:`wait` between requests that depend on each other.

    A WRITE's buffer is copied when the batch is submitted: do not change it before.
    ``read_buffer``/``write_buffer`` do I/O on a :class:`BlkBuffer`'s pages with no
    copy; the buffer is busy from when it is queued, until its request completes.
    If the ``with`` block raises, nothing queued is submitted and those futures
    fail with BlockIOError. A batch belongs to one thread.
    """

    def __init__(self, device: BlockDevice) -> None:
        self.device = device
        self.futures: list[BlkFuture] = []  # every request queued on this batch, in order
        self._queued: list[_Request] = []  # ring requests not yet submitted
        self._latch = _Latch()  # what the futures queued since the last submit share

    def read(self, sector: int, nbytes: int) -> BlkFuture:
        """Queue a READ of ``nbytes`` (a multiple of 512) from ``sector``; the future gives bytes."""
        return self._queue(*self.device._read_requests(sector, nbytes, self._latch))

    def write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Queue a WRITE of ``data`` (a multiple of 512 bytes) at ``sector``."""
        return self._queue(*self.device._write_requests(sector, data, self._latch))

    def read_buffer(self, sector: int, buffer: BlkBuffer) -> BlkFuture:
        """Queue a READ of ``buffer.nbytes`` from ``sector`` into the buffer's pages; the future gives None."""
        return self._queue(*self.device._buffer_requests(BLKIF_OP_READ, sector, buffer, self._latch))

    def write_buffer(self, sector: int, buffer: BlkBuffer) -> BlkFuture:
        """Queue a WRITE of the buffer's pages as they are at ``sector`` (not copied: leave them be)."""
        return self._queue(*self.device._buffer_requests(BLKIF_OP_WRITE, sector, buffer, self._latch))

    def flush(self) -> BlkFuture:
        """Queue a FLUSH: everything acknowledged before is durable once it completes."""
        return self._queue(*self.device._flush_requests(self._latch))

    def discard(self, sector: int, nr_sectors: int) -> BlkFuture:
        """Queue a DISCARD of ``nr_sectors`` from ``sector``."""
        return self._queue(*self.device._discard_requests(sector, nr_sectors, self._latch))

    def _queue(self, future: BlkFuture, requests: list[_Request]) -> BlkFuture:
        self._queued.extend(requests)
        self.futures.append(future)
        return future

    def submit(self) -> None:
        """Place everything queued since the last submit on the ring (see the class).

        Raises BlockIOError if the device is detached; what was not placed then fails too.
        """
        queued, self._queued = self._queued, []
        self._latch = _Latch()  # requests queued from now on are another wake-up's
        if queued:
            self.device._submit(queued)

    def cancel(self) -> None:
        """Drop what is queued and not submitted; its futures fail with BlockIOError."""
        queued, self._queued = self._queued, []
        for request in queued:
            request.future.set(error=BlockIOError(f"{self.device.vdev}: the request was never submitted"))

    def wait(self, timeout: float | None = 60.0) -> list[Any]:
        """Submit what is queued, then every request's result in queue order (bytes for a READ).

        Raises the first failed request's error (the others still complete; see
        ``futures``), or TimeoutError when ``timeout`` seconds pass for the whole batch.
        """
        self.submit()
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in self.futures:
            future._wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.device._collect_completed()  # every READ's data under one lock, not one each
        return [future.result() for future in self.futures]

    def __enter__(self) -> BlkBatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.submit()
        else:
            self.cancel()


class SectorDisk(Protocol):
    """What :class:`DiskFile` needs of a disk, of any model (blkfront's :class:`BlockDevice`, direct, passthrough)."""

    @property
    def size(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    def read(self, sector: int, nbytes: int) -> bytes: ...

    def write(self, sector: int, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...


class DiskFile(io.RawIOBase):
    """``io.RawIOBase`` over a :class:`BlockDevice`: byte offsets, any alignment.

    Reads and writes stop at the end of the disk (a read there gives ``b""``, a
    write 0). A write that does not cover whole sectors reads them first and
    writes them back. Nothing is durable before :meth:`fsync`. Writing a
    read-only disk raises BlockIOError. Wrap it in ``io.BufferedRandom`` or
    ``io.TextIOWrapper`` as any raw file; one thread at a time.
    """

    def __init__(self, device: SectorDisk) -> None:
        super().__init__()
        self.device = device
        self._pos = 0

    def readable(self) -> bool:
        """Always True."""
        return True

    def writable(self) -> bool:
        """Whether the disk is writable."""
        return not self.device.readonly

    def seekable(self) -> bool:
        """Always True."""
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to a byte offset (past the end is allowed); ValueError for a negative one. Returns it."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.device.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        """The current byte offset."""
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read up to ``len(buffer)`` bytes at the offset into ``buffer``; how many (0 at the end)."""
        view = memoryview(buffer)
        count = max(0, min(len(view), self.device.size - self._pos))
        if count == 0:
            return 0
        start = self._pos - self._pos % SECTOR_SIZE
        end = -(-(self._pos + count) // SECTOR_SIZE) * SECTOR_SIZE
        data = self.device.read(start // SECTOR_SIZE, end - start)
        skip = self._pos - start
        view[:count] = data[skip : skip + count]
        self._pos += count
        return count

    def write(self, data: ReadableBuffer) -> int:
        """Write ``data`` at the offset, as far as the end of the disk; how many bytes were written."""
        view = memoryview(data).cast("B")
        count = min(len(view), self.device.size - self._pos)
        if count <= 0:
            return 0
        start = self._pos - self._pos % SECTOR_SIZE
        end = -(-(self._pos + count) // SECTOR_SIZE) * SECTOR_SIZE
        if start == self._pos and end == self._pos + count:
            self.device.write(start // SECTOR_SIZE, view[:count])
        else:  # partial sectors: read, modify, write
            block = bytearray(self.device.read(start // SECTOR_SIZE, end - start))
            block[self._pos - start : self._pos - start + count] = view[:count]
            self.device.write(start // SECTOR_SIZE, block)
        self._pos += count
        return count

    def fsync(self) -> None:
        """Make everything written durable (BLKIF_OP_FLUSH_DISKCACHE)."""
        self.device.flush()
