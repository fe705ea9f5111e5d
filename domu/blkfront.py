"""The guest's block front end (Linux ``drivers/block/xen-blkfront.c``).

:class:`Blkfront` follows ``device/vbd`` in the guest's xenstore home: for each
device the toolstack adds it runs the XenBus handshake (read the back end's
features once it is in InitWait; allocate and grant a ring of up to 16 pages;
allocate an event channel; publish ``ring-ref``/``ring-refN``,
``ring-page-order``, ``event-channel``, ``protocol``, ``feature-persistent`` and
move to Initialised; when the back end is Connected, read ``sectors`` and
``info`` and move to Connected), and it follows the back end to Closing and
Closed on detach. Handshakes run in a thread of their own, since they wait for
the back end; the data path runs on the kernel's event loop.

:class:`BlockDevice` is a disk as the workload sees it (``ctx.disks["xvda"]``):
``read``/``write``/``flush``/``discard``, an asynchronous ``submit_*`` interface
returning futures (up to a ring's worth of requests in flight), and
``open()`` for a standard ``io.RawIOBase`` file. I/O goes through a pool of pages
granted to the back end once and reused (persistent grants); requests of more
than 11 pages use indirect descriptors.
"""

from __future__ import annotations

import io
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xenlike.blkif import (
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_PROTOCOL,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_OKAY,
    RESPONSE,
    SECTOR_SIZE,
    SEGS_PER_INDIRECT_FRAME,
    VDISK_READONLY,
    XEN_IO_PROTO_ABI_NATIVE,
    Segment,
    pack_discard,
    pack_flush,
    pack_indirect,
    pack_rw,
    pack_segments,
)
from xenlike.grant_table import GrantError
from xenlike.memory import PAGE_SIZE
from xenlike.ring import FrontRing
from xenlike.xenbus import XenbusState, frontend_path
from xenlike.xs_wire import XsdSockmsgType as XS
from xenlike.xs_wire import XsError

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = ["Blkfront", "BlockDevice", "BlockIOError", "BlkFuture", "DiskFile"]

log = logging.getLogger("domu.blkfront")

MAX_RING_PAGE_ORDER = 4
MAX_SEGMENTS = 256  # per request, with indirect descriptors
HANDSHAKE_TIMEOUT_S = 10.0
# The pool of persistent pages: at most this many, and at most a quarter of the guest's free memory.
MAX_POOL_PAGES = 2048


class BlockIOError(IOError):
    """A request the back end refused or failed."""


