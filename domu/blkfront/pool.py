"""blkfront's persistent grants: the pool of pages a device does I/O through.

Pages are granted to the back end once, in contiguous chunks, and reused for
ever; a request takes one contiguous run of them (:class:`_Run`), so its data is
one slice copy in the guest and one I/O vector in the back end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenlike.kernel.memory import OutOfFrames, PageAllocator
from xenlike.public.blkif import (
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    SECTORS_PER_PAGE,
    SEGMENT_LAST_SECT,
    SEGMENT_SIZE,
    SEGS_PER_INDIRECT_FRAME,
    Segment,
    pack_segments,
)

if TYPE_CHECKING:
    from .blkfront import BlockDevice

log = logging.getLogger("domu.blkfront")

MAX_SEGMENTS = 256  # per request, with indirect descriptors
# The pool of persistent pages: at most this many (eight of the largest requests with
# their indirect page), and at most a quarter of the guest's free memory.
MAX_POOL_PAGES = 8 * (MAX_SEGMENTS + 1)
MIN_POOL_PAGES = 64


def pages_per_request(nr_segments: int) -> int:
    """Pool pages a request of ``nr_segments`` data pages takes: the data, then its indirect pages."""
    if nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
        return nr_segments
    return nr_segments + -(-nr_segments // SEGS_PER_INDIRECT_FRAME)


@dataclass(slots=True)
class _Chunk:
    """Contiguous guest pages, each granted to the back end once (persistent grants)."""

    first_pfn: int
    grefs: list[int]
    segments: bytes  # one whole-page segment per page, laid out as an indirect page holds them
    free: PageAllocator  # which of its pages no request holds


@dataclass(slots=True)
class _Run:
    """Pages ``pfn``.. of a chunk, held by one request."""

    chunk: _Chunk
    pfn: int
    count: int

    @property
    def index(self) -> int:
        return self.pfn - self.chunk.first_pfn

    def grefs(self, start: int, count: int) -> list[int]:
        return self.chunk.grefs[self.index + start : self.index + start + count]

    def segments(self, count: int, last_sect: int) -> bytes:
        """Segments for the first ``count`` pages, the last one ending at ``last_sect``."""
        packed = self.chunk.segments[self.index * SEGMENT_SIZE : (self.index + count) * SEGMENT_SIZE]
        if last_sect == SECTORS_PER_PAGE - 1:
            return packed
        patched = bytearray(packed)
        patched[(count - 1) * SEGMENT_SIZE + SEGMENT_LAST_SECT] = last_sect
        return bytes(patched)


class _GrantPool:
    """The pages a device does I/O through (xen-blkfront's persistent grants).

    Pages are granted to the back end once, in chunks of ``chunk_pages`` contiguous
    frames, and reused for ever; the back end keeps them mapped. A request takes one
    contiguous run, so its data moves with one slice copy here and one I/O vector in
    the back end. The pool grows a chunk at a time up to ``max_chunks``.

    A single page given back is kept on a free list, most recently used first, and
    handed to the next request of one page as it is: a 4 KiB request, the commonest,
    costs no search of its chunk's free runs and no merging of them. The list goes
    back to the chunks, to merge into long runs again, when a larger request finds
    no run free.
    """

    def __init__(self, device: BlockDevice, chunk_pages: int, max_chunks: int) -> None:
        self.device = device
        self.chunk_pages = chunk_pages
        self.max_chunks = max_chunks
        self._chunks: list[_Chunk] = []
        self._single_pages: list[_Run] = []  # runs of one page given back, kept out of their chunks

    @property
    def pages(self) -> int:
        """Pages granted so far (whole chunks)."""
        return self.chunk_pages * len(self._chunks)

    @property
    def free_pages(self) -> int:
        """Pages no request or buffer holds: free in their chunks, or on the free list."""
        return sum(chunk.free.free_frames for chunk in self._chunks) + len(self._single_pages)

    def take(self, count: int) -> _Run | None:
        """A run of ``count`` free pages (at most ``chunk_pages``), or None until a request gives some back."""
        if count == 1 and self._single_pages:
            return self._single_pages.pop()
        run = self._take_from_chunks(count)
        if run is None and self._single_pages:
            self._merge_single_pages()
            run = self._take_from_chunks(count)
        return run

    def give(self, run: _Run) -> None:
        """Return a run from :meth:`take` (once: a run given back twice would be lent twice)."""
        if run.count == 1:
            self._single_pages.append(run)
        else:
            run.chunk.free.free(run.pfn)

    def _take_from_chunks(self, count: int) -> _Run | None:
        for chunk in self._chunks:
            if chunk.free.free_frames >= count:
                try:
                    return _Run(chunk, chunk.free.alloc(count), count)
                except OutOfFrames:
                    continue  # free, but not in one run
        if len(self._chunks) < self.max_chunks:
            chunk = self._grant_chunk()
            return _Run(chunk, chunk.free.alloc(count), count)
        return None

    def _merge_single_pages(self) -> None:
        """Give the free list's pages back to their chunks, where they merge into runs again."""
        for run in self._single_pages:
            run.chunk.free.free(run.pfn)
        self._single_pages.clear()

    def _grant_chunk(self) -> _Chunk:
        kernel = self.device.kernel
        first = kernel.pages.alloc(self.chunk_pages, owner=self.device.xdev.nodename)
        grefs = [kernel.grant_table.grant_access(self.device.backend_id, first + i) for i in range(self.chunk_pages)]
        whole_pages = pack_segments([Segment(gref, 0, SECTORS_PER_PAGE - 1) for gref in grefs])
        chunk = _Chunk(first, grefs, whole_pages, PageAllocator(first, first + self.chunk_pages))
        self._chunks.append(chunk)
        return chunk

    def close(self) -> None:
        """End access to every page and give the frames back (the back end has unmapped them).

        A chunk with a page the back end still maps is kept out of use, never reused.
        """
        device = self.device
        for chunk in self._chunks:
            returned = [device.bus.end_access(device.xdev, gref) for gref in chunk.grefs]
            if all(returned):
                device.kernel.pages.free(chunk.first_pfn)
        self._chunks.clear()
        self._single_pages.clear()
