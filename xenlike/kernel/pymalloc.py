"""CPython's small-object allocator (pymalloc), seen from a process about to fork many children.

pymalloc serves every object of up to 512 bytes from pools of one size class
each. A block freed in the parent stays on its pool's free list, and a child's
next object of that size is put there: one small object written into a page
shared with the parent copies the whole page. Spread over hundreds of pools, a
child's first few hundred objects copy as many pages.

:func:`fill_free_blocks` takes every free block in the parent before it forks,
with objects kept for its lifetime, so a child's new objects go to empty pools
and new arenas, packed together (an idle guest copies some 30 pages fewer,
CPython 3.11). What it keeps costs the parent, and every child shares it, about
what the free blocks were: a few hundred kB.

The free-block counts are read from ``sys._debugmallocstats()``, CPython's own
report (its table of size classes, with "avail blocks" last). A build without
pymalloc, or a report this does not recognise, leaves everything as it was.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

__all__ = ["free_blocks", "fill_free_blocks"]

# One row of the size-class table: class, size, pools, blocks in use, available blocks.
_ROW = re.compile(r"^\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.MULTILINE)
# PyBytesObject up to its first byte, plus the trailing NUL: a bytes of length n asks for this + n.
_BYTES_OVERHEAD = sys.getsizeof(b"")
_kept: list[object] = []


def free_blocks() -> dict[int, int]:
    """Block size -> free blocks in pools in use now (0 for a class with none), from ``sys._debugmallocstats()``.

    {} if it gives no report this recognises.
    """
    report = getattr(sys, "_debugmallocstats", None)
    if report is None:
        return {}
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)  # it writes to the C stderr
            report()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    return {int(size): int(avail) for size, avail in _ROW.findall(text)}


def _block_of(request: int, alignment: int) -> int:
    """The block size pymalloc serves a request of ``request`` bytes from (size classes are multiples of alignment)."""
    return -(-request // alignment) * alignment


def _fill(size: int, count: int, alignment: int) -> list[object]:
    """``count`` new objects that each take one block of ``size`` bytes ([] if no kind here does)."""
    if size > _BYTES_OVERHEAD:
        return [bytes(size - _BYTES_OVERHEAD) for _ in range(count)]  # asks for exactly size bytes
    if _block_of(sys.getsizeof(0.5), alignment) == size:
        return [float(i) + 0.5 for i in range(count)]  # never the cached 0.0 or a shared constant
    if _block_of(sys.getsizeof(object()), alignment) == size:
        return [object() for _ in range(count)]
    return []


def fill_free_blocks(rounds: int = 3) -> int:
    """Take every free pymalloc block with objects kept until the process exits; returns how many.

    Each round fills what the last report listed (the lists that keep them take
    blocks of their own, and reading the report frees some: later rounds mop up). Call it last before
    forking, after ``gc.collect()``: what is freed after it is free again.
    """
    taken = 0
    for _ in range(rounds):
        free = free_blocks()
        if not free:
            break
        alignment = min(free)  # the smallest class is one alignment unit
        for size, count in free.items():
            if not count:
                continue
            fillers = _fill(size, count, alignment)
            taken += len(fillers)
            _kept.append(fillers)
    return taken
