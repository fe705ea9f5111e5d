"""A passthrough disk: the guest holds the image's fd and does its own I/O (the VMM out of the path).

What a device assigned to a guest is: the guest's driver talks to it with no one
in between, here with ``preadv``/``pwritev`` on the fd the hypervisor handed over
at boot (``vdisk_op list``). The jail is what keeps it to that: the guest can
open no file by path, so the image's fd is the one file it reaches. The guest's
own checks (bounds, read-only, alignment) are a courtesy to the workload, not a
protection: a hostile guest can write anywhere in its image, and the image's fd,
opened read-only for an ``access=ro`` disk, is the bound the kernel enforces. A
write is in the image once ``pwritev`` returned, FLUSH is ``fdatasync``, as blkback's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from xenlike.kernel.image import punch_hole
from xenlike.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
)
from xenlike.public.vdisk import MAX_IO_BYTES, MODEL_PASSTHROUGH

from ..blkfront.blkfront import BlkFuture, BlockIOError
from .disk import LocalBatch, LocalDisk, Request, log

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["PassthroughDisk"]


class _Completed(BlkFuture):
    """A request that completed before ``submit_*`` returned: its outcome alone, no latch or lock to wait on.

    Made by :func:`_completed` with no ``__init__`` (a Python-level one costs a
    quarter of a passthrough read): its one slot is ``_result``; the others are
    constants of the class, since it never changes.
    """

    __slots__ = ()
    _done = True
    _error = None
    _collect = None

    def result(self, timeout: float | None = 60.0) -> bytes | None:
        """The bytes of a READ, None for a WRITE (never waits)."""
        return self._result

    def _wait(self, timeout: float | None) -> None:
        return None


_new = object.__new__


def _completed(result: bytes | None) -> BlkFuture:
    future = _new(_Completed)
    future._result = result
    return future


def last_sectors(sectors: int) -> dict[int, int]:
    """For each size a READ or WRITE may have (whole sectors, up to MAX_IO_BYTES): the last sector it may start at.

    :func:`~xenlike.public.vdisk.check_request`'s rules for a READ or WRITE as one
    dict lookup and one comparison a request: a size that is no key is refused, and
    so is a start past its value (negative for a size larger than the disk).
    """
    return {n: sectors - n // SECTOR_SIZE for n in range(SECTOR_SIZE, MAX_IO_BYTES + 1, SECTOR_SIZE)}


class PassthroughDisk(LocalDisk):
    """A disk the guest drives itself on its image's fd (``model=passthrough``)."""

    model = MODEL_PASSTHROUGH

    def __init__(self, kernel: GuestKernel, vdev: str, devid: int, sectors: int, readonly: bool, fd: int) -> None:
        super().__init__(kernel, vdev, devid, sectors, readonly)
        self.fd = fd
        self._last_sector = last_sectors(sectors)

    # A lone READ or WRITE goes straight to pread/pwrite from the caller's bytes: one copy, as
    # native I/O, and nothing else per request but its checks and a completed future. Batches,
    # buffers and anything the checks refuse go through the shared path (guest pages,
    # preadv/pwritev, blkback's words for the refusal).

    def submit_read(self, sector: int, nbytes: int) -> BlkFuture:
        """Read ``nbytes`` from ``sector``: one ``pread`` into new bytes; the (completed) future gives them."""
        last = self._last_sector.get(nbytes)  # None unless whole sectors, 1..MAX_IO_BYTES
        if last is not None and 0 <= sector <= last:
            try:
                data = os.pread(self.fd, nbytes, sector * SECTOR_SIZE)
            except OSError as exc:
                return self._failed(BLKIF_OP_READ, sector, exc)
            if len(data) == nbytes:
                future = _new(_Completed)  # inline: a call of _completed() would cost a tenth of the request
                future._result = data
                return future
            return self._failed(BLKIF_OP_READ, sector, f"short read: {len(data)} of {nbytes} bytes")
        return super().submit_read(sector, nbytes)

    def submit_write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Write ``data`` at ``sector`` with one ``pwrite``; the future completes once it is in the image."""
        nbytes = len(data) if type(data) is bytes else memoryview(data).nbytes
        last = self._last_sector.get(nbytes)
        if last is not None and 0 <= sector <= last and not self.readonly:
            try:
                done = os.pwrite(self.fd, data, sector * SECTOR_SIZE)
            except OSError as exc:
                return self._failed(BLKIF_OP_WRITE, sector, exc)
            if done == nbytes:
                return _completed(None)
            return self._failed(BLKIF_OP_WRITE, sector, f"short write: {done} of {nbytes} bytes")
        return super().submit_write(sector, data)

    def _failed(self, op: int, sector: int, why: object) -> BlkFuture:
        log.warning("d%d %s: request failed: %s", self.kernel.domid, self.vdev, why)
        future = BlkFuture()
        future.set(error=self._error(Request(op, sector), BLKIF_RSP_ERROR))
        return future

    def batch(self) -> LocalBatch:
        """Requests served in queue order on submit, each READ or WRITE from the caller's bytes (:class:`_Batch`)."""
        return _Batch(self)

    def _run(self, requests: list[Request]) -> list[int]:
        return [self._serve(request) for request in requests]

    def _serve_bytes(self, request: Request, data: memoryview | None) -> tuple[int, bytes | None]:
        """A READ into new bytes (``data`` None) or a WRITE of ``data``: one pread/pwrite; status and bytes read."""
        offset = request.sector * SECTOR_SIZE
        try:
            if data is None:
                got = os.pread(self.fd, request.nbytes, offset)
                done, result = len(got), got
            else:
                done, result = os.pwrite(self.fd, data, offset), None
        except OSError as exc:
            log.warning("d%d %s: request failed: %s", self.kernel.domid, self.vdev, exc)
            return BLKIF_RSP_ERROR, None
        if done != request.nbytes:
            log.warning("d%d %s: short I/O: %d of %d bytes", self.kernel.domid, self.vdev, done, request.nbytes)
            return BLKIF_RSP_ERROR, None
        return BLKIF_RSP_OKAY, result

    def _serve(self, request: Request) -> int:
        try:
            if request.op == BLKIF_OP_FLUSH_DISKCACHE:
                os.fdatasync(self.fd)
            elif request.op == BLKIF_OP_DISCARD:
                punch_hole(self.fd, request.sector * SECTOR_SIZE, request.nr_sectors * SECTOR_SIZE)
            else:
                view = self._pages.view(request.pfn, request.nbytes)
                try:
                    if request.op == BLKIF_OP_WRITE:
                        done = os.pwritev(self.fd, [view], request.sector * SECTOR_SIZE)
                    else:
                        done = os.preadv(self.fd, [view], request.sector * SECTOR_SIZE)
                finally:
                    view.release()
                if done != request.nbytes:
                    log.warning("d%d %s: short I/O: %d of %d bytes", self.kernel.domid, self.vdev, done, request.nbytes)
                    return BLKIF_RSP_ERROR
            return BLKIF_RSP_OKAY
        except OSError as exc:
            log.warning("d%d %s: request failed: %s", self.kernel.domid, self.vdev, exc)
            return BLKIF_RSP_ERROR


