"""Guest pseudo-physical memory, foreign mappings and the guest's page allocator.

A domain's memory is one sparse memfd of ``nr_frames`` 4 KiB frames, numbered
0..N-1 (Xen's guest frame numbers, GFNs/PFNs). Nothing is named in /dev/shm, and
the memory lives exactly as long as some process holds the fd or a mapping.
Frame numbers are the only addresses that cross a process boundary: a grant names
a frame, a ring reference is a grant, the start info names frames.

* :class:`GuestMemory` is a domain's own view of its memory (the whole memfd mapped).
* :class:`ForeignMapping` maps chosen frames of *another* domain's memfd into one
  contiguous, optionally read-only region: what ``xenforeignmemory_map`` or a
  grant map gives a back-end in Xen. It is how dom0 reaches a front-end's ring pages
  and I/O buffers.
* :class:`ForeignArena` is a reserved range of page slots into which single foreign
  frames are mapped and unmapped one at a time (a back end's persistent grants), so
  that frames in adjacent slots form one buffer and one I/O vector.
* :class:`PageAllocator` hands out the guest's free frames to its kernel and drivers
  (rings, buffers); it is the guest's business, the hypervisor never sees it.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from operator import itemgetter

from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "SharedMapping",
    "GuestMemory",
    "ForeignMapping",
    "ForeignArena",
    "PageAllocator",
    "OutOfFrames",
]


class OutOfFrames(MemoryError):
    """The allocator has no run of free frames as long as the one asked for."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10
_PROT_NONE = 0


def _checked_mmap(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    result = _libc.mmap(addr, length, prot, flags, fd, offset)
    if result == _MAP_FAILED or result is None:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap failed: {os.strerror(err)}")
    return result


class SharedMapping:
    """``length`` bytes of ``fd`` mapped ``MAP_SHARED``, read-write, at the kernel's choice of address.

    CPython's ``mmap.mmap`` keeps a duplicate of the fd it maps (for ``resize``
    and ``size``): one more fd for every domain's memfd and trace buffer, which
    a host of thousands of domains cannot spare. This maps with libc's ``mmap``
    and holds no fd; the caller keeps or closes ``fd`` as it likes. :attr:`view`
    is the whole mapping; :meth:`close` refuses, as ``mmap.close`` does, while a
    view taken from it is still held, so nothing is ever left pointing at
    unmapped memory.
    """

    def __init__(self, fd: int, length: int) -> None:
        if length <= 0:
            raise ValueError(f"a mapping needs at least one byte, not {length}")
        self.size = length
        self.address = _checked_mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        self._raw: ctypes.Array[ctypes.c_char] | None = (ctypes.c_char * length).from_address(self.address)
        self.view = memoryview(self._raw).cast("B")

    def madvise(self, advice: int, start: int, length: int) -> None:
        """``madvise(2)`` on bytes ``start..start+length`` of the mapping; OSError as the kernel says."""
        if self._raw is None or start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"bytes {start}..{start + length} are outside this mapping of {self.size}")
        if _libc.madvise(self.address + start, length, advice) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"madvise failed: {os.strerror(err)}")

    def close(self) -> None:
        """Unmap; BufferError (the mapping kept) while a view of it other than :attr:`view` is held."""
        if self._raw is None:
            return
        self.view.release()
        # The array is referenced here, by getrefcount's argument, and by each live export's buffer.
        if sys.getrefcount(self._raw) > 2:
            raise BufferError("cannot unmap: views of this mapping are still held")
        self._raw = None
        _libc.munmap(self.address, self.size)


