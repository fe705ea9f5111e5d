"""xenstored: the permission model (owner + ACL, inheritance, EACCES without leaks)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.xenstored import Xenstored
from xenlike.public.xs_wire import XsdSockmsgType

from .xenstored_support import err, fields, introduce_both, ok, two_guests

T = XsdSockmsgType


@pytest.fixture
def w() -> SimpleNamespace:
    world = two_guests(name=lambda domid: b"guest")
    for domid in (1, 2):
        ok(world.d, world.dom0, T.WRITE, fields(f"/local/domain/{domid}/data/secret") + b"s")
    return introduce_both(world)


def perms(d: Xenstored, path: str) -> list[str]:
    return [str(p) for p in d.store.nodes[path].perms]


@pytest.mark.parametrize(
    "msg_type,payload",
    [
        (T.READ, fields("/local/domain/2/data/secret")),
        (T.DIRECTORY, fields("/local/domain/2/data")),
        (T.GET_PERMS, fields("/local/domain/2/data/secret")),
        (T.WRITE, fields("/local/domain/2/data/secret") + b"mine"),
        (T.WRITE, fields("/local/domain/2/data/new") + b"mine"),
        (T.MKDIR, fields("/local/domain/2/data/newdir")),
        (T.RM, fields("/local/domain/2/data/secret")),
        (T.RM, fields("/local/domain/2/data")),
        (T.SET_PERMS, fields("/local/domain/2/data/secret", "b1")),
        (T.WRITE, fields("/local/domain/1/name") + b"renamed"),
        (T.WRITE, fields("/local/domain/1/newkey") + b"v"),
        (T.RM, fields("/local/domain/1/name")),
        (T.WRITE, fields("/tool/xenstored/x") + b"v"),
        (T.WRITE, fields("/vm/uuid") + b"v"),
        (T.DIRECTORY_PART, fields("/local/domain/2/data", "0")),
    ],
)
def test_domu_refused_other_domains_nodes_and_nothing_changes(
    w: SimpleNamespace, msg_type: int, payload: bytes
) -> None:
    before = dict(w.d.store.nodes)
    assert err(w.d, w.d1, msg_type, payload) == "EACCES"
    assert dict(w.d.store.nodes) == before


def test_missing_nodes_under_unreadable_parents_are_eacces_not_enoent(w: SimpleNamespace) -> None:
    assert err(w.d, w.d1, T.READ, fields("/local/domain/2/data/nothing")) == "EACCES"
    assert err(w.d, w.d1, T.READ, fields("/local/domain/2/nothing/deeper")) == "EACCES"
    assert err(w.d, w.d1, T.READ, fields("/nonexistent")) == "EACCES"
    # Where the nearest existing ancestor is readable, absence is no secret.
    assert err(w.d, w.d1, T.READ, fields("/local/domain/1/nothing")) == "ENOENT"
    assert err(w.d, w.d1, T.READ, fields("data/nothing")) == "ENOENT"


def test_rm_of_missing_node_follows_the_same_rule(w: SimpleNamespace) -> None:
    ok(w.d, w.d1, T.RM, fields("data/absent"))
    assert err(w.d, w.d1, T.RM, fields("/local/domain/2/data/absent")) == "EACCES"


def test_domu_reads_its_home_but_cannot_write_it(w: SimpleNamespace) -> None:
    assert ok(w.d, w.d1, T.READ, fields("name")) == b"guest"
    assert ok(w.d, w.d1, T.DIRECTORY, fields("/local/domain/1")) == b"name\0data\0"
    assert err(w.d, w.d1, T.WRITE, fields("name") + b"x") == "EACCES"


def test_created_nodes_inherit_with_the_creator_as_owner(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.MKDIR, fields("/shared"))
    ok(w.d, w.dom0, T.SET_PERMS, fields("/shared", "r0", "b1", "w2"))
    ok(w.d, w.d1, T.WRITE, fields("/shared/a/b") + b"v")
    assert perms(w.d, "/shared/a") == ["r1", "b1", "w2"]
    assert perms(w.d, "/shared/a/b") == ["r1", "b1", "w2"]
    # A privileged creator keeps the inherited owner.
    ok(w.d, w.dom0, T.WRITE, fields("/local/domain/1/data/from-dom0") + b"v")
    assert perms(w.d, "/local/domain/1/data/from-dom0") == ["n1"]
    ok(w.d, w.d1, T.WRITE, fields("data/from-self") + b"v")
    assert perms(w.d, "/local/domain/1/data/from-self") == ["n1"]


def test_acl_entries_override_the_default(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.WRITE, fields("/acl") + b"v")
    ok(w.d, w.dom0, T.SET_PERMS, fields("/acl", "r0", "w1"))
    # Domain 1 has its own entry (write only); domain 2 falls back to entry 0.
    assert err(w.d, w.d1, T.READ, fields("/acl")) == "EACCES"
    ok(w.d, w.d1, T.WRITE, fields("/acl") + b"by1")
    assert ok(w.d, w.d2, T.READ, fields("/acl")) == b"by1"
    assert err(w.d, w.d2, T.WRITE, fields("/acl") + b"by2") == "EACCES"
    ok(w.d, w.dom0, T.SET_PERMS, fields("/acl", "n0", "n1", "b1"))
    assert err(w.d, w.d1, T.READ, fields("/acl")) == "EACCES"  # first entry for the domain wins


def test_only_the_owner_sets_perms_and_only_dom0_changes_owner(w: SimpleNamespace) -> None:
    ok(w.d, w.d1, T.WRITE, fields("data/x") + b"v")
    ok(w.d, w.d1, T.SET_PERMS, fields("data/x", "n1", "b2"))
    assert ok(w.d, w.d2, T.READ, fields("/local/domain/1/data/x")) == b"v"
    ok(w.d, w.d2, T.WRITE, fields("/local/domain/1/data/x") + b"by2")
    assert err(w.d, w.d2, T.SET_PERMS, fields("/local/domain/1/data/x", "b2")) == "EACCES"
    assert err(w.d, w.d1, T.SET_PERMS, fields("data/x", "n2")) == "EPERM"
    assert perms(w.d, "/local/domain/1/data/x") == ["n1", "b2"]
    owned_1 = w.d.store.owner_counts[1]
    ok(w.d, w.dom0, T.SET_PERMS, fields("/local/domain/1/data/x", "n2"))
    assert perms(w.d, "/local/domain/1/data/x") == ["n2"]
    assert w.d.store.owner_counts[1] == owned_1 - 1
    assert ok(w.d, w.d2, T.GET_PERMS, fields("/local/domain/1/data/x")) == b"n2\0"


def test_rm_removes_the_whole_subtree_whoever_owns_it(w: SimpleNamespace) -> None:
    ok(w.d, w.d1, T.WRITE, fields("data/t/inner") + b"v")
    ok(w.d, w.dom0, T.SET_PERMS, fields("/local/domain/1/data/t/inner", "n0"))
    ok(w.d, w.d1, T.RM, fields("data/t"))
    assert w.d.store.get("/local/domain/1/data/t/inner") is None


@pytest.mark.parametrize(
    "msg_type,payload",
    [
        (T.CONTROL, fields("check")),
        (T.INTRODUCE, fields("5", "0", "1")),
        (T.RELEASE, fields("2")),
        (T.IS_DOMAIN_INTRODUCED, fields("2")),
        (T.RESUME, fields("2")),
        (T.SET_TARGET, fields("1", "2")),
        (T.SET_FEATURE, fields("1", "0")),
        (T.GET_QUOTA, fields("nodes")),
        (T.SET_QUOTA, fields("nodes", "99999")),
        (T.GET_FEATURE, fields("2")),
    ],
)
def test_dom0_only_requests_refused_to_domu(w: SimpleNamespace, msg_type: int, payload: bytes) -> None:
    before = dict(w.d.store.nodes)
    assert err(w.d, w.d1, msg_type, payload) == "EACCES"
    assert dict(w.d.store.nodes) == before
    assert w.d.is_domain_introduced(2)
    assert w.d.quotas.get("nodes") == 1000


def test_unprivileged_socket_acts_as_its_domain(w: SimpleNamespace) -> None:
    sock = w.d.connect(1, privileged=False)
    assert ok(w.d, sock, T.READ, fields("name")) == b"guest"
    assert err(w.d, sock, T.READ, fields("/local/domain/2/data/secret")) == "EACCES"


def test_set_target_gives_a_device_model_its_targets_rights(w: SimpleNamespace) -> None:
    assert err(w.d, w.d2, T.READ, fields("/local/domain/1/data/secret")) == "EACCES"
    ok(w.d, w.dom0, T.SET_TARGET, fields("2", "1"))
    assert ok(w.d, w.d2, T.READ, fields("/local/domain/1/data/secret")) == b"s"
    ok(w.d, w.d2, T.WRITE, fields("/local/domain/1/data/secret") + b"dm")
    # Entries naming the target count for the device model too.
    assert ok(w.d, w.d2, T.READ, fields("/local/domain/1/name")) == b"guest"
