"""Grant tables, version 1 (``xen/include/public/grant_table.h``).

A domain shares one of its frames with another domain by writing a grant entry
into its own grant table, which lives in frames of its own memory:

    struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; };  // 8 bytes

The *granter's* side is :class:`GrantTable` (Linux's ``gnttab_grant_foreign_access``
and ``gnttab_end_foreign_access_ref``). The *checker's* side is :class:`GrantMapper`,
run by the hypervisor when a domain asks to map a grant (``GNTTABOP_map_grant_ref``):
it checks the entry, marks it in use with ``GTF_reading``/``GTF_writing`` by an atomic
compare-and-swap on the flags and domid word, exactly as Xen's ``_set_status_v1``
does, and keeps the maptrack handle that ``GNTTABOP_unmap_grant_ref`` takes back.
Because the mark and the granter's revoke are both compare-and-swaps on the same
word, a grant can never be revoked while it is mapped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterator

from xenlike.public.atomic import cmpxchg16, cmpxchg32
from xenlike.kernel.memory import GuestMemory
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "GTF_invalid",
    "GTF_permit_access",
    "GTF_accept_transfer",
    "GTF_transitive",
    "GTF_type_mask",
    "GTF_readonly",
    "GTF_reading",
    "GTF_writing",
    "GNTST",
    "GNTTAB_RESERVED_CONSOLE",
    "GNTTAB_RESERVED_XENSTORE",
    "GNTTAB_NR_RESERVED_ENTRIES",
    "GRANT_ENTRY_SIZE",
    "GRANT_ENTRIES_PER_FRAME",
    "DEFAULT_MAX_GRANT_FRAMES",
    "GrantEntry",
    "GrantError",
    "GrantTable",
    "GrantMapping",
    "GrantMapper",
]

# grant_entry_v1.flags: the type in bits 0-1, then sub-flags.
GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2  # set by the granter: the peer may only read
GTF_reading = 1 << 3  # set by the hypervisor while the peer has the frame mapped
GTF_writing = 1 << 4  # ... mapped writable

GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1
GNTTAB_NR_RESERVED_ENTRIES = 8

GRANT_ENTRY = struct.Struct("<HHI")  # flags, domid, frame
GRANT_ENTRY_SIZE = GRANT_ENTRY.size
GRANT_ENTRIES_PER_FRAME = PAGE_SIZE // GRANT_ENTRY_SIZE
DEFAULT_MAX_GRANT_FRAMES = 64  # Xen's gnttab_max_frames default


class GNTST:
    """``GNTST_*`` status codes of grant-table operations."""

    okay = 0
    general_error = -1
    bad_domain = -2
    bad_gntref = -3
    bad_handle = -4
    bad_virt_addr = -5
    bad_dev_addr = -6
    no_device_space = -7
    permission_denied = -8
    bad_page = -9
    bad_copy_arg = -10
    address_too_big = -11
    eagain = -12
    no_space = -13

    @classmethod
    def name(cls, status: int) -> str:
        """``GNTST_okay`` for 0, and so on."""
        for attr, value in vars(cls).items():
            if not attr.startswith("_") and value == status and isinstance(value, int):
                return f"GNTST_{attr}"
        return f"GNTST({status})"


class GrantError(Exception):
    """A grant operation refused, with Xen's GNTST status and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{GNTST.name(status)}: {message}")
        self.status = status


@dataclass(frozen=True)
class GrantEntry:
    """A decoded ``grant_entry_v1``."""

    flags: int
    domid: int
    frame: int

    @property
    def type(self) -> int:
        return self.flags & GTF_type_mask

    @property
    def readonly(self) -> bool:
        return bool(self.flags & GTF_readonly)

    @property
    def in_use(self) -> bool:
        return bool(self.flags & (GTF_reading | GTF_writing))


class _GrantTableFrames:
    """The grant table's frames in a domain's memory, viewed as entries.

    Flags, domid and frame are each read and written with one aligned store
    (memoryview casts), never ``struct.pack_into``, because the peer reads them
    concurrently.
    """

    def __init__(self, memory: GuestMemory, first_pfn: int, nr_frames: int) -> None:
        memory.check_frame(first_pfn, nr_frames)
        self.memory = memory
        self.first_pfn = first_pfn
        self.nr_frames = nr_frames
        self.nr_entries = nr_frames * GRANT_ENTRIES_PER_FRAME
        region = memory.frames(first_pfn, nr_frames)
        self._u16 = region.cast("H")  # entry ref: flags at [4*ref], domid at [4*ref + 1]
        self._u32 = region.cast("I")  # entry ref: frame at [2*ref + 1]
        self._base = memory.address(first_pfn)

    def read(self, ref: int) -> GrantEntry:
        return GrantEntry(self._u16[4 * ref], self._u16[4 * ref + 1], self._u32[2 * ref + 1])

    def flags_address(self, ref: int) -> int:
        return self._base + ref * GRANT_ENTRY_SIZE

    def release(self) -> None:
        self._u16.release()
        self._u32.release()


