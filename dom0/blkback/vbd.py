"""A virtual block device's backing: a raw image file (Linux xen-blkback's ``struct xen_vbd``).

Opened by dom0 when the device is probed, so a target dom0 cannot open fails the
domain's creation instead of leaving a half-built device. ``size=`` creates a
sparse image when the target does not exist.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from xenlike.kernel.image import punch_hole
from xenlike.public.blkif import SECTOR_SIZE

__all__ = ["Vbd", "open_image", "punch_hole"]


@dataclass
class Vbd:
    """An open image: its fd, size in 512-byte sectors, and whether it is read-only."""

    fd: int
    path: str
    sectors: int
    readonly: bool

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_image(path: str, readonly: bool, create_size: int | None = None) -> Vbd:
    """Open (or, with ``create_size``, create sparse) a raw image.

    An OSError's ``strerror`` is one line naming the path and, where there is
    one, the fix (as libxl's disk checks name the target they could not stat).
    """
    if create_size is not None and not os.path.exists(path):
        if readonly:
            raise OSError(f"{path} does not exist and a read-only disk cannot be created")
        _create_sparse(path, create_size)
    try:
        fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
    except OSError as exc:
        hint = " (size= in the disk spec creates it)" if exc.errno == errno.ENOENT and create_size is None else ""
        raise OSError(exc.errno, f"cannot open disk image {path}: {exc.strerror}{hint}") from None
    size = os.lseek(fd, 0, os.SEEK_END)
    if size % SECTOR_SIZE:
        os.close(fd)
        raise OSError(f"disk image {path} is {size} bytes, not a whole number of 512-byte sectors")
    return Vbd(fd, path, size // SECTOR_SIZE, readonly)


def _create_sparse(path: str, size: int) -> None:
    """A new image of ``size`` bytes, all a hole; OSError says why not, naming the path."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        directory = os.path.dirname(os.path.abspath(path))
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            reason = f"directory {directory} does not exist (create it, or put the image in another directory)"
        else:
            reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot create disk image {path}: {reason}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise OSError(exc.errno, f"cannot create disk image {path} of {size} bytes: {exc.strerror}") from None
    os.close(fd)
