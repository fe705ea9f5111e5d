"""The granter's side of grant tables, version 1 (Linux's ``drivers/xen/grant-table.c``).

A domain shares one of its frames by writing a ``grant_entry_v1`` into its own
grant table, frames of its own memory (the layout and flags are
:mod:`xenlike.public.grant_table`). :class:`GrantTable` publishes and revokes
entries (``gnttab_grant_foreign_access``, ``gnttab_end_foreign_access_ref``);
:class:`GrantTableFrames` is the view of those frames both the granter and the
hypervisor's checks (:mod:`xenlike.hypervisor.grant_table`) read.
"""

from __future__ import annotations

import threading

from xenlike.kernel.memory import GuestMemory
from xenlike.public.atomic import cmpxchg16
from xenlike.public.gntalloc import is_gntalloc_frame
from xenlike.public.grant_table import (
    GNTST,
    GNTTAB_NR_RESERVED_ENTRIES,
    GRANT_ENTRIES_PER_FRAME,
    GRANT_ENTRY_SIZE,
    GrantEntry,
    GrantError,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
)

__all__ = ["GrantTableFrames", "GrantTable"]


class GrantTableFrames:
    """The grant table's frames in a domain's memory, viewed as entries.

    The granter's :class:`GrantTable` writes them; the hypervisor's
    ``GrantMapper`` reads them, and marks them in use, through its own view of
    the granter's memory.

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


class GrantTable(GrantTableFrames):
    """The granting domain's side: publish and revoke grants of its own frames.

    ``first_pfn``/``nr_frames`` say where the domain builder placed the table (the
    start info carries them). Entries 0..7 are reserved (0 console, 1 xenstore, as
    ``GNTTAB_NR_RESERVED_ENTRIES``); :meth:`grant_access` hands out refs from 8 up.
    Refs are handed out and taken back under a lock (``gnttab_list_lock``): the
    guest's drivers grant from their own threads.
    """

    def __init__(self, memory: GuestMemory, first_pfn: int, nr_frames: int) -> None:
        super().__init__(memory, first_pfn, nr_frames)
        # Refs never handed out are counted, not listed: a table has 32768 of them.
        self._never_used = GNTTAB_NR_RESERVED_ENTRIES
        self._free_refs: list[int] = []
        self._handed_out: set[int] = set()
        self._lock = threading.Lock()

    @property
    def free_refs(self) -> int:
        return len(self._free_refs) + self.nr_entries - self._never_used

    def grant_access(self, domid: int, frame: int, readonly: bool = False) -> int:
        """Let ``domid`` map our ``frame``; returns the grant reference.

        Mirrors ``gnttab_grant_foreign_access``. Raises GrantError(GNTST_no_space)
        when the table is full and IndexError for a frame we do not have. A
        pseudo-frame of pages allocated to share (:mod:`xenlike.public.gntalloc`)
        is granted as it is: the hypervisor knows whether it is ours.
        """
        if not is_gntalloc_frame(frame):
            self.memory.check_frame(frame)
        with self._lock:
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
        with self._lock:
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
