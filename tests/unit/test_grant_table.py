"""Grant tables v1: the granter's side and the hypervisor's checks."""

from __future__ import annotations

import struct
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.memory import GuestMemory
from xenlike.public.grant_table import (
    GNTST,
    GNTTAB_NR_RESERVED_ENTRIES,
    GTF_permit_access,
    GTF_reading,
    GTF_readonly,
    GTF_writing,
    GrantError,
)

GRANTER, DOM0, OTHER = 3, 0, 7


@pytest.fixture
def table():
    memory = GuestMemory.create(32, "test-gnttab")
    grants = GrantTable(memory, 1, 1)
    yield grants
    grants.release()
    memory.close()


@pytest.fixture
def mapper(table):
    return GrantMapper({GRANTER: table}.__getitem__)


def test_entry_layout_is_v1(table):
    ref = table.grant_access(DOM0, 17, readonly=True)
    raw = table.memory.frame(1)[ref * 8 : ref * 8 + 8]
    assert struct.unpack("<HHI", raw) == (GTF_permit_access | GTF_readonly, DOM0, 17)
    assert ref == GNTTAB_NR_RESERVED_ENTRIES  # 0..7 are reserved (console, xenstore, ...)


def test_map_sets_reading_and_writing_and_unmap_clears(table, mapper):
    ref = table.grant_access(DOM0, 5)
    mapping = mapper.map_grant_ref(DOM0, GRANTER, ref)
    assert mapping.frame == 5 and not mapping.readonly
    assert table.query(ref).flags & (GTF_reading | GTF_writing) == GTF_reading | GTF_writing
    mapper.unmap_grant_ref(DOM0, mapping.handle)
    assert not table.query(ref).in_use


def test_map_of_an_ungranted_ref_is_refused(mapper):
    with pytest.raises(GrantError, match="does not permit access") as err:
        mapper.map_grant_ref(DOM0, GRANTER, 20)
    assert err.value.status == GNTST.general_error


def test_map_by_the_wrong_domain_is_refused(table, mapper):
    ref = table.grant_access(DOM0, 5)
    with pytest.raises(GrantError, match="granted to d0, not to d7"):
        mapper.map_grant_ref(OTHER, GRANTER, ref)
    assert not table.query(ref).in_use


def test_writable_map_of_a_read_only_grant_is_refused(table, mapper):
    ref = table.grant_access(DOM0, 5, readonly=True)
    with pytest.raises(GrantError, match="read-only"):
        mapper.map_grant_ref(DOM0, GRANTER, ref)
    mapping = mapper.map_grant_ref(DOM0, GRANTER, ref, readonly=True)
    assert table.query(ref).flags & (GTF_reading | GTF_writing) == GTF_reading
    mapper.unmap_grant_ref(DOM0, mapping.handle)


def test_end_access_while_mapped_is_refused(table, mapper):
    ref = table.grant_access(DOM0, 5)
    mapping = mapper.map_grant_ref(DOM0, GRANTER, ref)
    with pytest.raises(GrantError, match="still mapped"):
        table.end_access(ref)
    assert table.query(ref).type == GTF_permit_access
    mapper.unmap_grant_ref(DOM0, mapping.handle)
    table.end_access(ref)
    assert table.query(ref).flags == 0


def test_bad_ref_bad_domain_bad_frame_bad_handle(table, mapper):
    with pytest.raises(GrantError) as err:
        mapper.map_grant_ref(DOM0, GRANTER, table.nr_entries)
    assert err.value.status == GNTST.bad_gntref
    with pytest.raises(GrantError) as err:
        mapper.map_grant_ref(DOM0, 99, 8)
    assert err.value.status == GNTST.bad_domain
    ref = table.grant_access(DOM0, 0)
    table.memory.frame(1)[ref * 8 + 4 : ref * 8 + 8] = struct.pack("<I", 10_000)  # a forged frame
    with pytest.raises(GrantError) as err:
        mapper.map_grant_ref(DOM0, GRANTER, ref)
    assert err.value.status == GNTST.bad_page
    assert not table.query(ref).in_use
    with pytest.raises(GrantError) as err:
        mapper.unmap_grant_ref(DOM0, 12345)
    assert err.value.status == GNTST.bad_handle


