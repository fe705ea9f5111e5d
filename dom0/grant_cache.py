"""Persistent grants: a back end's cache of the front end's pages it has mapped (Linux blkback's ``persistent_gnt``).

A front end that advertises ``feature-persistent`` reuses the same granted pages
for its I/O, so a back end maps each grant once and keeps it. The pages live in
one :class:`~xenlike.kernel.memory.ForeignArena`, placed in the order a request
first names them, so a run of pages the front end hands out together is one
contiguous range here (one I/O vector). Every map goes through the hypervisor
(``grant_map``), which checks that the grant is to dom0 and, for a writable map,
that it was not granted read-only. A page first mapped read-only and then needed
writable is mapped again; persistent grants are mapped writable when the front
end allows it, so a page first used for a write serves later reads without a
second map. Any back end may use it (netback's tx path maps grants the same way).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from xenlike.kernel.hypercall import HypercallClient, HypercallError
from xenlike.kernel.memory import ForeignArena

__all__ = ["GrantRefused", "PersistentGrants", "map_frames"]


def map_frames(
    hypercall: HypercallClient, granter: int, refs: list[int], writable: bool
) -> tuple[list[int], list[int]]:
    """``grant_map`` for a back end: the frames of the front end's memory ``refs`` grant, and their handles.

    A back end maps frames of the front end's memory (its memfd). A guest may also
    grant a page it allocated to share (gntalloc), which is no such frame: the
    hypervisor answers with that area's fd instead, and mapping the frame number
    from the memfd would fault the worker (SIGBUS). Such a batch is unmapped again
    and refused as the hypervisor refuses a bad grant (HypercallError, EINVAL).
    """
    result, fds = hypercall.call("grant_map", granter=granter, refs=refs, readonly=not writable)
    for fd in fds:
        os.close(fd)
    if any(page is not None for page in result.get("pages") or ()):
        hypercall.call("grant_unmap", handles=result["handles"])
        raise HypercallError(
            errno.EINVAL, f"d{granter} granted a page it allocated to share (gntalloc): a back end maps its frames"
        )
    return result["frames"], result["handles"]


class GrantRefused(Exception):
    """The hypervisor refused to map a grant the front end named."""

    def __init__(self, gref: int, reason: str) -> None:
        super().__init__(f"grant {gref}: {reason}")
        self.gref = gref


@dataclass
class _Grant:
    slot: int  # where the page is in the arena
    handle: int
    writable: bool


class PersistentGrants:
    """Up to ``capacity`` of one front end's grants, mapped into one arena and kept until :meth:`unmap_all`."""

    def __init__(
        self, hypercall: HypercallClient, granter: int, memory_fd: int, capacity: int, persistent: bool = True
    ) -> None:
        self.hypercall = hypercall
        self.granter = granter
        self.capacity = capacity
        self.persistent = persistent  # False: the owner unmaps after every request
        self.maps = 0  # grants mapped so far (blkback's counter of the same name)
        # Bumped by every map and unmap: what was checked against the mappings holds
        # while it stays the same (blkback's remembered indirect runs).
        self.generation = 0
        self.arena = ForeignArena(memory_fd, capacity)
        # Every mapped grant, by gref; the two indexes below answer "which of these
        # grefs are not mapped (writable)?" with one set operation per request.
        self._grants: dict[int, _Grant] = {}
        self.slot_of: dict[int, int] = {}
        self.writable: set[int] = set()  # the grefs mapped writable
        self._free_slots = list(reversed(range(capacity)))  # lowest first, so runs stay adjacent

    @property
    def view(self) -> memoryview:
        """The arena: grant ``g``'s page is at ``slot_of[g] * PAGE_SIZE``."""
        return self.arena.view

    def __len__(self) -> int:
        return len(self._grants)

    def ensure_mapped(self, grefs: list[int], writable: bool) -> None:
        """Map every gref not mapped yet (or only read-only, when ``writable``), in one hypercall.

        The missing ones go into free slots in the order given. A full cache is
        emptied first. Raises :class:`GrantRefused` naming the first gref the
        hypervisor refused; the others stay mapped.
        """
        needed = set(grefs).difference(self.writable if writable else self.slot_of)
        if not needed:
            return
        if len(self._grants) + len(needed) > self.capacity:
            self.unmap_all()  # make room; every gref of this request is then missing
            needed = set(grefs)
        missing = list(dict.fromkeys(g for g in grefs if g in needed))
        for gref in missing:
            if gref in self._grants:
                self._unmap(gref)  # read-only, and now needed writable
        modes = (True,) if writable else (True, False) if self.persistent else (False,)
        for mode in modes:
            try:
                self._install(missing, self._map(missing, mode), mode)
                return
            except HypercallError:
                continue
        # Refused in every mode: map one by one, so the bad gref is named and the good ones kept.
        for gref in missing:
            self._map_one(gref, modes)

    def unmap_all(self) -> None:
        """Unmap every grant in one hypercall: the front end may then end access to them."""
        if not self._grants:
            return
        handles = [self._forget(gref).handle for gref in list(self._grants)]
        self._free_slots = list(reversed(range(self.capacity)))
        self.hypercall.call("grant_unmap", handles=handles)

    def close(self) -> None:
        self.unmap_all()
        self.arena.close()

    def _map_one(self, gref: int, modes: tuple[bool, ...]) -> None:
        error: HypercallError | None = None
        for mode in modes:
            try:
                self._install([gref], self._map([gref], mode), mode)
                return
            except HypercallError as exc:
                error = exc
        raise GrantRefused(gref, (error.strerror if error else None) or "refused")

    def _install(self, grefs: list[int], mapped: list[tuple[int, int]], writable: bool) -> None:
        for gref, (frame, handle) in zip(grefs, mapped):
            slot = self._free_slots.pop()
            self.arena.map(slot, frame, writable=writable)
            self._grants[gref] = _Grant(slot, handle, writable)
            self.slot_of[gref] = slot
            if writable:
                self.writable.add(gref)
        self.maps += len(grefs)
        self.generation += 1

    def _map(self, refs: list[int], writable: bool) -> list[tuple[int, int]]:
        frames, handles = map_frames(self.hypercall, self.granter, refs, writable)
        return list(zip(frames, handles))

    def _forget(self, gref: int) -> _Grant:
        grant = self._grants.pop(gref)
        del self.slot_of[gref]
        self.writable.discard(gref)
        self.arena.unmap(grant.slot)
        self._free_slots.append(grant.slot)
        self.generation += 1
        return grant

    def _unmap(self, gref: int) -> None:
        self.hypercall.call("grant_unmap", handles=[self._forget(gref).handle])