class BlkFuture:
    """The outcome of one submitted request."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def set(self, result: Any = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = 60.0) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError("the block request did not complete in time")
        if self._error is not None:
            raise self._error
        return self._result


@dataclass
class _Inflight:
    op: int
    sector: int
    nbytes: int
    pages: list[tuple[int, int]]  # (pfn, gref) of data pages, then indirect pages
    data_pages: int
    future: BlkFuture
    parts: list[bytearray] | None = None


class BlockDevice:
    """A connected virtual disk."""

    def __init__(self, front: "Blkfront", devid: int, vdev: str) -> None:
        self.front = front
        self.kernel = front.kernel
        self.devid = devid
        self.vdev = vdev
        self.path = frontend_path(self.kernel.domid, "vbd", devid)
        self.backend_path = ""
        self.backend_id = 0
        self.sectors = 0
        self.readonly = False
        self.max_segments = BLKIF_MAX_SEGMENTS_PER_REQUEST
        self.persistent = False
        self.port: int | None = None
        self.ring: FrontRing | None = None
        self._ring_pages: list[tuple[int, int]] = []
        self._ring_first = 0
        self._cond = threading.Condition()
        self._free: list[tuple[int, int]] = []
        self._pool_size = 0
        self._pool_limit = MAX_POOL_PAGES
        self._inflight: dict[int, _Inflight] = {}
        self._ids = itertools.count(1)
        self.closing = False

    # -- geometry ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes."""
        return self.sectors * SECTOR_SIZE

    def __repr__(self) -> str:
        return f"<BlockDevice {self.vdev} {self.size >> 20} MiB{' ro' if self.readonly else ''}>"

    # -- the handshake (runs in the xenbus thread) ------------------------------------

    def connect(self) -> None:
        xs = self.kernel.xenbus
        self.backend_path = xs.read_str(f"{self.path}/backend") or ""
        self.backend_id = int(xs.read_str(f"{self.path}/backend-id") or 0)
        self.front.wait_backend(self, {XenbusState.InitWait, XenbusState.Connected})
        features = {key: xs.read_str(f"{self.backend_path}/{key}") for key in
                    ("max-ring-page-order", "feature-persistent", "feature-max-indirect-segments")}
        order = min(int(features["max-ring-page-order"] or 0), MAX_RING_PAGE_ORDER)
        self.persistent = features["feature-persistent"] == "1"
        indirect = int(features["feature-max-indirect-segments"] or 0)
        self.max_segments = max(BLKIF_MAX_SEGMENTS_PER_REQUEST, min(indirect, MAX_SEGMENTS))
        nr_pages = 1 << order
        pages = self.kernel.pages
        self._ring_first = pages.alloc(nr_pages)
        self.ring = FrontRing(self.kernel.memory.frames(self._ring_first, nr_pages), BLKIF_PROTOCOL)
        grants = self.kernel.grant_table
        self._ring_pages = [(self._ring_first + i, grants.grant_access(self.backend_id, self._ring_first + i))
                            for i in range(nr_pages)]
        result, fds = self.kernel.hypercall.call("evtchn_alloc_unbound", remote_dom=self.backend_id)
        self.port = result["port"]
        self.kernel.loop.bind(self.port, fds[0], handler=self._on_event)
        self._pool_limit = max(64, min(MAX_POOL_PAGES, pages.free_frames // 4))

        def publish(t) -> None:
            if order == 0:
                t.write(f"{self.path}/ring-ref", str(self._ring_pages[0][1]))
            else:
                t.write(f"{self.path}/ring-page-order", str(order))
                for i, (_, gref) in enumerate(self._ring_pages):
                    t.write(f"{self.path}/ring-ref{i}", str(gref))
            t.write(f"{self.path}/event-channel", str(self.port))
            t.write(f"{self.path}/protocol", XEN_IO_PROTO_ABI_NATIVE)
            t.write(f"{self.path}/feature-persistent", "1")
            t.write(f"{self.path}/state", str(int(XenbusState.Initialised)))

        self.front.transact(publish)
        self.front.wait_backend(self, {XenbusState.Connected})
        self.sectors = int(xs.read_str(f"{self.backend_path}/sectors") or 0)
        self.readonly = bool(int(xs.read_str(f"{self.backend_path}/info") or 0) & VDISK_READONLY)
        xs.write(f"{self.path}/state", str(int(XenbusState.Connected)))
        # Follow the other end from now on (Linux's otherend watch): its Closing starts a detach.
        xs.watch(f"{self.backend_path}/state", self._otherend_token, lambda path, token: self.front._notify())

    @property
    def _otherend_token(self) -> str:
        return f"blkfront-otherend-{self.devid}"

    def close(self) -> None:
        """The back end is going away: fail what is in flight, go Closed, give the grants back."""
        xs = self.kernel.xenbus
        with self._cond:
            self.closing = True
            for inflight in self._inflight.values():
                inflight.future.set(error=BlockIOError(f"{self.vdev} was detached"))
            self._inflight.clear()
            self._cond.notify_all()
        try:
            xs.unwatch(f"{self.backend_path}/state", self._otherend_token)
        except XsError:
            pass
        xs.write(f"{self.path}/state", str(int(XenbusState.Closing)))
        xs.write(f"{self.path}/state", str(int(XenbusState.Closed)))
        self.front.wait_backend(self, {XenbusState.Closed}, timeout=HANDSHAKE_TIMEOUT_S)
        if self.port is not None:
            try:
                self.kernel.hypercall.call("evtchn_close", port=self.port)
            except OSError:
                pass
            self.kernel.loop.unbind(self.port)
        if self.ring is not None:
            self.ring.release()
        for pfn, gref in self._ring_pages:
            self._end_access(gref)
        self.kernel.pages.free(self._ring_first)
        for pfn, gref in self._free:
            self._end_access(gref)
            self.kernel.pages.free(pfn)
        self._free.clear()

    def _end_access(self, gref: int) -> None:
        try:
            self.kernel.grant_table.end_access(gref)
        except GrantError as exc:
            log.warning("d%d %s: grant %d not returned: %s", self.kernel.domid, self.vdev, gref, exc)

    # -- submission ----------------------------------------------------------------------

    def submit_read(self, sector: int, nbytes: int) -> BlkFuture:
        """Read ``nbytes`` (a multiple of 512) from ``sector``; the future gives bytes."""
        return self._submit_rw(BLKIF_OP_READ, sector, nbytes, None)

    def submit_write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Write ``data`` (a multiple of 512 bytes) at ``sector``; acknowledged once it reached the image."""
        if self.readonly:
            raise BlockIOError(f"{self.vdev} is read-only")
        return self._submit_rw(BLKIF_OP_WRITE, sector, len(data), memoryview(data).cast("B"))

    def submit_flush(self) -> BlkFuture:
        """Everything acknowledged before is durable once this completes."""
        return self._submit(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, [], 0, lambda req_id, pages: pack_flush(req_id))

    def submit_discard(self, sector: int, nr_sectors: int) -> BlkFuture:
        return self._submit(BLKIF_OP_DISCARD, sector, 0, [], 0,
                            lambda req_id, pages: pack_discard(req_id, sector, nr_sectors))

    def read(self, sector: int, nbytes: int) -> bytes:
        return self.submit_read(sector, nbytes).result()

    def write(self, sector: int, data: bytes | bytearray | memoryview) -> None:
        self.submit_write(sector, data).result()

    def flush(self) -> None:
        self.submit_flush().result()

    def discard(self, sector: int, nr_sectors: int) -> None:
        self.submit_discard(sector, nr_sectors).result()

    def open(self) -> "DiskFile":
        """A standard raw file over the disk (seekable; writable unless read-only)."""
        return DiskFile(self)

    def _submit_rw(self, op: int, sector: int, nbytes: int, data: memoryview | None) -> BlkFuture:
        if nbytes <= 0 or nbytes % SECTOR_SIZE:
            raise ValueError(f"{self.vdev}: I/O is in whole 512-byte sectors, not {nbytes} bytes")
        chunk = self.max_segments * PAGE_SIZE
        if nbytes <= chunk:
            return self._submit_one(op, sector, nbytes, data)
        # Larger than one request: split, and gather the parts.
        parts = [self._submit_one(op, sector + off // SECTOR_SIZE, min(chunk, nbytes - off),
                                  data[off : off + chunk] if data is not None else None)
                 for off in range(0, nbytes, chunk)]
        combined = BlkFuture()

        def gather() -> None:
            try:
                results = [p.result() for p in parts]
                combined.set(b"".join(results) if op == BLKIF_OP_READ else None)
            except BaseException as exc:
                combined.set(error=exc)

        threading.Thread(target=gather, daemon=True).start()
        return combined

    def _submit_one(self, op: int, sector: int, nbytes: int, data: memoryview | None) -> BlkFuture:
        nr_data = -(-nbytes // PAGE_SIZE)
        nr_indirect = 0 if nr_data <= BLKIF_MAX_SEGMENTS_PER_REQUEST else -(-nr_data // SEGS_PER_INDIRECT_FRAME)
        view = self.kernel.memory.view  # frames by offset: pfns come from our own allocator

        def fill(req_id: int, pages: list[tuple[int, int]]) -> bytes:
            segments = []
            for i, (pfn, gref) in enumerate(pages[:nr_data]):
                length = min(PAGE_SIZE, nbytes - i * PAGE_SIZE)
                if data is not None:
                    view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length] = data[i * PAGE_SIZE : i * PAGE_SIZE + length]
                segments.append(Segment(gref, 0, length // SECTOR_SIZE - 1))
            if not nr_indirect:
                return pack_rw(op, req_id, sector, segments)
            packed = pack_segments(segments)
            indirect = pages[nr_data:]
            for i, (pfn, _) in enumerate(indirect):
                part = packed[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
                view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + len(part)] = part
            return pack_indirect(op, req_id, sector, nr_data, [gref for _, gref in indirect])

        return self._submit(op, sector, nbytes, [], nr_data + nr_indirect, fill, nr_data)

    def _submit(self, op: int, sector: int, nbytes: int, _unused: list, nr_pages: int, build, data_pages: int = 0) -> BlkFuture:
        future = BlkFuture()
        if nr_pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGS_PER_INDIRECT_FRAME:
            raise ValueError(f"{self.vdev}: request too large")
        with self._cond:
            while not self.closing and (self.ring is None or self.ring.full() or not self._reserve(nr_pages)):
                self._cond.wait(1.0)
            if self.closing:
                raise BlockIOError(f"{self.vdev} is detached")
            pages = [self._free.pop() for _ in range(nr_pages)]
            req_id = next(self._ids)
            slot = build(req_id, pages)
            self._inflight[req_id] = _Inflight(op, sector, nbytes, pages, data_pages, future)
            self.ring.put_requests(slot)  # type: ignore[union-attr]
            if self.ring.push_requests():  # type: ignore[union-attr]
                self.kernel.loop.notify(self.port)  # type: ignore[arg-type]
        return future

    def _reserve(self, count: int) -> bool:
        """Make sure ``count`` pool pages are free, granting new ones while the pool may grow."""
        while len(self._free) < count and self._pool_size < self._pool_limit:
            pfn = self.kernel.pages.alloc(1)
            self._free.append((pfn, self.kernel.grant_table.grant_access(self.backend_id, pfn)))
            self._pool_size += 1
        if count > self._pool_limit:
            raise BlockIOError(f"{self.vdev}: a request of {count} pages exceeds the pool of {self._pool_limit}")
        return len(self._free) >= count

    # -- completion (the event loop) -------------------------------------------------

    def _on_event(self, port: int) -> None:
        ring = self.ring
        if ring is None:
            return
        with self._cond:
            while True:
                data, count = ring.get_responses()
                for req_id, op, status in (RESPONSE.unpack_from(data, i * 112) for i in range(count)):
                    self._complete(req_id, op, status)
                if not count and not ring.final_check_for_responses():
                    break
            self._cond.notify_all()

    def _complete(self, req_id: int, op: int, status: int) -> None:
        inflight = self._inflight.pop(req_id, None)
        if inflight is None:
            log.warning("d%d %s: response to unknown request %d", self.kernel.domid, self.vdev, req_id)
            return
        result: bytes | None = None
        if status == BLKIF_RSP_OKAY and inflight.op == BLKIF_OP_READ:
            view = self.kernel.memory.view
            out = bytearray(inflight.nbytes)
            for i, (pfn, _) in enumerate(inflight.pages[: inflight.data_pages]):
                length = min(PAGE_SIZE, inflight.nbytes - i * PAGE_SIZE)
                out[i * PAGE_SIZE : i * PAGE_SIZE + length] = view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length]
            result = bytes(out)
        self._free.extend(inflight.pages)
        if status == BLKIF_RSP_OKAY:
            inflight.future.set(result)
        else:
            what = {BLKIF_OP_READ: "read", BLKIF_OP_WRITE: "write", BLKIF_OP_FLUSH_DISKCACHE: "flush",
                    BLKIF_OP_DISCARD: "discard"}.get(inflight.op, f"op {inflight.op}")
            reason = "not supported" if status == BLKIF_RSP_EOPNOTSUPP else "BLKIF_RSP_ERROR"
            inflight.future.set(error=BlockIOError(
                f"{self.vdev}: {what} at sector {inflight.sector} failed: {reason}"))


class DiskFile(io.RawIOBase):
    """``io.RawIOBase`` over a :class:`BlockDevice`: byte offsets, any alignment."""

    def __init__(self, device: BlockDevice) -> None:
        super().__init__()
        self.device = device
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self.device.readonly

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.device.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self.device.size - self._pos))
        if count == 0:
            return 0
        start = self._pos - self._pos % SECTOR_SIZE
        end = -(-(self._pos + count) // SECTOR_SIZE) * SECTOR_SIZE
        data = self.device.read(start // SECTOR_SIZE, end - start)
        skip = self._pos - start
        memoryview(buffer)[:count] = data[skip : skip + count]
        self._pos += count
        return count

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = memoryview(data).cast("B")
        count = min(len(data), self.device.size - self._pos)
        if count <= 0:
            return 0
        start = self._pos - self._pos % SECTOR_SIZE
        end = -(-(self._pos + count) // SECTOR_SIZE) * SECTOR_SIZE
        if start == self._pos and end == self._pos + count:
            self.device.write(start // SECTOR_SIZE, data[:count])
        else:  # partial sectors: read, modify, write
            block = bytearray(self.device.read(start // SECTOR_SIZE, end - start))
            block[self._pos - start : self._pos - start + count] = data[:count]
            self.device.write(start // SECTOR_SIZE, block)
        self._pos += count
        return count

    def fsync(self) -> None:
        """Make everything written durable (BLKIF_OP_FLUSH_DISKCACHE)."""
        self.device.flush()


class Blkfront:
    """Every vbd of this guest, and the thread that runs their handshakes."""

    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel
        self.disks: dict[str, BlockDevice] = {}
        self._by_devid: dict[int, BlockDevice] = {}
        self._work: queue.Queue[str] = queue.Queue()
        self._backend_changed = threading.Condition()
        self._generation = 0  # bumped by every back-end state watch event
        self._thread: threading.Thread | None = None
        kernel.xenbus.watch_async("device/vbd", "blkfront", self._on_devices_changed)

    def _on_devices_changed(self, path: str, token: str) -> None:
        """Watch on ``device/vbd`` (loop thread): scan, once there is anything to scan.

        A guest without disks never starts the handshake thread.
        """
        def listed(msg_type: int, payload: bytes) -> None:
            if payload.strip(b"\0") or self._by_devid:
                self._scan_soon()

        self.kernel.xenbus.request_async(XS.DIRECTORY, b"device/vbd\0", listed)

    def _scan_soon(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xenbus-blkfront", daemon=True)
            self._thread.start()
        self._work.put("scan")

    def wait_for(self, vdevs: list[str], timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        """Block until these disks are connected (the kernel waits for its boot disks)."""
        with self._backend_changed:
            self._backend_changed.wait_for(lambda: all(v in self.disks for v in vdevs), timeout)

    def transact(self, body) -> None:
        while True:
            try:
                with self.kernel.xenbus.transaction() as t:
                    body(t)
                return
            except XsError as exc:
                if exc.errno_name != "EAGAIN":
                    raise

    def wait_backend(self, device: BlockDevice, states: set[XenbusState], timeout: float = HANDSHAKE_TIMEOUT_S) -> XenbusState:
        """Wait until the back end of ``device`` is in one of ``states``."""
        token = f"blkfront-be-{device.devid}"
        path = f"{device.backend_path}/state"
        deadline = time.monotonic() + timeout
        self.kernel.xenbus.watch(path, token, lambda p, t: self._notify())
        try:
            while True:
                with self._backend_changed:
                    generation = self._generation
                # Read with no lock held: the watch callback needs the lock, and it
                # runs on the loop thread that delivers this read's reply.
                state = self._backend_state(device)
                if state in states:
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BlockIOError(f"{device.vdev}: the back end did not reach "
                                       f"{', '.join(s.name for s in states)} (it is {state.name})")
                with self._backend_changed:
                    self._backend_changed.wait_for(lambda: self._generation != generation, remaining)
        finally:
            self.kernel.xenbus.unwatch(path, token)

    def _backend_state(self, device: BlockDevice) -> XenbusState:
        """The back end's state; Unknown once its directory is gone (or no longer readable)."""
        try:
            return XenbusState.parse(self.kernel.xenbus.read_str(f"{device.backend_path}/state"))
        except XsError:
            return XenbusState.Unknown

    def _notify(self) -> None:
        with self._backend_changed:
            self._generation += 1
            self._backend_changed.notify_all()
        self._scan_soon()

    def _run(self) -> None:
        while True:
            self._work.get()
            while not self._work.empty():
                self._work.get_nowait()
            try:
                self._scan()
            except Exception:
                log.exception("d%d: blkfront scan failed", self.kernel.domid)

    def _scan(self) -> None:
        xs = self.kernel.xenbus
        try:
            present = {int(d) for d in xs.directory("device/vbd")}
        except XsError:
            present = set()
        for devid in sorted(present - set(self._by_devid)):
            self._attach(devid)
        for devid, device in list(self._by_devid.items()):
            state = self._backend_state(device) if device.backend_path else XenbusState.Unknown
            if devid not in present or state in (XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown):
                self._detach(device)

    def _attach(self, devid: int) -> None:
        xs = self.kernel.xenbus
        base = f"device/vbd/{devid}"
        backend = xs.read_str(f"{base}/backend")
        if backend is None:
            return
        vdev = xs.read_str(f"{backend}/dev") or str(devid)
        device = BlockDevice(self, devid, vdev)
        self._by_devid[devid] = device
        try:
            device.connect()
        except Exception as exc:
            log.warning("d%d %s: cannot connect: %s", self.kernel.domid, vdev, exc)
            return
        with self._backend_changed:
            self.disks[vdev] = device
            self._backend_changed.notify_all()
        print(f"[blkfront] {vdev}: {device.size >> 20} MiB{' read-only' if device.readonly else ''}", flush=True)

    def _detach(self, device: BlockDevice) -> None:
        self._by_devid.pop(device.devid, None)
        self.disks.pop(device.vdev, None)
        try:
            device.close()
        except Exception as exc:
            log.warning("d%d %s: close: %s", self.kernel.domid, device.vdev, exc)
        print(f"[blkfront] {device.vdev}: detached", flush=True)
