"""A back end maps frames of the front end's memory, and refuses a page the guest allocated to share.

A guest may grant dom0 a gntalloc page: the hypervisor then answers ``grant_map``
with that area's fd and a pseudo-frame past the end of the guest's memory, and a
worker that mapped the frame from the guest's memfd died of SIGBUS at its first
touch (and kept the fd). :func:`map_frames` closes the fds, unmaps such a batch
and refuses it, so the back end names the bad grant as it names any other.
"""

from __future__ import annotations

import os

import pytest

from dom0.grant_cache import GrantRefused, PersistentGrants, map_frames
from xenlike.kernel.hypercall import HypercallError
from xenlike.kernel.memory import GuestMemory
from xenlike.public.gntalloc import GNTALLOC_PFN_BASE


class _Hypervisor:
    """``grant_map`` answered as the hypervisor answers dom0 for a gntalloc page (its area's fd beside it)."""

    def __init__(self, gntalloc: bool) -> None:
        self.gntalloc = gntalloc
        self.unmapped: list[int] = []
        self.handed: list[int] = []  # the fds given out, which the caller must close

    def call(self, op: str, **args):
        if op == "grant_unmap":
            self.unmapped += args["handles"]
            return {}, []
        assert op == "grant_map"
        refs = args["refs"]
        handles = list(range(1, len(refs) + 1))
        if not self.gntalloc:
            return {"frames": [8 + i for i in range(len(refs))], "handles": handles}, []
        r, w = os.pipe()
        os.close(w)
        self.handed.append(r)
        result = {"frames": [GNTALLOC_PFN_BASE + i for i in range(len(refs))], "handles": handles}
        result.update(fd_index=[0] * len(refs), pages=list(range(len(refs))))
        return result, [r]


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_frames_of_the_guest_s_memory_map_as_before():
    assert map_frames(_Hypervisor(gntalloc=False), 1, [8, 9], writable=True) == ([8, 9], [1, 2])


def test_a_gntalloc_page_is_unmapped_again_refused_and_its_fd_closed():
    hypervisor = _Hypervisor(gntalloc=True)
    with pytest.raises(HypercallError, match="allocated to share"):
        map_frames(hypervisor, 1, [8], writable=True)
    assert hypervisor.unmapped == [1] and all(map(_closed, hypervisor.handed))


def test_persistent_grants_name_the_gntalloc_grant_and_map_nothing():
    memory = GuestMemory.create(64, "test-grant-cache")
    hypervisor = _Hypervisor(gntalloc=True)
    grants = PersistentGrants(hypervisor, 1, memory.fd, 8, True)
    try:
        with pytest.raises(GrantRefused, match="grant 8: .*allocated to share"):
            grants.ensure_mapped([8], writable=True)
        assert grants.slot_of == {} and all(map(_closed, hypervisor.handed))
    finally:
        grants.close()
        memory.close()
