"""The hypervisor's side of grant tables (``xen/common/grant_table.c``): checks, pins, maptrack.

When a domain asks to map a grant (``GNTTABOP_map_grant_ref``), :class:`GrantMapper`
checks the granter's entry, marks it in use with ``GTF_reading``/``GTF_writing``
by an atomic compare-and-swap on the flags and domid word, exactly as Xen's
``_set_status_v1`` does, and keeps the maptrack handle that
``GNTTABOP_unmap_grant_ref`` takes back. Because the mark and the granter's revoke
are both compare-and-swaps on the same word, a grant can never be revoked while
it is mapped.

The functions at the end are the ``GNTTABOP_*`` hypercalls (``do_grant_table_op``).
Every domain's maps are checked, but only dom0 is given the frames: it holds every
domU's memfd, as a privileged domain may map foreign memory. Other domains copy
(``grant_copy``), or map pages their peer allocated for them
(:mod:`xenlike.hypervisor.gntalloc`): for those the answer is the small memfd of
that allocation and each page's index in it, never the granter's own memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Result
from xenlike.kernel import trace
from xenlike.kernel.gnttab import GrantTableFrames
from xenlike.public.atomic import cmpxchg16, cmpxchg32
from xenlike.public.grant_table import (
    GNTST,
    GRANT_COMBO_DOMID_SHIFT,
    GRANT_COMBO_FLAGS_MASK,
    GrantError,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_type_mask,
    GTF_writing,
)
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import PAGE_SIZE

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["GrantMapping", "GrantMapper", "grant_map", "grant_unmap", "grant_copy"]

log = logging.getLogger("xenlike.hypervisor")

# The grant mappings a domU may hold at once (its maptrack: 16 of Xen's maptrack
# frames of 256 entries; dom0's back ends are not limited here).
DOMU_MAX_MAPPINGS = 4096
# How often marking an entry in use is tried while the granter keeps changing it
# (``_set_status_v1`` gives up on its fifth try: "Shared grant entry is unstable").
SET_STATUS_ATTEMPTS = 5


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

    def __init__(
        self,
        tables: Callable[[int], GrantTableFrames],
        allocated: Callable[[int, int], bool] | None = None,
        written: Callable[[int, int], None] | None = None,
    ) -> None:
        self._tables = tables
        # written(granter, frame): a writable mapping came or went (log-dirty mode marks the frame).
        self._written = written
        # allocated(granter, frame): a pseudo-frame of pages the granter allocated to share (gntalloc).
        self._allocated = allocated
        self._active: dict[tuple[int, int], _ActiveGrant] = {}
        self._maptrack: dict[tuple[int, int], GrantMapping] = {}
        self._held: dict[int, int] = {}  # mappings per mapper
        # The maptrack keys by mapper and by granter, so a dying domain's teardown costs its own mappings only.
        self._by_mapper: dict[int, set[tuple[int, int]]] = {}
        self._by_granter: dict[int, set[tuple[int, int]]] = {}
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
            if frame >= table.memory.nr_frames and not (self._allocated and self._allocated(granter, frame)):
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
        self._held[mapper] = self._held.get(mapper, 0) + 1
        self._by_mapper.setdefault(mapper, set()).add((mapper, mapping.handle))
        self._by_granter.setdefault(granter, set()).add((mapper, mapping.handle))
        if not readonly and self._written is not None:
            self._written(granter, active.frame)
        return mapping

    def unmap_grant_ref(self, mapper: int, handle: int) -> GrantMapping:
        """Drop mapping ``handle`` of ``mapper``; the last unmap clears reading/writing."""
        mapping = self._maptrack.pop((mapper, handle), None)
        if mapping is None:
            raise GrantError(GNTST.bad_handle, f"d{mapper} has no grant mapping with handle {handle}")
        self._held[mapper] -= 1
        _discard(self._by_mapper, mapper, (mapper, handle))
        _discard(self._by_granter, mapping.granter, (mapper, handle))
        key = (mapping.granter, mapping.ref)
        active = self._active[key]
        if mapping.readonly:
            active.readers -= 1
        else:
            active.writers -= 1
            if self._written is not None:
                self._written(mapping.granter, mapping.frame)
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
        keys = list(self._by_mapper.get(mapper, ()))
        return (self._maptrack[key] for key in keys if key in self._maptrack)

    def mappings_of_granter(self, granter: int) -> Iterator[tuple[int, GrantMapping]]:
        """(mapper, mapping) for every mapping of ``granter``'s frames."""
        keys = list(self._by_granter.get(granter, ()))
        return ((key[0], self._maptrack[key]) for key in keys if key in self._maptrack)

    def held_by(self, mapper: int) -> int:
        """How many grant mappings ``mapper`` holds."""
        return self._held.get(mapper, 0)

    def mapping_count(self) -> int:
        """How many grant mappings exist, all mappers together."""
        return len(self._maptrack)

    def is_mapped(self, granter: int, ref: int) -> bool:
        return (granter, ref) in self._active

    def _table(self, granter: int) -> GrantTableFrames:
        try:
            return self._tables(granter)
        except KeyError:
            raise GrantError(GNTST.bad_domain, f"no domain d{granter}") from None

    @staticmethod
    def _set_status(table: GrantTableFrames, ref: int, mapper: int, readonly: bool) -> None:
        """Mark the entry in use, as ``_set_status_v1``: one CAS on the flags+domid word.

        Unlike Xen, the type and grantee are checked on every map, not only the
        first pin: a granter that rewrites a pinned entry gets no second mapping.
        """
        address = table.flags_address(ref)
        entry = table.read(ref)
        word = entry.flags | (entry.domid << GRANT_COMBO_DOMID_SHIFT)
        for _ in range(SET_STATUS_ATTEMPTS):
            flags, domid = word & GRANT_COMBO_FLAGS_MASK, word >> GRANT_COMBO_DOMID_SHIFT
            if flags & GTF_type_mask != GTF_permit_access:
                raise GrantError(GNTST.general_error, f"grant ref {ref} does not permit access (flags {flags:#x})")
            if domid != mapper:
                raise GrantError(GNTST.general_error, f"grant ref {ref} is granted to d{domid}, not to d{mapper}")
            new_flags = flags | GTF_reading
            if not readonly:
                if flags & GTF_readonly:
                    raise GrantError(
                        GNTST.general_error, f"grant ref {ref} is read-only; a writable mapping is refused"
                    )
                new_flags |= GTF_writing
            found = cmpxchg32(address, word, new_flags | (domid << GRANT_COMBO_DOMID_SHIFT))
            if found == word:
                return
            word = found
        raise GrantError(GNTST.general_error, f"grant ref {ref} is unstable (its entry keeps changing)")

    @staticmethod
    def _clear_status(table: GrantTableFrames, ref: int, readers: int, writers: int) -> None:
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


