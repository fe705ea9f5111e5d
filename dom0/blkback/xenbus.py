"""blkback's xenbus driver (Linux ``drivers/block/xen-blkback/xenbus.c``).

The bus (``dom0.xenbus_backend``) watches, probes and runs the states; this
driver says what a vbd is:

- probe (``xen_blkbk_probe`` + ``xen_vbd_create``): open the image named by
  ``params`` and publish its geometry and the ``feature-*`` keys of
  ``xenlike.public.blkif``;
- connect (``connect_ring``): read the front end's ring refs, ring order,
  event channel, protocol and ``feature-persistent``, bind the event channel and
  start the device's worker over :func:`~dom0.blkback.blkback.blkif_data_path`;
- remove: close the image.

A worker that dies is restarted (``restarts``): the bus connects a new one to
the front end's new ring. The ``sector-eio`` ranges injected on a device
(:meth:`BlkbackDriver.fail_sectors`) are kept here, so a new worker starts with them.
"""

from __future__ import annotations

import logging
import os

from xenlike.public import blkif
from xenlike.public.blkif import SECTOR_SIZE, VDISK_CDROM, VDISK_READONLY, XEN_IO_PROTO_ABI_NATIVE

from ..backend_worker import WorkerSpec
from ..xenbus_backend import BackendError, XenbusBackend, XenbusDevice
from .blkback import MAX_INDIRECT_SEGMENTS, MAX_RING_PAGE_ORDER, blkif_data_path
from .vbd import Vbd, open_image

__all__ = ["BlkbackDriver"]

log = logging.getLogger("dom0.blkback")


class BlkbackDriver:
    """The vbd back-end driver (``xen_blkbk_driver``); ``dev.drvdata`` is the device's :class:`Vbd`."""

    devicetype = blkif.DEVICE_TYPE
    restarts = True  # blkfront reconnects and re-issues what was in flight (blkif_recover)

    def __init__(self) -> None:
        self.failing: dict[tuple[str, int, int], dict[int, tuple[int, int]]] = {}  # sector-eio: dev -> id -> range

    def fail_sectors(self, dev: XenbusDevice, fault_id: int, sectors: tuple[int, int] | None) -> int | None:
        """Fail ``sectors`` (inclusive) under ``fault_id``, or lift that fault (None).

        Returns the number of the worker's stats answer after which it is in force
        (see :meth:`WorkerHandle.inject`), None with no worker running.
        """
        ranges = self.failing.setdefault(dev.key, {})
        if sectors is None:
            ranges.pop(fault_id, None)
        else:
            ranges[fault_id] = sectors
        if dev.worker is None:
            return None
        return dev.worker.inject({"sector_eio": [list(r) for r in ranges.values()]})

    def probe(self, bus: XenbusBackend, dev: XenbusDevice) -> dict[str, str]:
        params = bus.read(dev.nodename, blkif.PARAMS) or ""
        readonly = bus.read(dev.nodename, blkif.MODE) == "r"
        cdrom = bus.read(dev.nodename, blkif.DEVICE_TYPE_KEY) == "cdrom"
        discard = not readonly and bus.read(dev.nodename, blkif.DISCARD_ENABLE) != "0"
        vbd = dev.drvdata = open_image(params, readonly)
        log.info("%s: %s (%d sectors%s)", dev.label, params, vbd.sectors, ", read-only" if readonly else "")
        return {
            blkif.FEATURE_FLUSH_CACHE: "1",
            blkif.FEATURE_DISCARD: "1" if discard else "0",
            blkif.DISCARD_GRANULARITY: str(SECTOR_SIZE * blkif.SECTORS_PER_PAGE),
            blkif.DISCARD_ALIGNMENT: "0",
            blkif.DISCARD_SECURE: "0",
            blkif.FEATURE_BARRIER: "0",
            blkif.FEATURE_PERSISTENT: "1",
            blkif.FEATURE_MAX_INDIRECT_SEGMENTS: str(MAX_INDIRECT_SEGMENTS),
            blkif.MAX_RING_PAGE_ORDER_KEY: str(MAX_RING_PAGE_ORDER),
            blkif.SECTORS: str(vbd.sectors),
            blkif.SECTOR_SIZE_KEY: str(SECTOR_SIZE),
            blkif.PHYSICAL_SECTOR_SIZE: str(SECTOR_SIZE),
            blkif.INFO: str((VDISK_READONLY if readonly else 0) | (VDISK_CDROM if cdrom else 0)),
        }

    def connect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        protocol = bus.read_otherend(dev, blkif.PROTOCOL, XEN_IO_PROTO_ABI_NATIVE)
        if protocol != XEN_IO_PROTO_ABI_NATIVE:
            raise BackendError(f"protocol {protocol!r} is not {XEN_IO_PROTO_ABI_NATIVE}")
        ring_refs = bus.read_ring_refs(dev, MAX_RING_PAGE_ORDER)
        remote_port = bus.read_otherend_int(dev, blkif.EVENT_CHANNEL)
        vbd: Vbd = dev.drvdata
        port, port_fds = bus.bind_evtchn(dev, remote_port)
        vdev = bus.read(dev.nodename, blkif.DEV) or str(dev.devid)
        bus.start_worker(
            dev,
            WorkerSpec(
                label=f"d{dev.frontend_id} ({dev.name}) {vdev}",
                process_name=f"xl-blk-{dev.frontend_id}-{vdev}",
                frontend_id=dev.frontend_id,
                data_path=blkif_data_path,
                ports=[(port, port_fds)],
                fds={"image": os.dup(vbd.fd)},
                params={
                    "ring_refs": ring_refs,
                    "persistent": bus.read_otherend(dev, blkif.FEATURE_PERSISTENT) == "1",
                    "path": vbd.path,
                    "sectors": vbd.sectors,
                    "readonly": vbd.readonly,
                    "sector_eio": [list(r) for r in self.failing.get(dev.key, {}).values()],
                },
            ),
        )

    def disconnect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        """Nothing of the image goes with the ring: a front end may connect again."""

    def remove(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        self.failing.pop(dev.key, None)
        if dev.drvdata is not None:
            dev.drvdata.close()
            dev.drvdata = None