class GrantTable(_GrantTableFrames):
    """The granting domain's side: publish and revoke grants of its own frames.

    ``first_pfn``/``nr_frames`` say where the domain builder placed the table (the
    start info carries them). Entries 0..7 are reserved (0 console, 1 xenstore, as
    ``GNTTAB_NR_RESERVED_ENTRIES``); :meth:`grant_access` hands out refs from 8 up.
    """

    def __init__(self, memory: GuestMemory, first_pfn: int, nr_frames: int) -> None:
        super().__init__(memory, first_pfn, nr_frames)
        # Refs never handed out are counted, not listed: a table has 32768 of them.
        self._never_used = GNTTAB_NR_RESERVED_ENTRIES
        self._free_refs: list[int] = []
        self._handed_out: set[int] = set()

    @property
    def free_refs(self) -> int:
        return len(self._free_refs) + self.nr_entries - self._never_used

    def grant_access(self, domid: int, frame: int, readonly: bool = False) -> int:
        """Let ``domid`` map our ``frame``; returns the grant reference.

        Mirrors ``gnttab_grant_foreign_access``. Raises GrantError(GNTST_no_space)
        when the table is full and IndexError for a frame we do not have.
        """
        self.memory.check_frame(frame)
        if self._free_refs:
            ref = self._free_refs.pop()
        elif self._never_used < self.nr_entries:
            ref = self._never_used
            self._never_used += 1
        else:
            raise GrantError(GNTST.no_space, f"all {self.nr_entries} grant entries are in use")
        self._handed_out.add(ref)
        self.grant_access_ref(ref, domid, frame, readonly)
        return ref

    def grant_access_ref(self, ref: int, domid: int, frame: int, readonly: bool = False) -> None:
        """Fill entry ``ref`` (``gnttab_grant_foreign_access_ref``).

        domid and frame are stored first and the flags last, so a checker that sees
        ``GTF_permit_access`` also sees the domid and frame that go with it (stores
        are not reordered on x86-64).
        """
        self._check_ref(ref)
        self._u16[4 * ref + 1] = domid
        self._u32[2 * ref + 1] = frame
        self._u16[4 * ref] = GTF_permit_access | (GTF_readonly if readonly else 0)

    def end_access(self, ref: int) -> None:
        """Revoke grant ``ref`` and put it back on the free list.

        Mirrors ``gnttab_end_foreign_access_ref``: refused with
        GrantError(GNTST_general_error) while the peer still has it mapped.
        """
        if ref >= GNTTAB_NR_RESERVED_ENTRIES and ref not in self._handed_out:
            raise GrantError(GNTST.bad_gntref, f"grant ref {ref} was not handed out by grant_access")
        self.end_access_ref(ref)
        if ref >= GNTTAB_NR_RESERVED_ENTRIES:
            self._handed_out.discard(ref)
            self._free_refs.append(ref)

    def end_access_ref(self, ref: int) -> None:
        """Clear entry ``ref`` unless it is mapped (the ref is not freed)."""
        self._check_ref(ref)
        address = self.flags_address(ref)
        flags = self._u16[4 * ref]
        while True:
            if flags & (GTF_reading | GTF_writing):
                raise GrantError(
                    GNTST.general_error,
                    f"grant ref {ref} is still mapped by d{self._u16[4 * ref + 1]}; it can be revoked once unmapped",
                )
            found = cmpxchg16(address, flags, 0)
            if found == flags:
                return
            flags = found

    def query(self, ref: int) -> GrantEntry:
        """The entry as it stands now."""
        self._check_ref(ref)
        return self.read(ref)

    def _check_ref(self, ref: int) -> None:
        if not 0 <= ref < self.nr_entries:
            raise GrantError(GNTST.bad_gntref, f"grant ref {ref} is outside the table (0..{self.nr_entries - 1})")


@dataclass(frozen=True)
class GrantMapping:
    """What a successful ``GNTTABOP_map_grant_ref`` returns: a handle and the frame."""

    handle: int
    granter: int
    ref: int
    frame: int
    readonly: bool


@dataclass
class _ActiveGrant:
    """Xen's ``active_grant_entry``: how often a grant is pinned, and its frame."""

    frame: int
    readers: int = 0
    writers: int = 0