def test_grant_of_a_frame_we_do_not_have_is_refused(table):
    with pytest.raises(IndexError):
        table.grant_access(DOM0, 32)


def test_end_access_of_a_ref_never_handed_out_is_refused(table):
    with pytest.raises(GrantError) as err:
        table.end_access(8)
    assert err.value.status == GNTST.bad_gntref
    assert table.grant_access(DOM0, 1) != table.grant_access(DOM0, 2)


def test_table_full(table):
    for _ in range(table.free_refs):
        table.grant_access(DOM0, 1)
    with pytest.raises(GrantError) as err:
        table.grant_access(DOM0, 1)
    assert err.value.status == GNTST.no_space


class GrantStates(RuleBasedStateMachine):
    """Random grant/map/unmap/end-access sequences against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = GuestMemory.create(16, "test-gnttab-model")
        self.table = GrantTable(self.memory, 1, 1)
        self.mapper = GrantMapper({GRANTER: self.table}.__getitem__)
        self.granted: dict[int, tuple[int, bool]] = {}  # ref -> (grantee, readonly)
        self.maps: dict[int, tuple[int, int, bool]] = {}  # handle -> (mapper, ref, readonly)

    def teardown(self) -> None:
        self.table.release()
        self.memory.close()

    @rule(grantee=st.sampled_from([DOM0, OTHER]), frame=st.integers(0, 15), readonly=st.booleans())
    def grant(self, grantee: int, frame: int, readonly: bool) -> None:
        ref = self.table.grant_access(grantee, frame, readonly)
        assert ref not in self.granted
        self.granted[ref] = (grantee, readonly)

    @rule(who=st.sampled_from([DOM0, OTHER]), ref=st.integers(0, 40), readonly=st.booleans())
    def map(self, who: int, ref: int, readonly: bool) -> None:
        grant = self.granted.get(ref)
        allowed = grant is not None and grant[0] == who and (readonly or not grant[1])
        try:
            mapping = self.mapper.map_grant_ref(who, GRANTER, ref, readonly)
        except GrantError:
            assert not allowed
            return
        assert allowed
        self.maps[mapping.handle] = (who, ref, readonly)

    @rule(data=st.data())
    def unmap(self, data) -> None:
        if not self.maps:
            return
        handle = data.draw(st.sampled_from(sorted(self.maps)))
        who, _, _ = self.maps.pop(handle)
        self.mapper.unmap_grant_ref(who, handle)

    @rule(ref=st.integers(8, 40))
    def end_access(self, ref: int) -> None:
        refusable = ref not in self.granted or any(r == ref for _, r, _ in self.maps.values())
        try:
            self.table.end_access(ref)
        except GrantError:
            assert refusable
            return
        assert not refusable
        del self.granted[ref]

    @invariant()
    def flags_follow_the_mappings(self) -> None:
        for ref in range(8, 41):
            flags = self.table.query(ref).flags
            mine = [ro for _, r, ro in self.maps.values() if r == ref]
            assert bool(flags & GTF_reading) == bool(mine)
            assert bool(flags & GTF_writing) == (False in mine)


GrantStates.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestGrantStates = GrantStates.TestCase



def test_one_ref_revoked_by_two_threads_at_once_goes_back_on_the_free_list_once(table, monkeypatch):
    """The second revoke is refused as a ref never handed out, not put on the free list twice.

    The first thread is held inside its revoke while the second starts its own;
    with the list lock (``gnttab_list_lock``) the second waits, then finds the ref free.
    """
    ref = table.grant_access(DOM0, 5)
    entered, release = threading.Event(), threading.Event()
    real = table.end_access_ref

    def held(which: int) -> None:
        if threading.current_thread().name == "first":
            entered.set()
            assert release.wait(10)
        real(which)

    monkeypatch.setattr(table, "end_access_ref", held)
    errors: list[BaseException] = []

    def revoke() -> None:
        try:
            table.end_access(ref)
        except GrantError as exc:
            errors.append(exc)

    first = threading.Thread(target=revoke, name="first")
    second = threading.Thread(target=revoke, name="second")
    first.start()
    assert entered.wait(10)
    second.start()
    second.join(0.2)
    release.set()
    first.join(10)
    second.join(10)
    assert [e.status for e in errors] == [GNTST.bad_gntref]
    assert table._free_refs.count(ref) == 1
