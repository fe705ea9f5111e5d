"""Disks outside the split driver: the hypervisor-direct and passthrough device models (the ABI).

A disk spec's ``model=`` says how a guest reaches its disk (see DESIGN.md, "Device models"):

- ``split`` (the default): blkfront and blkback over a shared ring (:mod:`xenlike.public.blkif`);
- ``direct``: every request is a ``vdisk_io`` hypercall, served by the hypervisor
  itself, which copies between the image and the guest's frames (trap and
  emulate, as a VMM-resident device model such as QEMU's in a hosted VMM);
- ``passthrough``: the guest is handed the image's fd and does its own
  ``preadv``/``pwritev`` (the VMM out of the path, as a device assigned with
  VT-d); such a disk cannot be shared with another domain, hot-unplugged safely
  (the guest may still hold the fd) or migrated (the fd is this host's).

Hypercalls (``xenlike.hypervisor.vdisk``):

- ``domctl assign_vdisk`` (dom0): ``dom``, ``vdev``, ``devid``, ``model``,
  ``sectors``, ``readonly`` and the image's fd (opened read-only for a read-only
  disk): the disk is the domain's from then on, until it is destroyed;
  dom0 may assign one to a running domain (``xl block-attach``); a writable
  passthrough image then raises the guest's ``RLIMIT_FSIZE`` to its size;
- ``domctl deassign_vdisk`` (dom0): ``dom``, ``devid``: a direct disk goes back
  (``xl block-detach``); a passthrough disk is refused with EBUSY;
- ``vdisk_op`` ``cmd="list"`` (a domU): its disks, each a dict of :data:`DISK_FIELDS`;
  a passthrough disk's ``fd`` is the index of its image's fd among the reply's fds;
- ``vdisk_io`` (a domU, direct disks): ``devid``, ``operation`` (``BLKIF_OP_READ``,
  ``_WRITE``, ``_FLUSH_DISKCACHE``, ``_DISCARD``), ``sector``, and for READ and
  WRITE ``nbytes`` at guest frame ``pfn`` onwards (contiguous frames), for
  DISCARD ``nr_sectors``. The reply is ``{"status": BLKIF_RSP_*}``, what blkback
  would have answered: a request refused by :func:`check_request` gets
  ``BLKIF_RSP_ERROR`` (``BLKIF_RSP_EOPNOTSUPP`` for an unknown op). A write is
  acknowledged once it is in the image; FLUSH is ``fdatasync``.

Hotplug: after each assign or deassign on a running domain dom0 writes
:data:`VDISKS_NODE` in the domain's home (a count, dom0's, the guest may read it);
the guest watches it and lists its disks again, adding what is new to its disks
and dropping what is gone. The node says only "look again": what a guest has is
the hypervisor's to say.

Every model makes the same checks on every request (:func:`check_request`), with
blkback's words: in the front end for passthrough (the guest's kernel is the
driver; the image's fd and the jail are the bounds it cannot cross), in the
hypervisor for direct, in blkback for split.
"""

from __future__ import annotations

from xenlike.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    SECTOR_SIZE,
)
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "MODEL_SPLIT",
    "MODEL_DIRECT",
    "MODEL_PASSTHROUGH",
    "MODELS",
    "MAX_IO_BYTES",
    "DISK_FIELDS",
    "VDISKS_NODE",
    "check_request",
    "model_limits",
]

MODEL_SPLIT, MODEL_DIRECT, MODEL_PASSTHROUGH = "split", "direct", "passthrough"
MODELS = (MODEL_SPLIT, MODEL_DIRECT, MODEL_PASSTHROUGH)
# The largest READ or WRITE one request carries: blkback's feature-max-indirect-segments pages.
MAX_IO_BYTES = 256 * PAGE_SIZE
DISK_FIELDS = ("vdev", "devid", "model", "sectors", "readonly")
VDISKS_NODE = "vdisks"  # in the domain's home: bumped by dom0 when its direct or passthrough disks change

_KNOWN_OPS = (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD)


def check_request(op: int, sector: int, nr_sectors: int, sectors: int, readonly: bool) -> str | None:
    """Why a request on a disk of ``sectors`` sectors is refused, in blkback's words; None if it is not.

    ``nr_sectors`` is what a READ, WRITE or DISCARD covers (0 for FLUSH). Arguments
    are ints (the caller checked their types).
    """
    if op not in _KNOWN_OPS:
        return f"unknown operation {op}"
    if op == BLKIF_OP_FLUSH_DISKCACHE:
        return None
    if readonly and op == BLKIF_OP_WRITE:
        return "write to a read-only device"
    if readonly and op == BLKIF_OP_DISCARD:
        return "discard on a read-only device"
    if op != BLKIF_OP_DISCARD and not 0 < nr_sectors * SECTOR_SIZE <= MAX_IO_BYTES:
        return f"{nr_sectors} sectors is not 1..{MAX_IO_BYTES // SECTOR_SIZE}"
    if sector < 0 or nr_sectors <= 0 or sector + nr_sectors > sectors:
        return f"sectors {sector}..{sector + nr_sectors - 1} are past the end ({sectors} sectors)"
    return None


def model_limits(model: str) -> dict[str, bool]:
    """What a disk of ``model`` allows (``list -l``, ``block-list``): ``shareable``, ``hot_unplug``, ``migratable``.

    A passthrough disk allows none of them: the guest holds the image's fd, which
    this host opened and no one can take back. A direct disk allows all three:
    the hypervisor holds its fd and serves every request, so it can stop between
    two and let go; nothing of it lives in the guest.
    """
    passthrough = model == MODEL_PASSTHROUGH
    return {"shareable": not passthrough, "hot_unplug": not passthrough, "migratable": not passthrough}