class GuestMemory:
    """A domain's pseudo-physical memory: frames 0..nr_frames-1 of one memfd.

    The creator owns the fd; another process given the fd (over SCM_RIGHTS) builds
    its own view with :meth:`from_fd`. Unused frames cost nothing (the memfd is
    sparse); :meth:`release_frames` gives frames back to the host (ballooning).
    """

    def __init__(self, fd: int, nr_frames: int) -> None:
        if nr_frames <= 0:
            raise ValueError(f"a domain needs at least one frame, not {nr_frames}")
        self.fd = fd
        self.nr_frames = nr_frames
        self.size = nr_frames * PAGE_SIZE
        self._map: SharedMapping | None = SharedMapping(fd, self.size)  # None once closed
        self.view = self._map.view
        self._base = self._map.address

    @classmethod
    def create(cls, nr_frames: int, name: str = "xenlike-guest") -> GuestMemory:
        """Allocate a new, zero-filled, sparse memfd of ``nr_frames`` frames."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, nr_frames * PAGE_SIZE)
            return cls(fd, nr_frames)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, nr_frames: int | None = None) -> GuestMemory:
        """Map memory whose fd came from elsewhere (the size is read from the fd)."""
        size = os.fstat(fd).st_size
        if nr_frames is None:
            nr_frames = size // PAGE_SIZE
        if nr_frames * PAGE_SIZE > size:
            raise ValueError(f"memfd holds {size // PAGE_SIZE} frames, not {nr_frames}")
        return cls(fd, nr_frames)

    def check_frame(self, pfn: int, count: int = 1) -> None:
        """Raise IndexError unless frames pfn..pfn+count-1 exist."""
        if pfn < 0 or count < 0 or pfn + count > self.nr_frames:
            raise IndexError(
                f"frames {pfn}..{pfn + count - 1} are outside this domain's memory (0..{self.nr_frames - 1})"
            )

    def frame(self, pfn: int) -> memoryview:
        """The 4 KiB of frame ``pfn``, writable, without copying."""
        return self.frames(pfn, 1)

    def frames(self, pfn: int, count: int) -> memoryview:
        """A contiguous run of ``count`` frames starting at ``pfn``."""
        self.check_frame(pfn, count)
        return self.view[pfn * PAGE_SIZE : (pfn + count) * PAGE_SIZE]

    def address(self, pfn: int, offset: int = 0) -> int:
        """Virtual address, in this process, of byte ``offset`` of frame ``pfn``."""
        self.check_frame(pfn)
        return self._base + pfn * PAGE_SIZE + offset

    def release_frames(self, pfns: Iterable[int]) -> None:
        """Punch the frames out of the memfd: their contents are gone, their memory freed."""
        mapping = self._map
        if mapping is None:
            raise ValueError("this domain's memory is closed")
        for pfn in pfns:
            self.check_frame(pfn)
            mapping.madvise(mmap.MADV_REMOVE, pfn * PAGE_SIZE, PAGE_SIZE)

    def resident_frames(self) -> int:
        """How many frames are backed by host memory (sparse frames excluded)."""
        return os.fstat(self.fd).st_blocks * 512 // PAGE_SIZE

    def close(self, *, close_fd: bool = True) -> None:
        """Drop the mapping (and the fd): callers must hold no views of the frames."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        if close_fd:
            os.close(self.fd)

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ForeignMapping:
    """Frames of another domain's memory mapped side by side into one region.

    Mirrors ``xenforeignmemory_map()`` / a batch of ``GNTTABOP_map_grant_ref``: the
    frames need not be contiguous in the granter's memory, but the mapper sees them
    as one contiguous buffer (a multi-page ring, an indirect segment list). With
    ``writable=False`` the pages are mapped ``PROT_READ``: a write through them
    faults, as a read-only grant mapping does in Xen.
    """

    def __init__(self, fd: int, pfns: Sequence[int], *, writable: bool = True) -> None:
        if not pfns:
            raise ValueError("a foreign mapping needs at least one frame")
        self.pfns = tuple(pfns)
        self.writable = writable
        self.size = len(self.pfns) * PAGE_SIZE
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        # Reserve the whole range first so each frame can be placed at its slot.
        addr = _checked_mmap(None, self.size, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        try:
            for i, pfn in enumerate(self.pfns):
                _checked_mmap(addr + i * PAGE_SIZE, PAGE_SIZE, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, pfn * PAGE_SIZE)
        except BaseException:
            _libc.munmap(addr, self.size)
            raise
        self._addr: int | None = addr  # None once unmapped
        raw = (ctypes.c_char * self.size).from_address(addr)
        view = memoryview(raw).cast("B")
        self.view = view if writable else view.toreadonly()
        self._raw_view = view

    @property
    def address(self) -> int:
        """Virtual address of the first mapped byte in this process; ValueError once closed."""
        if self._addr is None:
            raise ValueError("this foreign mapping is closed")
        return self._addr

    def frame(self, index: int) -> memoryview:
        """The ``index``-th mapped frame (not the granter's pfn)."""
        return self.view[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]

    def close(self) -> None:
        """Unmap the frames. Views taken from :attr:`view` must not be used after this."""
        if self._addr is None:
            return
        self.view.release()
        self._raw_view.release()
        _libc.munmap(self._addr, self.size)
        self._addr = None

    def __enter__(self) -> ForeignMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ForeignArena:
    """A fixed range of ``nr_slots`` page slots, each empty or holding one foreign frame.

    What a back end's pool of persistent grant mappings needs: frames come and go
    one by one (a grant mapped, a grant unmapped), yet frames placed in adjacent
    slots are adjacent in this process, so one slice of :attr:`view` spans them and
    one ``iovec`` moves them. An empty slot is ``PROT_NONE``: touching it faults,
    and a frame unmapped from a slot is out of reach at once. A read-only slot is
    ``PROT_READ``, whatever :attr:`view` (writable, over the whole range) allows.
    """

    def __init__(self, fd: int, nr_slots: int) -> None:
        if nr_slots <= 0:
            raise ValueError(f"an arena needs at least one slot, not {nr_slots}")
        self.fd = fd
        self.nr_slots = nr_slots
        self.size = nr_slots * PAGE_SIZE
        addr = _checked_mmap(None, self.size, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        self._addr: int | None = addr  # None once unmapped
        self.view = memoryview((ctypes.c_char * self.size).from_address(addr)).cast("B")

    @property
    def address(self) -> int:
        """Virtual address of slot 0 in this process; ValueError once closed."""
        if self._addr is None:
            raise ValueError("this arena is closed")
        return self._addr

    def map(self, slot: int, pfn: int, *, writable: bool) -> None:
        """Place frame ``pfn`` of the arena's memfd in ``slot`` (replacing what was there)."""
        addr = self._slot_address(slot)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        _checked_mmap(addr, PAGE_SIZE, prot, mmap.MAP_SHARED | _MAP_FIXED, self.fd, pfn * PAGE_SIZE)

    def unmap(self, slot: int) -> None:
        """Empty ``slot``: the frame is no longer reachable from this process."""
        _checked_mmap(
            self._slot_address(slot),
            PAGE_SIZE,
            _PROT_NONE,
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED,
            -1,
            0,
        )

    def close(self) -> None:
        """Unmap every slot. Views taken from :attr:`view` must not be used after this."""
        if self._addr is None:
            return
        self.view.release()
        _libc.munmap(self._addr, self.size)
        self._addr = None

    def _slot_address(self, slot: int) -> int:
        """Where ``slot`` is in this process; IndexError for a slot out of range or in a closed arena."""
        if self._addr is None or not 0 <= slot < self.nr_slots:
            raise IndexError(f"slot {slot} is outside this arena (0..{self.nr_slots - 1})")
        return self._addr + slot * PAGE_SIZE


class PageAllocator:
    """First-fit allocator of a guest's free frames (its kernel's page allocator).

    Frames ``[first, limit)`` are managed; frames below ``first`` are the ones the
    domain builder reserved (start info, console and xenstore pages, grant table).
    Runs are contiguous so a multi-page ring or buffer is one slice of guest memory.
    Every method may be called from any thread (the guest's drivers allocate from
    their own threads), as the kernel's zone lock allows.
    """

    def __init__(self, first: int, limit: int) -> None:
        if not 0 <= first <= limit:
            raise ValueError(f"bad frame range [{first}, {limit})")
        self.first = first
        self.limit = limit
        # Sorted list of free runs as [start, length].
        self._free: list[list[int]] = [[first, limit - first]] if limit > first else []
        self._free_count = limit - first  # the sum of the free runs' lengths, kept as they change
        self._allocated: dict[int, int] = {}
        self._owners: dict[int, str] = {}  # runs a device holds, by first pfn: not carried across a save
        self._lock = threading.Lock()

    @property
    def free_frames(self) -> int:
        return self._free_count

    def alloc(self, count: int = 1, owner: str = "") -> int:
        """Allocate ``count`` contiguous frames; returns the first pfn.

        ``owner`` names the device a driver allocates for (its xenstore node):
        such runs are the device's, set up again on resume, and :meth:`runs`
        leaves them out of what a save carries.
        """
        if count <= 0:
            raise ValueError(f"cannot allocate {count} frames")
        with self._lock:
            return self._alloc(count, owner)

    def _alloc(self, count: int, owner: str) -> int:
        for run in self._free:
            start, length = run
            if length >= count:
                if length == count:
                    self._free.remove(run)
                else:
                    run[0] += count
                    run[1] -= count
                self._allocated[start] = count
                self._free_count -= count
                if owner:
                    self._owners[start] = owner
                return start
        raise OutOfFrames(f"no run of {count} free frames ({self.free_frames} free in all)")

    def runs(self) -> list[tuple[int, int]]:
        """The allocated runs no device owns, as (first pfn, count), ascending: what a save carries."""
        with self._lock:
            return sorted((start, count) for start, count in self._allocated.items() if start not in self._owners)

    def reserve(self, start: int, count: int, owner: str = "") -> None:
        """Mark ``[start, start+count)`` allocated, as :meth:`alloc` would have (a restored guest's runs).

        ValueError unless every frame of it is free and managed here.
        """
        if count <= 0:
            raise ValueError(f"cannot reserve {count} frames")
        with self._lock:
            self._reserve(start, count, owner)

    def _reserve(self, start: int, count: int, owner: str) -> None:
        for run in self._free:
            first, length = run
            if first <= start and start + count <= first + length:
                self._free.remove(run)
                pieces = [[first, start - first], [start + count, first + length - start - count]]
                self._free.extend(piece for piece in pieces if piece[1] > 0)
                self._free.sort(key=lambda r: r[0])
                self._allocated[start] = count
                self._free_count -= count
                if owner:
                    self._owners[start] = owner
                return
        raise ValueError(f"frames {start}..{start + count - 1} are not free in [{self.first}, {self.limit})")

    def free(self, pfn: int) -> None:
        """Return a run obtained from :meth:`alloc` (by its first pfn)."""
        with self._lock:
            self._free_run(pfn)

    def trim(self, pfn: int, keep: int) -> None:
        """Give back the tail of a run from :meth:`alloc` or :meth:`reserve`, keeping its first ``keep`` frames.

        One step, so no other thread is ever handed the frames kept (a balloon
        giving back part of a run). ValueError unless ``pfn`` starts a run longer than ``keep`` > 0.
        """
        with self._lock:
            count = self._allocated.get(pfn)
            if count is None:
                raise ValueError(f"frame {pfn} is not the start of an allocated run")
            if not 0 < keep < count:
                raise ValueError(f"cannot keep {keep} of the {count} frames of the run at {pfn}")
            self._allocated[pfn] = keep
            self._insert_free(pfn + keep, count - keep)

    def _free_run(self, pfn: int) -> None:
        count = self._allocated.pop(pfn, None)
        if count is None:
            raise ValueError(f"frame {pfn} is not the start of an allocated run")
        self._owners.pop(pfn, None)
        self._insert_free(pfn, count)

    def _insert_free(self, pfn: int, count: int) -> None:
        """Put ``[pfn, pfn+count)`` on the free list, joined with its neighbours (the lock held)."""
        self._free_count += count
        runs = self._free
        index = bisect.bisect_left(runs, pfn, key=itemgetter(0))
        runs.insert(index, [pfn, count])
        # Coalesce with the neighbours so long runs come back.
        if index + 1 < len(runs) and runs[index][0] + runs[index][1] == runs[index + 1][0]:
            runs[index][1] += runs.pop(index + 1)[1]
        if index > 0 and runs[index - 1][0] + runs[index - 1][1] == runs[index][0]:
            runs[index - 1][1] += runs.pop(index)[1]