# --------------------------------------------------------------------------------
# The hypercalls (do_grant_table_op).


def grant_map(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """GNTTABOP_map_grant_ref, batched: every ref of ``granter`` checked and pinned, all or none.

    The checks run for every domain, so a guest learns what is wrong with a
    grant; the frames of the granter's memory are then given to dom0 alone, which
    runs the back ends. Pages the granter allocated for the caller (gntalloc) are
    given to it as that allocation's memfd: ``fd_index[i]`` names the returned fd
    holding the i-th ref's page and ``pages[i]`` its page index there (None for a
    frame of the granter's memory).
    """
    granter, readonly, refs = args["granter"], bool(args.get("readonly", False)), args["refs"]
    if not isinstance(refs, list) or not all(type(ref) is int for ref in refs):
        raise GrantError(GNTST.bad_gntref, "refs must be a list of grant references (integers)")
    if not caller.privileged and hv.grants.held_by(caller.domid) + len(refs) > DOMU_MAX_MAPPINGS:
        raise GrantError(
            GNTST.no_device_space,
            f"{caller.label} holds {hv.grants.held_by(caller.domid)} grant mappings; a domU may hold "
            f"{DOMU_MAX_MAPPINGS}: unmap some first",
        )
    done = []
    try:
        for ref in refs:
            done.append(hv.grants.map_grant_ref(caller.domid, granter, ref, readonly))
        areas = [hv.gntalloc.find(granter, m.frame) for m in done]
        if not caller.privileged and not all(area is not None and area.peer == caller.domid for area in areas):
            raise GrantError(
                GNTST.permission_denied,
                f"{caller.label} may not map d{granter}'s memory: only dom0 runs back ends; use grant_copy, "
                "or have the granter share pages it allocated for this domain (gntalloc)",
            )
    except BaseException:  # all or none, whatever stopped the batch
        for mapping in done:
            hv.grants.unmap_grant_ref(caller.domid, mapping.handle)
        raise
    handles = [m.handle for m in done]
    channel = hv.calling_channel()
    if channel is not None:
        channel.grant_handles.update(handles)
    if trace.mask[0] & TraceClass.GRANT:
        trace.emit(
            Event.GRANT_MAP,
            {
                "granter": granter,
                "refs": trace.summary(args["refs"]),
                "handles": trace.summary(handles),
                "readonly": readonly,
            },
            domid=caller.domid,
        )
    result: dict = {"frames": [m.frame for m in done], "handles": handles}
    if not any(areas):
        return result, []
    area_fds: list[int] = []
    result["fd_index"], result["pages"] = [], []
    for mapping, area in zip(done, areas, strict=True):
        if area is None:
            result["fd_index"].append(None)
            result["pages"].append(None)
            continue
        fd = area.ro_fd if mapping.readonly else area.fd
        if fd not in area_fds:
            area_fds.append(fd)
        result["fd_index"].append(area_fds.index(fd))
        result["pages"].append(mapping.frame - area.base)
    return result, area_fds


def grant_unmap(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """GNTTABOP_unmap_grant_ref, batched: give back mappings by handle."""
    channel = hv.calling_channel()
    for handle in args["handles"]:
        mapping = hv.grants.unmap_grant_ref(caller.domid, handle)
        hv.gntalloc.unmapped(caller.domid, mapping.handle)
        if channel is not None:
            channel.grant_handles.discard(handle)
    if trace.mask[0] & TraceClass.GRANT:
        trace.emit(Event.GRANT_UNMAP, {"handles": trace.summary(args["handles"])}, domid=caller.domid)
    return {}, []


def grant_copy(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """GNTTABOP_copy: each op copies within one page, checked against the grants."""
    statuses = []
    for op in args["ops"]:
        pinned: list[int] = []  # the grants each side was checked against stay mapped until the copy is done
        try:
            length = op["len"]
            source = _copy_side(hv, caller, op["source"], length, False, pinned)
            dest = _copy_side(hv, caller, op["dest"], length, True, pinned)
            dest[:] = source
            statuses.append(GNTST.okay)
        except GrantError as exc:
            log.info("%s: grant copy refused: %s", caller.label, exc)
            statuses.append(exc.status)
        finally:
            for handle in pinned:
                hv.grants.unmap_grant_ref(caller.domid, handle)
    if trace.mask[0] & TraceClass.GRANT:
        copied = sum(op["len"] for op, status in zip(args["ops"], statuses) if status == GNTST.okay)
        failed = sum(status != GNTST.okay for status in statuses)
        trace.emit(Event.GRANT_COPY, {"ops": len(statuses), "bytes": copied, "failed": failed}, domid=caller.domid)
    return {"status": statuses}, []


def _copy_side(hv: Hypervisor, caller: Domain, side: dict, length: int, write: bool, pinned: list[int]) -> memoryview:
    """One side of a copy op as a view of its bytes; a grant it names is mapped, its handle added to ``pinned``."""
    offset = side.get("offset", 0)
    if not (0 <= offset and 0 < length and offset + length <= PAGE_SIZE):
        raise GrantError(GNTST.bad_copy_arg, f"a copy of {length} bytes at offset {offset} crosses a page")
    domid = side.get("domid", caller.domid)
    if "ref" in side:
        mapping = hv.grants.map_grant_ref(caller.domid, domid, side["ref"], readonly=not write)
        pinned.append(mapping.handle)  # so the granter cannot revoke it before the copy is done
        frame = mapping.frame
    else:
        if domid != caller.domid:
            raise GrantError(GNTST.permission_denied, f"{caller.label} names d{domid}'s frame without a grant")
        frame = side["gmfn"]
        if write:
            hv.mark_dirty(domid, frame)  # the hypervisor writes it through its own mapping
    memory = hv.domains[domid].memory
    try:
        return memory.frame(frame)[offset : offset + length]
    except IndexError as exc:
        raise GrantError(GNTST.bad_page, str(exc)) from None


def _discard(index: dict[int, set[tuple[int, int]]], domid: int, key: tuple[int, int]) -> None:
    keys = index.get(domid)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[domid]
