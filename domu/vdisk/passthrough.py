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
    BLKIF_OP_WRITE,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    SECTOR_SIZE,
)
from xenlike.public.vdisk import MODEL_PASSTHROUGH

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
