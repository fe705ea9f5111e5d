"""A domain's dirty log from the kernel: userfaultfd write-protect in async mode, harvested with PAGEMAP_SCAN.

Xen tracks the pages a guest writes during a live migration with log-dirty
mode (``XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY``, then ``..._CLEAN`` each round:
read and reset the bitmap). xenlike asks Linux for the same thing:

* every process that maps the domain's memory (each vCPU process) creates a
  userfaultfd for its own address space and opens its own ``/proc/self/pagemap``
  (:func:`open_for_mapping`) and hands both to whoever keeps the log;
* the keeper registers the mapping for write-protect with ``WP_ASYNC``: a write
  to a protected page does not stop the writer, the kernel just clears the
  protection and marks the page written (:meth:`MappingLog.arm`);
* each round, ``PAGEMAP_SCAN`` with ``PM_SCAN_WP_MATCHING`` returns the pages
  written since the last scan and protects them again, atomically: Xen's
  "clean" (:meth:`MappingLog.harvest`).

The protection lives in the page tables of the process that wrote, so a write
through another mapping of the same memfd (a back end's grant mapping in dom0,
a ``pwrite``) is not seen: whoever writes that way marks the pages
(:meth:`DirtyLog.mark`), as Xen's grant-table code marks the pages a back end
writes (``gnttab_mark_dirty``).

Constants and layouts are ``include/uapi/linux/userfaultfd.h`` and
``include/uapi/linux/fs.h`` (``struct pm_scan_arg``, ``struct page_region``),
Linux 6.7 and later; :func:`probe` says in one line what a kernel lacks.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Iterable

from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "DirtyLogUnsupported",
    "probe",
    "open_userfaultfd",
    "open_for_mapping",
    "MappingLog",
    "DirtyLog",
]

_SYS_userfaultfd = 323  # x86-64
_UFFD_USER_MODE_ONLY = 1
_UFFD_API = 0xAA
_UFFDIO_API = 0xC018AA3F
_UFFDIO_REGISTER = 0xC020AA00
_UFFDIO_UNREGISTER = 0x8010AA01
_UFFDIO_WRITEPROTECT = 0xC018AA06
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
_UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12  # needed to protect shmem, so a memfd
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13  # pages never touched are protected too
_UFFD_FEATURE_WP_ASYNC = 1 << 15  # the kernel resolves the fault itself
_FEATURES = _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED | _UFFD_FEATURE_WP_HUGETLBFS_SHMEM

_PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1
_PM_SCAN_ARG = struct.Struct("=12Q")  # size, flags, start, end, walk_end, vec, vec_len, max_pages, 4 masks: 96
_PAGE_REGION = struct.Struct("=3Q")  # start, end, categories: 24
_UFFDIO_API_ARG = struct.Struct("=3Q")  # api, features, ioctls
_UFFDIO_REGISTER_ARG = struct.Struct("=4Q")  # start, len, mode, ioctls
_UFFDIO_WRITEPROTECT_ARG = struct.Struct("=3Q")  # start, len, mode
_UFFDIO_RANGE = struct.Struct("=2Q")
_VEC_LEN = 256  # regions one scan returns at most; the scan goes on from walk_end

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class DirtyLogUnsupported(OSError):
    """This kernel, or this process's rights, cannot give a dirty log; the message says which, in one line."""


def _ioctl(fd: int, request: int, arg: ctypes.Array, what: str) -> int:
    result = _libc.ioctl(fd, request, ctypes.addressof(arg))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(result)


def _userfaultfd() -> int:
    flags = os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY
    fd = _libc.syscall(_SYS_userfaultfd, flags)
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise DirtyLogUnsupported(err, "this kernel has no userfaultfd (CONFIG_USERFAULTFD)")
        raise DirtyLogUnsupported(err, f"userfaultfd: {os.strerror(err)} (see vm.unprivileged_userfaultfd)")
    return int(fd)