class _Batch(LocalBatch):
    """A passthrough disk's batch: no guest pages between the caller's bytes and the image.

    On :meth:`submit` each request queued is checked (:func:`~xenlike.public.vdisk.check_request`)
    and served in queue order: a READ is one ``pread`` into new bytes, a WRITE one
    ``pwrite`` of the caller's data, as a lone request is; a buffer's request, a
    FLUSH and a DISCARD as the shared path serves them.
    """

    disk: PassthroughDisk

    def read(self, sector: int, nbytes: int) -> BlkFuture:
        """Queue a READ; the future gives bytes."""
        if nbytes in self.disk._last_sector:  # whole sectors, one request: nothing to split or refuse yet
            return self._queue(Request(BLKIF_OP_READ, sector, nbytes), None, False)
        return super().read(sector, nbytes)

    def submit(self) -> None:
        """Serve everything queued since the last submit, in order; each future is complete when this returns."""
        queued, self._queued, self._latch = self._queued, [], None
        disk = self.disk
        last_sector, readonly = disk._last_sector, disk.readonly
        done = 0
        try:
            for request, future, data, lent in queued:
                done += 1
                op = request.op
                if op == BLKIF_OP_READ or (op == BLKIF_OP_WRITE and not readonly):
                    last = last_sector.get(request.nbytes, -1)
                    reason = None if 0 <= request.sector <= last else disk._refusal(request)
                else:
                    reason = disk._refusal(request)
                if reason is not None:
                    log.warning("d%d %s: request refused: %s", disk.kernel.domid, disk.vdev, reason)
                    future.set(error=disk._error(request, BLKIF_RSP_ERROR))
                    continue
                if lent or op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
                    status, result = disk._serve(request), None
                else:
                    status, result = disk._serve_bytes(request, data)
                if status == BLKIF_RSP_OKAY:
                    future.set(result)
                else:
                    future.set(error=disk._error(request, status))
        except BaseException as exc:
            for _request, future, _data, _lent in queued[done - 1 :]:
                future.set(error=BlockIOError(f"{disk.vdev}: {exc}"))
            raise
