"""A disk the guest reaches without a ring: what the direct and passthrough models share.

:class:`LocalDisk` is the workload's :class:`~domu.blkfront.BlockDevice` API
(``read``/``write``/``flush``/``discard``, ``submit_*`` futures, ``batch()``,
``buffer()``, ``open()``) over one primitive a model supplies, :meth:`LocalDisk._run`,
which serves a list of requests and returns their ``BLKIF_RSP_*`` statuses. Requests
run on the submitting thread: a future is complete when ``submit_*`` returns (a
direct disk's hypercall or a passthrough disk's system call has returned). Every
request is checked here first with :func:`xenlike.public.vdisk.check_request`, as
blkback checks a split disk's; a direct disk's hypervisor checks it again.

Data moves through guest pages (:class:`_Pages`): a direct disk's hypervisor copies
into the guest's frames, so a READ lands in pages of the guest's own and is copied
out (one copy, as blkfront's pool); :meth:`LocalDisk.buffer` lends such pages for
I/O with no copy in the guest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xenlike.kernel.memory import OutOfFrames, PageAllocator
from xenlike.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
)
from xenlike.public.vdisk import MAX_IO_BYTES, check_request
from xenlike.public.xen import PAGE_SIZE

from ..blkfront.blkfront import BlkFuture, BlockIOError, DiskFile, _Latch

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["LocalDisk", "LocalBatch", "LocalBuffer", "Request"]

log = logging.getLogger("domu.vdisk")

POOL_PAGES = 8 * MAX_IO_BYTES // PAGE_SIZE  # as blkfront's pool: eight of the largest requests
_OP_NAMES = {
    BLKIF_OP_READ: "read",
    BLKIF_OP_WRITE: "write",
    BLKIF_OP_FLUSH_DISKCACHE: "flush",
    BLKIF_OP_DISCARD: "discard",
}


@dataclass(slots=True)
class Request:
    """One request as a model serves it: a READ or WRITE moves ``nbytes`` at guest frame ``pfn``."""

    op: int
    sector: int
    nbytes: int = 0  # READ, WRITE
    pfn: int = -1  # READ, WRITE: the first of the guest frames holding the data
    nr_sectors: int = 0  # DISCARD


class _Pages:
    """Guest pages a disk does I/O through, taken from the kernel's allocator once."""

    def __init__(self, kernel: GuestKernel) -> None:
        self.kernel = kernel
        count = POOL_PAGES
        while True:
            try:
                first = kernel.pages.alloc(count)
                break
            except OutOfFrames:
                if count <= MAX_IO_BYTES // PAGE_SIZE:
                    raise
                count //= 2
        self.first, self.count = first, count
        self.free = PageAllocator(first, first + count)
        self.cond = threading.Condition()
        self.closed = ""  # why the disk is gone, once it is

    def take(self, nbytes: int) -> int:
        """The first pfn of a run of pages holding ``nbytes``; waits until one is free. BlockIOError once closed."""
        pages = -(-nbytes // PAGE_SIZE)
        with self.cond:
            while True:
                if self.closed:
                    raise BlockIOError(self.closed)
                try:
                    return self.free.alloc(pages)
                except OutOfFrames:
                    self.cond.wait(1.0)

    def give(self, pfn: int) -> None:
        with self.cond:
            self.free.free(pfn)
            self.cond.notify_all()
            self._release_if_idle()

    def close(self, why: str) -> None:
        """No more I/O through these pages; they go back to the kernel once every run taken is given back."""
        with self.cond:
            self.closed = why
            self.cond.notify_all()
            self._release_if_idle()

    def _release_if_idle(self) -> None:
        if self.closed and self.count and self.free.free_frames == self.count:
            self.kernel.pages.free(self.first)
            self.count = 0

    def view(self, pfn: int, nbytes: int) -> memoryview:
        base = pfn * PAGE_SIZE
        return self.kernel.memory.view[base : base + nbytes]


class LocalDisk:
    """A disk of the direct or passthrough model (``ctx.disks[vdev]``), with :class:`BlockDevice`'s API.

    ``model`` says which; ``vdev``, ``devid``, ``sectors``, ``size`` and ``readonly``
    are as blkfront's. Subclasses serve requests in :meth:`_run`.
    """

    model = ""

    def __init__(self, kernel: GuestKernel, vdev: str, devid: int, sectors: int, readonly: bool) -> None:
        self.kernel = kernel
        self.vdev = vdev
        self.devid = devid
        self.sectors = sectors
        self.readonly = readonly
        self._pages = _Pages(kernel)

    def close(self) -> None:
        """The disk was unplugged: requests from now on fail with BlockIOError; its pages go back to the kernel
        once no request or buffer holds them."""
        self._pages.close(f"{self.vdev} was unplugged")

    @property
    def size(self) -> int:
        """The disk's length in bytes."""
        return self.sectors * SECTOR_SIZE

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.vdev} {self.size >> 20} MiB{' ro' if self.readonly else ''}>"

    # -- the model's primitive -----------------------------------------------------

    def _run(self, requests: list[Request]) -> list[int]:
        """Serve ``requests`` (checked), in order; their ``BLKIF_RSP_*`` statuses."""
        raise NotImplementedError

    # -- blocking and asynchronous I/O ---------------------------------------------

    def read(self, sector: int, nbytes: int) -> bytes:
        """Read ``nbytes`` (a multiple of 512) from ``sector``."""
        result: bytes = self.submit_read(sector, nbytes).result()
        return result

    def write(self, sector: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (a multiple of 512 bytes) at ``sector``; returns once it is in the image."""
        self.submit_write(sector, data).result()

    def flush(self) -> None:
        """Make everything written before durable (``fdatasync`` of the image)."""
        self.submit_flush().result()

    def discard(self, sector: int, nr_sectors: int) -> None:
        """Discard ``nr_sectors`` from ``sector``; they read back as zeros."""
        self.submit_discard(sector, nr_sectors).result()

    def submit_read(self, sector: int, nbytes: int) -> BlkFuture:
        """Read ``nbytes`` from ``sector``; the (completed) future gives the bytes."""
        with self.batch() as batch:
            future = batch.read(sector, nbytes)
        return future

    def submit_write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Write ``data`` at ``sector``; the future completes once it is in the image."""
        with self.batch() as batch:
            future = batch.write(sector, data)
        return future

    def submit_flush(self) -> BlkFuture:
        """Everything acknowledged before is durable once this completes."""
        with self.batch() as batch:
            future = batch.flush()
        return future

    def submit_discard(self, sector: int, nr_sectors: int) -> BlkFuture:
        """Discard ``nr_sectors`` from ``sector``."""
        with self.batch() as batch:
            future = batch.discard(sector, nr_sectors)
        return future

    def batch(self) -> LocalBatch:
        """Requests served together on :meth:`LocalBatch.submit` (a direct disk's in one multicall)."""
        return LocalBatch(self)

    def buffer(self, nbytes: int, timeout: float | None = 60.0) -> LocalBuffer:
        """Borrow ``nbytes`` (whole sectors, at most one request) of guest pages for I/O with no copy."""
        if nbytes <= 0 or nbytes % SECTOR_SIZE or nbytes > MAX_IO_BYTES:
            raise ValueError(f"{self.vdev}: a buffer is whole 512-byte sectors, at most {MAX_IO_BYTES} bytes")
        return LocalBuffer(self, self._pages.take(nbytes), nbytes)

    def submit_read_buffer(self, sector: int, buffer: LocalBuffer) -> BlkFuture:
        """Read ``buffer.nbytes`` from ``sector`` into the buffer's pages; the future gives None."""
        with self.batch() as batch:
            future = batch.read_buffer(sector, buffer)
        return future

    def submit_write_buffer(self, sector: int, buffer: LocalBuffer) -> BlkFuture:
        """Write the buffer's pages at ``sector``; the future completes once they are in the image."""
        with self.batch() as batch:
            future = batch.write_buffer(sector, buffer)
        return future

    def open(self) -> DiskFile:
        """A standard raw file over the disk (seekable; writable unless read-only)."""
        return DiskFile(self)

    # -- checks --------------------------------------------------------------------

    def _checked(self, op: int, sector: int, nbytes: int = 0, nr_sectors: int = 0) -> Request:
        """A request, or BlockIOError (ValueError for a size that is not whole sectors) saying why not."""
        if op in (BLKIF_OP_READ, BLKIF_OP_WRITE):
            if nbytes <= 0 or nbytes % SECTOR_SIZE:
                raise ValueError(f"{self.vdev}: I/O is in whole 512-byte sectors, not {nbytes} bytes")
            nr_sectors = nbytes // SECTOR_SIZE
        if op in (BLKIF_OP_WRITE, BLKIF_OP_DISCARD) and self.readonly:
            raise BlockIOError(f"{self.vdev} is read-only")
        return Request(op, sector, nbytes, -1, nr_sectors)

    def _refusal(self, request: Request) -> str | None:
        nr_sectors = request.nr_sectors if request.op == BLKIF_OP_DISCARD else request.nbytes // SECTOR_SIZE
        return check_request(request.op, request.sector, nr_sectors, self.sectors, self.readonly)

    def _error(self, request: Request, status: int) -> BlockIOError:
        reason = "not supported" if status == BLKIF_RSP_EOPNOTSUPP else "BLKIF_RSP_ERROR"
        what = _OP_NAMES.get(request.op, f"op {request.op}")
        return BlockIOError(f"{self.vdev}: {what} at sector {request.sector} failed: {reason}")


class LocalBuffer:
    """Guest pages lent to the workload (:class:`~domu.blkfront.BlkBuffer`'s contract): ``view``, ``release()``."""

    def __init__(self, disk: LocalDisk, pfn: int, nbytes: int) -> None:
        self.disk = disk
        self.nbytes = nbytes
        self._pfn: int | None = pfn
        self._view: memoryview | None = disk._pages.view(pfn, nbytes)
        self.busy = False  # requests complete before submit returns: never busy between calls

    @property
    def view(self) -> memoryview:
        """The pages, writable; BlockIOError once released."""
        if self._view is None:
            raise BlockIOError(f"{self.disk.vdev}: the buffer was released")
        return self._view

    def _pfn_for(self, disk: LocalDisk) -> int:
        if disk is not self.disk:
            raise BlockIOError(f"{disk.vdev}: the buffer belongs to {self.disk.vdev}")
        if self._pfn is None:
            raise BlockIOError(f"{disk.vdev}: the buffer was released")
        return self._pfn

    def release(self) -> None:
        """Give the pages back; harmless once released. BlockIOError while the view is still exported."""
        if self._pfn is None:
            return
        if self._view is not None:
            try:
                self._view.release()
            except BufferError as exc:
                raise BlockIOError(f"{self.disk.vdev}: the buffer's view is still exported: {exc}") from None
            self._view = None
        pfn, self._pfn = self._pfn, None
        self.disk._pages.give(pfn)

    def __enter__(self) -> LocalBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LocalBatch:
    """Requests queued, then served together by :meth:`submit` (:class:`~domu.blkfront.BlkBatch`'s API)."""

    def __init__(self, disk: LocalDisk) -> None:
        self.disk = disk
        self.futures: list[BlkFuture] = []
        self._latch: _Latch | None = None  # shared by the futures queued until the next submit: one wake-up
        # queued: (request, future, data to write or None, whether its pages are a buffer's)
        self._queued: list[tuple[Request, BlkFuture, memoryview | None, bool]] = []

    def read(self, sector: int, nbytes: int) -> BlkFuture:
        """Queue a READ; the future gives bytes."""
        return self._rw(self.disk._checked(BLKIF_OP_READ, sector, nbytes), None)

    def write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Queue a WRITE of ``data`` (copied when the batch is submitted)."""
        view = memoryview(data).cast("B")
        return self._rw(self.disk._checked(BLKIF_OP_WRITE, sector, len(view)), view)

    def read_buffer(self, sector: int, buffer: LocalBuffer) -> BlkFuture:
        """Queue a READ into the buffer's pages; the future gives None."""
        return self._on_buffer(BLKIF_OP_READ, sector, buffer)

    def write_buffer(self, sector: int, buffer: LocalBuffer) -> BlkFuture:
        """Queue a WRITE of the buffer's pages as they are."""
        return self._on_buffer(BLKIF_OP_WRITE, sector, buffer)

    def flush(self) -> BlkFuture:
        """Queue a FLUSH."""
        return self._queue(self.disk._checked(BLKIF_OP_FLUSH_DISKCACHE, 0), None, False)

    def discard(self, sector: int, nr_sectors: int) -> BlkFuture:
        """Queue a DISCARD."""
        return self._queue(self.disk._checked(BLKIF_OP_DISCARD, sector, 0, nr_sectors), None, False)

    def _rw(self, request: Request, data: memoryview | None) -> BlkFuture:
        if request.nbytes <= MAX_IO_BYTES:
            return self._queue(request, data, False)
        parts = []  # larger than one request: split, as blkfront splits
        for off in range(0, request.nbytes, MAX_IO_BYTES):
            nbytes = min(MAX_IO_BYTES, request.nbytes - off)
            part = Request(request.op, request.sector + off // SECTOR_SIZE, nbytes)
            parts.append(self._queue(part, None if data is None else data[off : off + nbytes], False, track=False))
        joined = _Joined(request.op, parts)
        self.futures.append(joined)
        return joined

    def _on_buffer(self, op: int, sector: int, buffer: LocalBuffer) -> BlkFuture:
        request = self.disk._checked(op, sector, buffer.nbytes)
        request.pfn = buffer._pfn_for(self.disk)
        return self._queue(request, None, True)

    def _queue(self, request: Request, data: memoryview | None, lent: bool, track: bool = True) -> BlkFuture:
        """Queue one request; ``track``: its future is one of :attr:`futures` (a split request's parts are not)."""
        if self._latch is None:
            self._latch = _Latch()
        future = BlkFuture(latch=self._latch)
        self._queued.append((request, future, data, lent))
        if track:
            self.futures.append(future)
        return future

    def submit(self) -> None:
        """Serve everything queued since the last submit; each future is complete when this returns."""
        queued, self._queued, self._latch = self._queued, [], None
        disk = self.disk
        ready: list[tuple[Request, BlkFuture, bool]] = []
        for request, future, data, lent in queued:
            reason = disk._refusal(request)
            if reason is not None:
                log.warning("d%d %s: request refused: %s", disk.kernel.domid, disk.vdev, reason)
                future.set(error=disk._error(request, BLKIF_RSP_ERROR))
                continue
            pooled = request.op in (BLKIF_OP_READ, BLKIF_OP_WRITE) and not lent
            if pooled:
                try:
                    request.pfn = disk._pages.take(request.nbytes)
                except BlockIOError as exc:  # unplugged
                    future.set(error=exc)
                    continue
                if data is not None:
                    disk._pages.view(request.pfn, request.nbytes)[:] = data
            ready.append((request, future, pooled))
        try:
            statuses = disk._run([request for request, _, _ in ready]) if ready else []
        except BaseException as exc:
            for request, future, pooled in ready:
                if pooled:
                    disk._pages.give(request.pfn)
                future.set(error=BlockIOError(f"{disk.vdev}: {exc}"))
            raise
        for (request, future, pooled), status in zip(ready, statuses):
            data_out = None
            if pooled:
                if status == BLKIF_RSP_OKAY and request.op == BLKIF_OP_READ:
                    data_out = bytes(disk._pages.view(request.pfn, request.nbytes))
                disk._pages.give(request.pfn)
            if status == BLKIF_RSP_OKAY:
                future.set(data_out)
            else:
                future.set(error=disk._error(request, status))

    def cancel(self) -> None:
        """Drop what is queued; its futures fail with BlockIOError."""
        queued, self._queued, self._latch = self._queued, [], None
        for _request, future, _data, _lent in queued:
            future.set(error=BlockIOError(f"{self.disk.vdev}: the request was never submitted"))

    def wait(self, timeout: float | None = 60.0) -> list[Any]:
        """Submit what is queued, then every result in queue order; raises the first failure."""
        self.submit()
        return [future.result(timeout) for future in self.futures]

    def __enter__(self) -> LocalBatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.submit()
        else:
            self.cancel()


class _Joined(BlkFuture):
    """The parts of a split READ or WRITE as one future (they complete in the same submit)."""

    __slots__ = ("_parts", "_op")

    def __init__(self, op: int, parts: list[BlkFuture]) -> None:
        super().__init__()
        self._op, self._parts = op, parts

    def done(self) -> bool:
        return all(part.done() for part in self._parts)

    def result(self, timeout: float | None = 60.0) -> Any:
        results = [part.result(timeout) for part in self._parts]
        return b"".join(results) if self._op == BLKIF_OP_READ else None
