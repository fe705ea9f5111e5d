"""blkfront's xenbus driver (Linux ``drivers/block/xen-blkfront.c``: ``blkfront_probe``,
``talk_to_blkback``, ``blkfront_connect``, ``blkfront_closing``).

The front-end bus (``domu.xenbus_frontend``) finds the devices and runs the
states; this driver says what a vbd is:

- probe: a :class:`BlockDevice` named by the back end's ``dev``;
- connect (``talk_to_blkback``): read the back end's ``max-ring-page-order``,
  ``feature-persistent`` and ``feature-max-indirect-segments``, have the device
  set up its ring, event channel and grant pool, and publish ``ring-ref`` (or
  ``ring-page-order`` and ``ring-refN``), ``event-channel``, ``protocol`` and
  ``feature-persistent`` (the keys of ``xenlike.public.blkif``);
- connected (``blkfront_connect``): read ``sectors`` and ``info``; the disk is
  then in ``ctx.disks``;
- closing: fail what is in flight and leave ``ctx.disks``; remove: give the
  ring's and the pool's grants back;
- suspend: hold new requests and wait for those in flight to be answered, so
  every write acknowledged before a save is in the image; resume: go on;
- reconnect (the back end restarted, ``blkfront_resume``): hold new requests and
  let go of the old ring, keeping what is in flight; the bus then runs connect
  again (a new ring and event channel; the grant pool stays) and, on connected,
  the requests in flight are issued again in order (``blkif_recover``).
"""

from __future__ import annotations

import logging
import threading

from xenlike.public import blkif
from xenlike.public.blkif import VDISK_READONLY, XEN_IO_PROTO_ABI_NATIVE

from ..xenbus_frontend import HANDSHAKE_TIMEOUT_S, FrontDevice, XenbusFrontend
from .blkfront import MAX_RING_PAGE_ORDER, BlockDevice

__all__ = ["BlkfrontDriver"]

log = logging.getLogger("domu.blkfront")


class BlkfrontDriver:
    """The vbd front-end driver (``blkfront``); ``dev.drvdata`` is the device's :class:`BlockDevice`."""

    devicetype = blkif.DEVICE_TYPE

    def __init__(self) -> None:
        self.disks: dict[str, BlockDevice] = {}  # what ctx.disks holds, by vdev: the connected ones
        self._connected = threading.Condition()

    def wait_for(self, vdevs: list[str], timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        """Block until these disks are connected (the kernel waits for its boot disks)."""
        with self._connected:
            self._connected.wait_for(lambda: all(v in self.disks for v in vdevs), timeout)

    def probe(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        dev.drvdata = BlockDevice(bus, dev, bus.read_otherend(dev, blkif.DEV) or str(dev.devid))

    def connect(self, bus: XenbusFrontend, dev: FrontDevice) -> dict[str, str]:
        device: BlockDevice = dev.drvdata
        order = min(bus.read_otherend_int(dev, blkif.MAX_RING_PAGE_ORDER_KEY), MAX_RING_PAGE_ORDER)
        device.persistent = bus.read_otherend(dev, blkif.FEATURE_PERSISTENT) == "1"
        ring_refs, port = device.setup_ring(order)
        device.setup_pool(bus.read_otherend_int(dev, blkif.FEATURE_MAX_INDIRECT_SEGMENTS))
        if order == 0:
            nodes = {blkif.RING_REF: str(ring_refs[0])}
        else:
            nodes = {
                blkif.RING_PAGE_ORDER: str(order),
                **{f"{blkif.RING_REF}{i}": str(gref) for i, gref in enumerate(ring_refs)},
            }
        return {
            **nodes,
            blkif.EVENT_CHANNEL: str(port),
            blkif.PROTOCOL: XEN_IO_PROTO_ABI_NATIVE,
            blkif.FEATURE_PERSISTENT: "1",
        }

    def connected(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        device: BlockDevice = dev.drvdata
        device.sectors = bus.read_otherend_int(dev, blkif.SECTORS)
        device.readonly = bool(bus.read_otherend_int(dev, blkif.INFO) & VDISK_READONLY)
        if device.recovering:
            device.recover()
        with self._connected:
            self.disks[device.vdev] = device
            self._connected.notify_all()
        # The guest's log lines carry its domain already (the kernel's logging format).
        log.info("%s: %d MiB%s", device.vdev, device.size >> 20, " read-only" if device.readonly else "")

    def closing(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        device: BlockDevice = dev.drvdata
        device.stop_io()
        with self._connected:
            if self.disks.get(device.vdev) is device:
                del self.disks[device.vdev]

    def suspend(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        device: BlockDevice = dev.drvdata
        device.quiesce(bus.timeout)

    def resume(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        device: BlockDevice = dev.drvdata
        device.unquiesce()

    def reconnect(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        device: BlockDevice = dev.drvdata
        device.hold_for_reconnect()

    def remove(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        device: BlockDevice = dev.drvdata
        device.teardown_ring()
        log.info("%s: detached", device.vdev)
