"""Pages a domU allocates for one peer: sealed memfds, the grant checks, unmap notifications."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from types import SimpleNamespace

import pytest

from xenlike.hypervisor.domain import Domain, FramePool
from xenlike.hypervisor.gntalloc import GntallocAreas
from xenlike.hypervisor.grant_table import DOMU_MAX_MAPPINGS, GrantMapper, grant_map, grant_unmap
from xenlike.hypervisor.hypercall import Refused
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.memory import GuestMemory
from xenlike.public.gntalloc import GNTALLOC_MAX_AREAS, GNTALLOC_MAX_PAGES, GNTALLOC_PFN_BASE
from xenlike.public.grant_table import GNTST, GrantError
from xenlike.public.xen import PAGE_SIZE

SERVER, CLIENT, THIRD = 3, 4, 5


def _domain(domid: int, memory: GuestMemory) -> Domain:
    return Domain(domid, f"g{domid}", memory.nr_frames, memory.nr_frames, 1, 1, memory)


@pytest.fixture
def host():
    memories = {domid: GuestMemory.create(16, f"test-gntalloc-{domid}") for domid in (SERVER, CLIENT, THIRD)}
    tables = {domid: GrantTable(memory, 1, 1) for domid, memory in memories.items()}
    sent: list[tuple[int, int]] = []
    pool = FramePool(10_000)
    areas = GntallocAreas(pool, lambda domid, port: sent.append((domid, port)))
    hv = SimpleNamespace(
        grants=GrantMapper(tables.__getitem__, areas.owns),
        gntalloc=areas,
        calling_channel=lambda: None,
        domains={domid: _domain(domid, memory) for domid, memory in memories.items()},
        pool=pool,
        sent=sent,
        tables=tables,
    )
    yield hv
    for domid in list(memories):
        areas.remove_domain(domid)
    for table in tables.values():
        table.release()
    for memory in memories.values():
        memory.close()


def test_an_area_is_a_sealed_memfd_of_exactly_its_pages(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 3)
    assert area.base >= GNTALLOC_PFN_BASE
    assert os.fstat(area.fd).st_size == 3 * PAGE_SIZE
    assert host.pool.free == 10_000 - 3
    seals = fcntl.fcntl(area.fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_SEAL
    for size in (PAGE_SIZE, 4 * PAGE_SIZE):  # neither side can resize it under the other
        with pytest.raises(PermissionError):
            os.ftruncate(area.fd, size)
    with pytest.raises(PermissionError):
        mmap.mmap(area.ro_fd, PAGE_SIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _share(host, granter: int, grantee: int, frame: int, readonly: bool = False) -> int:
    return host.tables[granter].grant_access(grantee, frame, readonly=readonly)


def test_the_peer_maps_the_area_and_gets_its_fd_not_the_granters_memory(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 2)
    refs = [_share(host, SERVER, CLIENT, area.base + i) for i in range(2)]
    result, fds = grant_map(host, host.domains[CLIENT], {"granter": SERVER, "refs": refs}, [])
    assert fds == [area.fd] and result["pages"] == [0, 1] and result["fd_index"] == [0, 0]
    assert os.fstat(fds[0]).st_size == 2 * PAGE_SIZE  # nothing else of the server is in it
    grant_unmap(host, host.domains[CLIENT], {"handles": result["handles"]}, [])
    assert host.grants.mapping_count() == 0


def test_a_read_only_grant_gives_a_read_only_fd(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 1)
    ref = _share(host, SERVER, CLIENT, area.base, readonly=True)
    result, fds = grant_map(host, host.domains[CLIENT], {"granter": SERVER, "refs": [ref], "readonly": True}, [])
    assert fds == [area.ro_fd]
    assert os.pread(fds[0], 1, 0) == b"\0"  # readable
    with pytest.raises(PermissionError):
        mmap.mmap(fds[0], PAGE_SIZE, prot=mmap.PROT_WRITE)


def test_an_ordinary_frame_of_a_domu_is_never_given_to_another_domu(host):
    ref = _share(host, SERVER, CLIENT, 5)
    with pytest.raises(GrantError) as err:
        grant_map(host, host.domains[CLIENT], {"granter": SERVER, "refs": [ref]}, [])
    assert err.value.status == GNTST.permission_denied
    assert host.grants.mapping_count() == 0  # all or none


def test_a_mix_of_area_and_ordinary_frames_is_refused_whole(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 1)
    refs = [_share(host, SERVER, CLIENT, area.base), _share(host, SERVER, CLIENT, 6)]
    with pytest.raises(GrantError):
        grant_map(host, host.domains[CLIENT], {"granter": SERVER, "refs": refs}, [])
    assert host.grants.mapping_count() == 0


def test_an_area_is_for_its_peer_alone(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 1)
    ref = _share(host, SERVER, THIRD, area.base)  # the granter names a third domain in the grant
    with pytest.raises(GrantError) as err:
        grant_map(host, host.domains[THIRD], {"granter": SERVER, "refs": [ref]}, [])
    assert err.value.status == GNTST.permission_denied


def test_frames_of_a_freed_area_no_longer_map(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 1)
    ref = _share(host, SERVER, CLIENT, area.base)
    host.gntalloc.free(SERVER, area.base)
    assert host.pool.free == 10_000
    with pytest.raises(GrantError) as err:
        grant_map(host, host.domains[CLIENT], {"granter": SERVER, "refs": [ref]}, [])
    assert err.value.status == GNTST.bad_page


def test_limits_per_domain(host):
    server = host.domains[SERVER]
    with pytest.raises(Refused) as err:
        host.gntalloc.alloc(server, CLIENT, GNTALLOC_MAX_PAGES + 1)
    assert err.value.errno == errno.EINVAL
    for _ in range(GNTALLOC_MAX_AREAS):
        host.gntalloc.alloc(server, CLIENT, 1)
    with pytest.raises(Refused, match="the limit is") as err:
        host.gntalloc.alloc(server, CLIENT, 1)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(Refused):
        host.gntalloc.alloc(server, SERVER, 1)  # with itself


def test_unmap_notifications_clear_the_byte_and_signal(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 2)
    view = mmap.mmap(area.fd, 2 * PAGE_SIZE)
    view[21] = 1  # srv_live
    view[PAGE_SIZE + 20] = 1
    host.gntalloc.set_notify(SERVER, area, area.base, 21, 9)
    host.gntalloc.set_notify(CLIENT, area, area.base + 1, 20, 11, handle=42)
    host.gntalloc.domain_died(SERVER)
    assert view[21] == 0 and view[PAGE_SIZE + 20] == 1 and host.sent == [(SERVER, 9)]
    host.gntalloc.domain_died(SERVER)  # once only
    assert host.sent == [(SERVER, 9)]
    host.gntalloc.unmapped(CLIENT, 41)  # another mapping of the page: not this one's
    assert view[PAGE_SIZE + 20] == 1
    host.gntalloc.unmapped(CLIENT, 42)
    assert view[PAGE_SIZE + 20] == 0 and host.sent == [(SERVER, 9), (CLIENT, 11)]
    view.close()


def test_freeing_fires_the_owners_notification(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 1)
    host.gntalloc.set_notify(SERVER, area, area.base, 21, 9)
    host.gntalloc.free(SERVER, area.base)
    assert host.sent == [(SERVER, 9)]
    with pytest.raises(Refused):
        host.gntalloc.free(SERVER, area.base)
    with pytest.raises(Refused):
        host.gntalloc.set_notify(SERVER, area, area.base, PAGE_SIZE, 9)


def test_a_domu_holds_a_bounded_number_of_mappings(host):
    area = host.gntalloc.alloc(host.domains[SERVER], CLIENT, 1)
    ref = _share(host, SERVER, CLIENT, area.base)
    client = host.domains[CLIENT]
    result, _ = grant_map(host, client, {"granter": SERVER, "refs": [ref] * DOMU_MAX_MAPPINGS}, [])
    with pytest.raises(GrantError) as err:
        grant_map(host, client, {"granter": SERVER, "refs": [ref]}, [])
    assert err.value.status == GNTST.no_device_space and "unmap some first" in str(err.value)
    grant_unmap(host, client, {"handles": result["handles"]}, [])
    assert host.grants.held_by(CLIENT) == 0
    grant_map(host, client, {"granter": SERVER, "refs": [ref]}, [])