class GrantMapper:
    """The hypervisor's side of grant mapping: checks, pins and maptrack.

    ``tables(domid)`` returns the granter's table (or raises KeyError for an unknown
    domain). One GrantMapper serves every domain of a host, so a mapping is keyed by
    the mapper's domid and a handle, as Xen's per-domain maptrack is.
    """

    def __init__(self, tables: Callable[[int], _GrantTableFrames]) -> None:
        self._tables = tables
        self._active: dict[tuple[int, int], _ActiveGrant] = {}
        self._maptrack: dict[tuple[int, int], GrantMapping] = {}
        self._next_handle = 0

    def map_grant_ref(self, mapper: int, granter: int, ref: int, readonly: bool = False) -> GrantMapping:
        """Check grant ``ref`` of domain ``granter`` for ``mapper`` and pin it.

        The entry must permit access, name ``mapper`` as its grantee, not be
        read-only if a writable mapping is asked for, and name a frame inside the
        granter's memory. Each refusal is a GrantError with Xen's status.
        """
        table = self._table(granter)
        if not 0 <= ref < table.nr_entries:
            raise GrantError(GNTST.bad_gntref, f"bad grant ref {ref} for d{granter} (table has {table.nr_entries})")
        key = (granter, ref)
        active = self._active.get(key)
        self._set_status(table, ref, mapper, readonly)
        if active is None:
            frame = table.read(ref).frame  # read once; later changes by the granter are not seen
            if frame >= table.memory.nr_frames:
                self._clear_status(table, ref, readers=0, writers=0)
                raise GrantError(
                    GNTST.bad_page, f"grant ref {ref} of d{granter} names frame {frame}, outside its memory"
                )
            active = self._active[key] = _ActiveGrant(frame)
        if readonly:
            active.readers += 1
        else:
            active.writers += 1
        self._next_handle += 1
        mapping = GrantMapping(self._next_handle, granter, ref, active.frame, readonly)
        self._maptrack[(mapper, mapping.handle)] = mapping
        return mapping

    def unmap_grant_ref(self, mapper: int, handle: int) -> GrantMapping:
        """Drop mapping ``handle`` of ``mapper``; the last unmap clears reading/writing."""
        mapping = self._maptrack.pop((mapper, handle), None)
        if mapping is None:
            raise GrantError(GNTST.bad_handle, f"d{mapper} has no grant mapping with handle {handle}")
        key = (mapping.granter, mapping.ref)
        active = self._active[key]
        if mapping.readonly:
            active.readers -= 1
        else:
            active.writers -= 1
        try:
            table = self._tables(mapping.granter)
        except KeyError:
            table = None  # the granter is gone; its memory and table with it
        if active.readers == 0 and active.writers == 0:
            del self._active[key]
        if table is not None:
            self._clear_status(table, mapping.ref, active.readers, active.writers)
        return mapping

    def mappings_of(self, mapper: int) -> Iterator[GrantMapping]:
        """Every mapping ``mapper`` holds (for teardown of a dying domain)."""
        return (m for (dom, _), m in list(self._maptrack.items()) if dom == mapper)

    def mappings_of_granter(self, granter: int) -> Iterator[tuple[int, GrantMapping]]:
        """(mapper, mapping) for every mapping of ``granter``'s frames."""
        return ((dom, m) for (dom, _), m in list(self._maptrack.items()) if m.granter == granter)

    def mapping_count(self) -> int:
        """How many grant mappings exist, all mappers together."""
        return len(self._maptrack)

    def is_mapped(self, granter: int, ref: int) -> bool:
        return (granter, ref) in self._active

    def _table(self, granter: int) -> _GrantTableFrames:
        try:
            return self._tables(granter)
        except KeyError:
            raise GrantError(GNTST.bad_domain, f"no domain d{granter}") from None

    @staticmethod
    def _set_status(table: _GrantTableFrames, ref: int, mapper: int, readonly: bool) -> None:
        """Mark the entry in use, as ``_set_status_v1``: one CAS on the flags+domid word.

        Unlike Xen, the type and grantee are checked on every map, not only the
        first pin: a granter that rewrites a pinned entry gets no second mapping.
        """
        address = table.flags_address(ref)
        entry = table.read(ref)
        word = entry.flags | (entry.domid << 16)
        for _ in range(5):
            flags, domid = word & 0xFFFF, word >> 16
            if flags & GTF_type_mask != GTF_permit_access:
                raise GrantError(GNTST.general_error, f"grant ref {ref} does not permit access (flags {flags:#x})")
            if domid != mapper:
                raise GrantError(GNTST.general_error, f"grant ref {ref} is granted to d{domid}, not to d{mapper}")
            new_flags = flags | GTF_reading
            if not readonly:
                if flags & GTF_readonly:
                    raise GrantError(GNTST.general_error, f"grant ref {ref} is read-only; a writable mapping is refused")
                new_flags |= GTF_writing
            found = cmpxchg32(address, word, new_flags | (domid << 16))
            if found == word:
                return
            word = found
        raise GrantError(GNTST.general_error, f"grant ref {ref} is unstable (its entry keeps changing)")

    @staticmethod
    def _clear_status(table: _GrantTableFrames, ref: int, readers: int, writers: int) -> None:
        """Clear GTF_writing when no writer is left and GTF_reading when nobody is."""
        clear = (GTF_writing if writers == 0 else 0) | (GTF_reading if readers + writers == 0 else 0)
        if not clear:
            return
        address = table.flags_address(ref)
        flags = table.read(ref).flags
        while True:
            found = cmpxchg16(address, flags, flags & ~clear)
            if found == flags:
                return
            flags = found
