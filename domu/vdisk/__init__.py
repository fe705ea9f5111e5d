"""Disks outside the split driver: the hypervisor-direct and passthrough device models (``xenlike.public.vdisk``).

At boot the kernel asks the hypervisor for its disks of those models
(``vdisk_op list``, :func:`attach_vdisks`) and puts them in ``ctx.disks`` beside
blkfront's, with the same API:

- :mod:`.disk`: what both share (:class:`LocalDisk`, its batch and buffers);
- :mod:`.direct`: :class:`DirectDisk`, each request a hypercall;
- :mod:`.passthrough`: :class:`PassthroughDisk`, I/O on the image's own fd.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from xenlike.public.vdisk import MODEL_DIRECT, MODEL_PASSTHROUGH

from .direct import DirectDisk
from .disk import LocalDisk
from .passthrough import PassthroughDisk

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["DirectDisk", "LocalDisk", "PassthroughDisk", "attach_vdisks"]

log = logging.getLogger("domu.vdisk")


def attach_vdisks(kernel: GuestKernel) -> dict[str, LocalDisk]:
    """The domain's direct and passthrough disks, by vdev (``vdisk_op list``)."""
    result, fds = kernel.hypercall.call("vdisk_op", cmd="list")
    disks: dict[str, LocalDisk] = {}
    used: set[int] = set()
    for entry in result["disks"]:
        vdev, devid, sectors, readonly = entry["vdev"], entry["devid"], entry["sectors"], entry["readonly"]
        disk: LocalDisk
        if entry["model"] == MODEL_PASSTHROUGH:
            used.add(entry["fd"])
            disk = PassthroughDisk(kernel, vdev, devid, sectors, readonly, fds[entry["fd"]])
        elif entry["model"] == MODEL_DIRECT:
            disk = DirectDisk(kernel, vdev, devid, sectors, readonly)
        else:
            continue
        disks[vdev] = disk
        log.info("%s: %d MiB%s, %s", vdev, disk.size >> 20, " read-only" if readonly else "", disk.model)
    for index, fd in enumerate(fds):
        if index not in used:
            os.close(fd)
    return disks