def _api(fd: int) -> None:
    arg = ctypes.create_string_buffer(_UFFDIO_API_ARG.pack(_UFFD_API, _FEATURES, 0), _UFFDIO_API_ARG.size)
    try:
        _ioctl(fd, _UFFDIO_API, arg, "UFFDIO_API")
    except OSError as exc:
        raise DirtyLogUnsupported(
            exc.errno, "this kernel's userfaultfd has no asynchronous write-protect for shared memory (Linux 6.7)"
        ) from None


def open_userfaultfd() -> int:
    """In the process whose mapping is to be logged: its userfaultfd, API done, CLOEXEC.

    A userfaultfd acts on the address space of the process that created it; the
    keeper of the log may be another process (the fd goes to it over
    ``SCM_RIGHTS``), which reads that process's ``/proc/PID/pagemap``.
    """
    uffd = _userfaultfd()
    try:
        _api(uffd)
    except BaseException:
        os.close(uffd)
        raise
    return uffd


def open_for_mapping() -> tuple[int, int]:
    """:func:`open_userfaultfd` and this process's own pagemap (which a pagemap fd keeps reading wherever it goes)."""
    uffd = open_userfaultfd()
    try:
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(uffd)
        raise
    return uffd, pagemap


def probe() -> str | None:
    """None if this kernel gives dirty logs to this process; else why not, in one line."""
    try:
        uffd, pagemap = open_for_mapping()
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        area = mmap.mmap(-1, PAGE_SIZE)
        try:
            log = MappingLog(uffd, pagemap, ctypes.addressof(ctypes.c_char.from_buffer(area)), 1, "probe")
            log.arm()
            area[0] = 1
            written = log.harvest()
            log.disarm()
        finally:
            area.close()
        if written != [0]:
            return f"PAGEMAP_SCAN reported {written} for one written page"
    except OSError as exc:
        return f"this kernel cannot scan written pages: {exc.strerror or exc} (PAGEMAP_SCAN, Linux 6.7)"
    finally:
        os.close(uffd)
        os.close(pagemap)
    return None


