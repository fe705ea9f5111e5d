"""A raw disk image's operations beyond ``preadv``/``pwritev``: what every device model shares.

blkback (split), the hypervisor (direct) and a passthrough guest all serve
``BLKIF_OP_DISCARD`` by punching a hole (Linux's ``blkdev_issue_discard`` on a
file: ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``), after which the
range reads as zeros and the image keeps its size.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["punch_hole"]

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range of the image (BLKIF_OP_DISCARD); it then reads as zeros. OSError if the file cannot."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
