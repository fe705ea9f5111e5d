"""grant_map and grant_copy as a guest calls them: all or nothing, and pinned while they use a grant.

A batch of refs with one that is no ref used to leave the refs before it mapped
(the rollback caught GrantError alone): a domU could pin another domU's grant,
which it may never map, so the granter could not revoke it. A grant copy checked
its grants and unmapped them before copying, so the granter could revoke a grant
(and reuse the frame) between the check and the write.
"""

from __future__ import annotations

import pytest

from xenlike.hypervisor import grant_table
from xenlike.kernel.gnttab import GrantTable
from xenlike.public.grant_table import GrantError
from xenlike.public.start_info import GNTTAB_PFN

from .hypervisor_support import InProcessHost

FRAME = 40


@pytest.fixture
def host(tmp_path):
    host = InProcessHost(tmp_path)
    yield host
    host.close()


def _granter_table(host: InProcessHost, domid: int) -> GrantTable:
    """The granter's own view of its grant table (what its kernel writes)."""
    domain = host.hv.domains[domid]
    return GrantTable(domain.memory, GNTTAB_PFN, domain.gnttab_frames)


@pytest.mark.parametrize("bad", ["x", None, True, 1.0, [3]])
def test_a_batch_with_a_ref_that_is_no_ref_maps_nothing(host, bad):
    mapper, _granter = host.domu(1), host.domu(2)
    table = _granter_table(host, 2)
    ref = table.grant_access(1, FRAME)
    reply = host.call(mapper, "grant_map", granter=2, refs=[ref, bad])
    assert not reply["ok"] and reply["errno"] == "EINVAL"
    assert host.hv.grants.held_by(1) == 0
    table.end_access(ref)  # nothing of d1's holds it: the granter takes it back
    table.release()


def test_a_batch_refused_for_any_reason_leaves_nothing_mapped(host, monkeypatch):
    mapper, _granter = host.domu(1), host.domu(2)
    table = _granter_table(host, 2)
    refs = [table.grant_access(1, FRAME), table.grant_access(1, FRAME + 1)]
    calls = []
    real = host.hv.grants.map_grant_ref

    def second_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(12, "out of memory in the middle of the batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(host.hv.grants, "map_grant_ref", second_fails)
    reply = host.call(mapper, "grant_map", granter=2, refs=refs)
    assert not reply["ok"]
    assert host.hv.grants.held_by(1) == 0
    for ref in refs:
        table.end_access(ref)
    table.release()


def test_a_grant_copy_keeps_its_grants_pinned_until_the_copy_is_done(host, monkeypatch):
    """The granter's revoke in the middle of a copy is refused: the grant is in use."""
    copier, _granter = host.domu(1), host.domu(2)
    table = _granter_table(host, 2)
    ref = table.grant_access(1, FRAME)
    revoked: list[object] = []
    real = grant_table._copy_side

    def revoke_after_checking(hv, caller, side, length, write, pinned):
        view = real(hv, caller, side, length, write, pinned)
        if write:  # both sides checked, the copy not yet done: the granter tries to take its grant back
            try:
                table.end_access(ref)
                revoked.append(True)
            except GrantError as exc:
                revoked.append(str(exc))  # not the exception: its traceback would hold this frame's view
        return view

    monkeypatch.setattr(grant_table, "_copy_side", revoke_after_checking)
    ops = [{"len": 8, "source": {"gmfn": 20}, "dest": {"domid": 2, "ref": ref}}]
    reply = host.call(copier, "grant_copy", ops=ops)
    assert reply["ok"] and reply["result"]["status"] == [0]
    assert len(revoked) == 1 and "still mapped by d1" in str(revoked[0]), revoked
    table.end_access(ref)  # after the copy it may
    assert host.hv.grants.held_by(1) == 0
    table.release()