class MappingLog:
    """One process's mapping of a domain's frames ``0..nr_frames-1`` at ``address``, logged.

    Takes ownership of ``uffd`` and ``pagemap`` (from :func:`open_for_mapping`
    in that process); ``close`` disarms and closes them.
    """

    def __init__(self, uffd: int, pagemap: int, address: int, nr_frames: int, label: str) -> None:
        if address % PAGE_SIZE or nr_frames <= 0:
            raise ValueError(f"{label}: a mapping of {nr_frames} frames at {address:#x} cannot be logged")
        self.uffd = uffd
        self.pagemap = pagemap
        self.address = address
        self.nr_frames = nr_frames
        self.label = label
        self.armed = False
        self._vec = ctypes.create_string_buffer(_PAGE_REGION.size * _VEC_LEN)

    @property
    def _end(self) -> int:
        return self.address + self.nr_frames * PAGE_SIZE

    def arm(self) -> None:
        """Register the mapping for write-protect and protect every page: from now on writes are logged."""
        length = self.nr_frames * PAGE_SIZE
        reg = ctypes.create_string_buffer(_UFFDIO_REGISTER_ARG.pack(self.address, length, _UFFDIO_REGISTER_MODE_WP, 0))
        _ioctl(self.uffd, _UFFDIO_REGISTER, reg, f"{self.label}: UFFDIO_REGISTER")
        wp = ctypes.create_string_buffer(
            _UFFDIO_WRITEPROTECT_ARG.pack(self.address, length, _UFFDIO_WRITEPROTECT_MODE_WP)
        )
        _ioctl(self.uffd, _UFFDIO_WRITEPROTECT, wp, f"{self.label}: UFFDIO_WRITEPROTECT")
        self.armed = True

    def harvest(self) -> list[int]:
        """The frames written since :meth:`arm` or the last harvest, each once, ascending; they are protected again."""
        frames: list[int] = []
        start = self.address
        while start < self._end:
            arg = ctypes.create_string_buffer(
                _PM_SCAN_ARG.pack(
                    _PM_SCAN_ARG.size,
                    _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC,
                    start,
                    self._end,
                    0,
                    ctypes.addressof(self._vec),
                    _VEC_LEN,
                    0,
                    0,  # category_inverted
                    _PAGE_IS_WRITTEN,  # category_mask
                    0,  # category_anyof_mask
                    _PAGE_IS_WRITTEN,  # return_mask
                ),
                _PM_SCAN_ARG.size,
            )
            count = _ioctl(self.pagemap, _PAGEMAP_SCAN, arg, f"{self.label}: PAGEMAP_SCAN")
            for i in range(count):
                first, end, _ = _PAGE_REGION.unpack_from(self._vec, i * _PAGE_REGION.size)
                frames.extend(range((first - self.address) // PAGE_SIZE, (end - self.address) // PAGE_SIZE))
            walk_end = _PM_SCAN_ARG.unpack_from(arg)[4]
            if walk_end <= start:
                raise OSError(errno.EIO, f"{self.label}: PAGEMAP_SCAN made no progress at {start:#x}")
            start = walk_end
        return frames

    def disarm(self) -> None:
        """Unregister: writes are no longer logged (and no longer pay for it)."""
        if not self.armed:
            return
        rng = ctypes.create_string_buffer(_UFFDIO_RANGE.pack(self.address, self.nr_frames * PAGE_SIZE))
        try:
            _ioctl(self.uffd, _UFFDIO_UNREGISTER, rng, f"{self.label}: UFFDIO_UNREGISTER")
        except OSError:
            pass  # the process is gone, and its mapping with it
        self.armed = False

    def close(self) -> None:
        self.disarm()
        for fd in (self.uffd, self.pagemap):
            try:
                os.close(fd)
            except OSError:
                pass
        self.uffd = self.pagemap = -1


class DirtyLog:
    """A domain's log-dirty state: each of its mappings', and the frames others marked.

    :meth:`harvest` is ``XEN_DOMCTL_SHADOW_OP_CLEAN``: the frames written since
    the last one, by any vCPU or marked, each once, ascending; the log is reset.
    """

    def __init__(self, nr_frames: int, label: str) -> None:
        self.nr_frames = nr_frames
        self.label = label
        self.mappings: list[MappingLog] = []
        self._marked: set[int] = set()

    def add(self, mapping: MappingLog) -> None:
        """Log one more mapping (armed here if it is not yet)."""
        if mapping.nr_frames > self.nr_frames:
            raise ValueError(f"{self.label}: a mapping of {mapping.nr_frames} frames; the domain has {self.nr_frames}")
        if not mapping.armed:
            mapping.arm()
        self.mappings.append(mapping)

    def mark(self, pfns: Iterable[int]) -> None:
        """Frames written other than through a logged mapping (a back end's grant mapping)."""
        for pfn in pfns:
            if not 0 <= pfn < self.nr_frames:
                raise IndexError(f"{self.label}: frame {pfn} is outside its memory (0..{self.nr_frames - 1})")
            self._marked.add(pfn)

    def harvest(self) -> list[int]:
        """The frames written since the last harvest.

        ProcessLookupError if a logged process is gone: what it wrote since the
        last harvest cannot be known (its mapping is dropped from the log, so
        the next harvest reports the others' writes).
        """
        frames = self._marked
        self._marked = set()
        gone: list[MappingLog] = []
        for mapping in self.mappings:
            try:
                frames.update(mapping.harvest())
            except ProcessLookupError:
                gone.append(mapping)
        if gone:
            self._marked = frames  # kept for the next harvest: nothing is reported twice or lost
            for mapping in gone:
                self.mappings.remove(mapping)
                mapping.close()
            raise ProcessLookupError(
                errno.ESRCH,
                f"{', '.join(m.label for m in gone)}: the process is gone; the frames it wrote since the last "
                "harvest are unknown",
            )
        return sorted(frames)

    def close(self) -> None:
        for mapping in self.mappings:
            mapping.close()
        self.mappings.clear()
        self._marked.clear()
