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

from ..blkfront.blkfront import BlkFuture
from .disk import LocalDisk, Request, log

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["PassthroughDisk"]


class PassthroughDisk(LocalDisk):
    """A disk the guest drives itself on its image's fd (``model=passthrough``)."""

    model = MODEL_PASSTHROUGH

    def __init__(self, kernel: GuestKernel, vdev: str, devid: int, sectors: int, readonly: bool, fd: int) -> None:
        super().__init__(kernel, vdev, devid, sectors, readonly)
        self.fd = fd

    # A lone READ or WRITE goes straight to pread/pwrite from the caller's bytes: one copy, as
    # native I/O; batches and buffers go through the shared path (guest pages, preadv/pwritev).

    def submit_read(self, sector: int, nbytes: int) -> BlkFuture:
        """Read ``nbytes`` from ``sector``: one ``pread`` into new bytes; the (completed) future gives them."""
        if not 0 < nbytes <= MAX_IO_BYTES:
            return super().submit_read(sector, nbytes)
        return self._direct(self._checked(BLKIF_OP_READ, sector, nbytes), None)

    def submit_write(self, sector: int, data: bytes | bytearray | memoryview) -> BlkFuture:
        """Write ``data`` at ``sector`` with one ``pwrite``; the future completes once it is in the image."""
        view = memoryview(data).cast("B")
        if not 0 < len(view) <= MAX_IO_BYTES:
            return super().submit_write(sector, data)
        return self._direct(self._checked(BLKIF_OP_WRITE, sector, len(view)), view)

    def _direct(self, request: Request, data: memoryview | None) -> BlkFuture:
        future = BlkFuture()
        reason = self._refusal(request)
        if reason is not None:
            log.warning("d%d %s: request refused: %s", self.kernel.domid, self.vdev, reason)
            future.set(error=self._error(request, BLKIF_RSP_ERROR))
            return future
        offset = request.sector * SECTOR_SIZE
        try:
            result: bytes | None = None
            if data is None:
                result = os.pread(self.fd, request.nbytes, offset)
                done = len(result)
            else:
                done = os.pwrite(self.fd, data, offset)
        except OSError as exc:
            log.warning("d%d %s: request failed: %s", self.kernel.domid, self.vdev, exc)
            future.set(error=self._error(request, BLKIF_RSP_ERROR))
            return future
        if done != request.nbytes:
            future.set(error=self._error(request, BLKIF_RSP_ERROR))
        else:
            future.set(result)
        return future

    def _run(self, requests: list[Request]) -> list[int]:
        return [self._serve(request) for request in requests]

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
