"""Direct and passthrough disks coming and going while the guest runs (``xl block-attach``/``block-detach``).

A disk outside xenbus has no device directory to appear in: dom0 bumps
:data:`~xenlike.public.vdisk.VDISKS_NODE` in the guest's home after the
hypervisor took or gave back an image (as an emulated device model raises a
hotplug interrupt), and the guest lists its disks again (``vdisk_op list``): a
disk it did not have joins ``ctx.disks``, one the hypervisor no longer lists
leaves it and is closed. The node's value means nothing: what the guest has is
the hypervisor's to say. The listing runs on a thread of its own, started at the
first watch event that finds the node (or a disk to follow): the watch fires on
the event loop, which must not block on a hypercall.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from xenlike.public.vdisk import VDISKS_NODE
from xenlike.public.xs_wire import XsdSockmsgType as XS

from ..workqueue import Work
from .disk import LocalDisk

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel

__all__ = ["VdiskHotplug"]

log = logging.getLogger("domu.vdisk")


class VdiskHotplug:
    """Keeps ``disks`` (``ctx.disks``, shared with blkfront) holding the domain's direct and passthrough disks."""

    def __init__(self, kernel: GuestKernel, disks: MutableMapping[str, Any]) -> None:
        self.kernel = kernel
        self.disks = disks
        self.mine: dict[int, LocalDisk] = {}  # by devid: the disks this keeps in ``disks``
        self._work = Work(self.follow, "vdisk-hotplug", "direct/passthrough disk hotplug failed", kernel.label, log)
        self._lock = threading.Lock()

    def start(self) -> None:
        """Before the workload: the watch, then the disks the domain has now (a change in between is seen twice)."""
        self.kernel.xenbus.watch_async(VDISKS_NODE, "vdisk-hotplug", self._on_event)
        self.follow()

    def _on_event(self, path: str, token: str) -> None:
        """The watch (loop thread): once there is anything to follow (a guest never given such a disk starts no
        thread), hand the listing to the hotplug thread, which may block on the hypercall."""

        def read(msg_type: int, payload: bytes) -> None:
            if msg_type != XS.ERROR or self.mine:
                self._work.schedule()

        self.kernel.xenbus.request_async(XS.READ, f"{VDISKS_NODE}\0".encode(), read)

    def follow(self) -> None:
        """List the domain's disks and make ``disks`` match: new ones added, gone ones removed and closed."""
        from . import attach_vdisks

        with self._lock:
            listed = attach_vdisks(self.kernel, keep=set(self.mine))
            for devid in [devid for devid in self.mine if devid not in listed.present]:
                disk = self.mine.pop(devid)
                if self.disks.get(disk.vdev) is disk:
                    del self.disks[disk.vdev]
                disk.close()
                log.info("%s: %s (%s) unplugged", self.kernel.label, disk.vdev, disk.model)
            for disk in listed.new:
                self.mine[disk.devid] = disk
                self.disks[disk.vdev] = disk
