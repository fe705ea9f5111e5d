"""Disks the hypervisor holds: the direct and passthrough device models (``xenlike.public.vdisk``).

dom0 opens a direct or passthrough disk's image, as it does a split one's, and
gives the fd to the hypervisor (``domctl assign_vdisk``), which keeps it with the
domain until it is destroyed. A passthrough guest asks for its fd once
(``vdisk_op list``) and does its own I/O; the hypervisor is out of its path. A
direct guest makes every request a ``vdisk_io`` hypercall: the hypervisor checks
it as blkback would (:func:`xenlike.public.vdisk.check_request`, and that the
frames are the caller's), then moves the data between the image and the guest's
frames with one ``preadv``/``pwritev`` straight into its own mapping of the
guest's memory. Requests are served one at a time on the hypervisor's loop, as a
VMM-resident device model serialises behind its VMM, and every domain's
hypercalls wait behind a slow one: the price of this model.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.kernel.image import punch_hole
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
from xenlike.public.vdisk import MODEL_DIRECT, MODEL_PASSTHROUGH, check_request
from xenlike.public.xen import PAGE_SIZE

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor
    from xenlike.hypervisor.domain import Domain

__all__ = [
    "VirtualDisk",
    "assign_vdisk",
    "deassign_vdisk",
    "vdisk_list",
    "vdisk_io",
    "passthrough_size_limit",
    "release_vdisks",
]

log = logging.getLogger("xenlike.hypervisor.vdisk")


@dataclass
class VirtualDisk:
    """A disk the hypervisor holds for a domain: its image's fd and geometry."""

    vdev: str
    devid: int
    model: str
    fd: int
    sectors: int
    readonly: bool
    # blkback's counters, for the same columns
    stats: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "errors": 0, "read_sectors": 0, "write_sectors": 0}
    )

    def describe(self) -> dict[str, Any]:
        return {
            "vdev": self.vdev,
            "devid": self.devid,
            "model": self.model,
            "sectors": self.sectors,
            "readonly": self.readonly,
        }

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _int(args: dict, name: str) -> int:
    value = args[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise Refused(errno.EINVAL, f"{name} must be an integer, not {value!r}")
    return value


def assign_vdisk(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``domctl assign_vdisk``: dom0 gives a domain a direct or passthrough disk (the image's fd)."""
    domain = hv.domain(_int(args, "dom"))
    model, vdev, devid = args["model"], str(args["vdev"]), _int(args, "devid")
    sectors, readonly = _int(args, "sectors"), bool(args["readonly"])
    if model not in (MODEL_DIRECT, MODEL_PASSTHROUGH):
        raise Refused(errno.EINVAL, f"model {model!r} is not {MODEL_DIRECT} or {MODEL_PASSTHROUGH}")
    if len(fds) != 1:
        raise Refused(errno.EINVAL, f"assign_vdisk carries the image's fd alone, not {len(fds)} fds")
    if devid in domain.vdisks:
        raise Refused(errno.EEXIST, f"{domain.label} already has disk {devid}")
    size = os.fstat(fds[0]).st_size
    if sectors <= 0 or sectors * SECTOR_SIZE > size:
        raise Refused(errno.EINVAL, f"{sectors} sectors do not fit the {size}-byte image")
    writable = fcntl.fcntl(fds[0], fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
    if readonly == writable:
        what = "read-only disk's image must be opened read-only" if readonly else "writable disk's image is read-only"
        raise Refused(errno.EINVAL, f"a {what}")
    if any(disk.vdev == vdev for disk in domain.vdisks.values()):
        raise Refused(errno.EEXIST, f"{domain.label} already has a disk {vdev}")
    if model == MODEL_PASSTHROUGH and not readonly and domain.pid is not None:
        _allow_writes_up_to(domain, size)
    domain.vdisks[devid] = VirtualDisk(vdev, devid, model, os.dup(fds[0]), sectors, readonly)
    running = " (hotplugged)" if domain.pid is not None else ""
    ro = ", read-only" if readonly else ""
    log.info("%s: %s %s (%d sectors%s)%s", domain.label, model, vdev, sectors, ro, running)
    return {}, []


def _allow_writes_up_to(domain: Domain, size: int) -> None:
    """A passthrough disk hotplugged into a running guest: raise its ``RLIMIT_FSIZE`` to the image's size.

    The limit was set at boot to the largest writable passthrough image it had (0
    without one) and is raised by each hotplug that needs it, so it is always
    :func:`passthrough_size_limit` of the disks it has; without a raise this image's
    writes past it would fail with EFBIG. Only the
    guest's kernel process needs it: the image's fd reaches that process alone, and
    vCPUs forked later inherit both. Raising a hard limit needs ``CAP_SYS_RESOURCE``
    (which a container's root often lacks): without it the disk is refused.
    """
    assert domain.pid is not None
    limit = passthrough_size_limit(domain)  # what it was set to, or raised to by a hotplug before
    if size <= limit:
        return
    try:
        resource.prlimit(domain.pid, resource.RLIMIT_FSIZE, (size, size))
    except (OSError, ValueError) as exc:
        why = "the hypervisor lacks CAP_SYS_RESOURCE" if getattr(exc, "errno", None) == errno.EPERM else str(exc)
        raise Refused(
            errno.EPERM,
            f"the {size}-byte image is larger than {domain.label} may write (RLIMIT_FSIZE, set at boot to its "
            f"largest passthrough image: {limit} bytes) and it cannot be raised ({why}); give the disk when the "
            "domain is created, hotplug it read-only or no larger, or use model=direct",
        ) from None


def deassign_vdisk(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``domctl deassign_vdisk``: take a direct disk back from a running domain (``xl block-detach``).

    Its requests are served one at a time on this loop, so none is half done: the
    next one is refused (ENODEV) and every one acknowledged is in the image. A
    passthrough disk is refused (EBUSY): the guest holds its image's fd, which no
    one can take back from it.
    """
    domain = hv.domain(_int(args, "dom"))
    devid = _int(args, "devid")
    disk = domain.vdisks.get(devid)
    if disk is None:
        raise Refused(errno.ENODEV, f"{domain.label} has no direct or passthrough disk {devid}")
    if disk.model == MODEL_PASSTHROUGH:
        raise Refused(
            errno.EBUSY, f"{domain.label}'s {disk.vdev} is a passthrough disk: the guest holds its image's fd"
        )
    del domain.vdisks[devid]
    disk.close()
    log.info("%s: %s %s unplugged", domain.label, disk.model, disk.vdev)
    return {}, []


def vdisk_list(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``vdisk_op list``: the caller's disks; a passthrough disk's image fd travels with the reply."""
    disks: list[dict[str, Any]] = []
    out_fds: list[int] = []
    for disk in caller.vdisks.values():
        entry = disk.describe()
        if disk.model == MODEL_PASSTHROUGH:
            entry["fd"] = len(out_fds)
            out_fds.append(disk.fd)
        disks.append(entry)
    return {"disks": disks}, out_fds


def vdisk_io(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``vdisk_io``: one request on a direct disk, served here; ``{"status": BLKIF_RSP_*}``."""
    devid = _int(args, "devid")
    disk = caller.vdisks.get(devid)
    if disk is None or disk.model != MODEL_DIRECT:
        what = "no such disk" if disk is None else "its I/O is its own (passthrough)"
        raise Refused(errno.ENODEV, f"{caller.label} has no direct disk {devid}: {what}")
    op, sector = _int(args, "operation"), _int(args, "sector")
    disk.stats["requests"] += 1
    try:
        _serve(caller, disk, op, sector, args)
    except _Refusal as exc:
        disk.stats["errors"] += 1
        log.warning("%s: %s request refused: %s", caller.label, disk.vdev, exc)
        return {"status": exc.status}, []
    except OSError as exc:
        disk.stats["errors"] += 1
        log.warning("%s: %s request failed: %s", caller.label, disk.vdev, exc)
        return {"status": BLKIF_RSP_ERROR}, []
    return {"status": BLKIF_RSP_OKAY}, []


class _Refusal(Exception):
    def __init__(self, message: str, status: int = BLKIF_RSP_ERROR) -> None:
        super().__init__(message)
        self.status = status


def _serve(caller: Domain, disk: VirtualDisk, op: int, sector: int, args: dict) -> None:
    if op in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        nbytes = _int(args, "nbytes")
        nr_sectors = nbytes // SECTOR_SIZE if nbytes % SECTOR_SIZE == 0 else -1
    elif op == BLKIF_OP_DISCARD:
        nr_sectors = _int(args, "nr_sectors")
    else:
        nr_sectors = 0
    reason = check_request(op, sector, nr_sectors, disk.sectors, disk.readonly)
    if reason is not None:
        known = op in (BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE)
        raise _Refusal(reason, BLKIF_RSP_ERROR if known else BLKIF_RSP_EOPNOTSUPP)
    if op == BLKIF_OP_FLUSH_DISKCACHE:
        os.fdatasync(disk.fd)
    elif op == BLKIF_OP_DISCARD:
        punch_hole(disk.fd, sector * SECTOR_SIZE, nr_sectors * SECTOR_SIZE)
    else:
        _read_write(caller, disk, op == BLKIF_OP_WRITE, sector, nr_sectors * SECTOR_SIZE, _int(args, "pfn"))


def _read_write(caller: Domain, disk: VirtualDisk, writing: bool, sector: int, nbytes: int, pfn: int) -> None:
    """Copy between the image and the caller's frames ``pfn``.. (which must be its own)."""
    try:
        caller.memory.check_frame(pfn, -(-nbytes // PAGE_SIZE))
    except IndexError as exc:
        raise _Refusal(str(exc)) from None
    base = pfn * PAGE_SIZE
    buffer = caller.memory.view[base : base + nbytes]
    try:
        if writing:
            done = os.pwritev(disk.fd, [buffer], sector * SECTOR_SIZE)
            disk.stats["write_sectors"] += nbytes // SECTOR_SIZE
        else:
            done = os.preadv(disk.fd, [buffer], sector * SECTOR_SIZE)
            disk.stats["read_sectors"] += nbytes // SECTOR_SIZE
    finally:
        buffer.release()
    if done != nbytes:
        raise _Refusal(f"short {'write' if writing else 'read'}: {done} of {nbytes} bytes")


def passthrough_size_limit(domain: Domain) -> int:
    """The guest's ``RLIMIT_FSIZE``: 0 (it writes no file), or its largest passthrough image's size.

    A passthrough guest writes its image itself; the limit keeps it from growing
    the image (the file it reaches) past that size.
    """
    sizes = [os.fstat(d.fd).st_size for d in domain.vdisks.values() if d.model == MODEL_PASSTHROUGH and not d.readonly]
    return max(sizes, default=0)


def release_vdisks(domain: Domain) -> None:
    """The domain is gone: close its images."""
    for disk in domain.vdisks.values():
        disk.close()
    domain.vdisks.clear()
