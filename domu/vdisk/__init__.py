"""Disks outside the split driver: the hypervisor-direct and passthrough device models (``xenlike.public.vdisk``).

At boot, and again whenever dom0 says they changed, the kernel asks the
hypervisor for its disks of those models (``vdisk_op list``, :func:`attach_vdisks`)
and keeps them in ``ctx.disks`` beside blkfront's, with the same API:

- :mod:`.disk`: what both share (:class:`LocalDisk`, its batch and buffers);
- :mod:`.direct`: :class:`DirectDisk`, each request a hypercall;
- :mod:`.passthrough`: :class:`PassthroughDisk`, I/O on the image's own fd;
- :mod:`.hotplug`: :class:`VdiskHotplug`, disks given or taken back while the guest runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenlike.public.vdisk import MODEL_DIRECT, MODEL_PASSTHROUGH

from .direct import DirectDisk
from .disk import LocalDisk
from .hotplug import VdiskHotplug
from .passthrough import PassthroughDisk

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["DirectDisk", "LocalDisk", "PassthroughDisk", "VdiskHotplug", "attach_vdisks"]

log = logging.getLogger("domu.vdisk")


@dataclass
class Listed:
    """What :func:`attach_vdisks` found: the disks new to the caller, and every devid the hypervisor lists."""

    new: list[LocalDisk]
    present: set[int]


def attach_vdisks(kernel: GuestKernel, keep: set[int] | frozenset[int] = frozenset()) -> Listed:
    """The domain's direct and passthrough disks (``vdisk_op list``): those not in ``keep`` (devids) opened."""
    result, fds = kernel.hypercall.call("vdisk_op", cmd="list")
    listed = Listed([], set())
    used: set[int] = set()
    for entry in result["disks"]:
        vdev, devid, sectors, readonly = entry["vdev"], entry["devid"], entry["sectors"], entry["readonly"]
        listed.present.add(devid)
        if devid in keep:
            continue
        disk: LocalDisk
        if entry["model"] == MODEL_PASSTHROUGH:
            used.add(entry["fd"])
            disk = PassthroughDisk(kernel, vdev, devid, sectors, readonly, fds[entry["fd"]])
        elif entry["model"] == MODEL_DIRECT:
            disk = DirectDisk(kernel, vdev, devid, sectors, readonly)
        else:
            continue
        listed.new.append(disk)
        log.info(
            "%s: %s: %d MiB%s, %s", kernel.label, vdev, disk.size >> 20, " read-only" if readonly else "", disk.model
        )
    for index, fd in enumerate(fds):
        if index not in used:
            os.close(fd)  # a disk the caller has already, or one it cannot use
    return listed
