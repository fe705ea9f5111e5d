"""xenstored: per-domain quotas, each refused with C xenstored's error and no change."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.xenstored import Quotas, Xenstored
from xenlike.public.xs_wire import XsdSockmsgType

from .xenstored_support import err, fields, ok

T = XsdSockmsgType


def world(**quotas: int) -> SimpleNamespace:
    d = Xenstored(Quotas(**quotas))
    dom0 = d.connect(0)
    for domid in (1, 2):
        home = f"/local/domain/{domid}"
        ok(d, dom0, T.MKDIR, fields(home))
        ok(d, dom0, T.SET_PERMS, fields(home, "n0", f"r{domid}"))
        ok(d, dom0, T.MKDIR, fields(f"{home}/data"))
        ok(d, dom0, T.SET_PERMS, fields(f"{home}/data", f"n{domid}"))
    d1 = d.introduce_domain(1)
    d.drain()
    return SimpleNamespace(d=d, dom0=dom0, d1=d1)


def unchanged(w: SimpleNamespace):
    before = dict(w.d.store.nodes)
    return lambda: dict(w.d.store.nodes) == before


def test_defaults_are_c_xenstored_s() -> None:
    q = Quotas()
    assert (q.nodes, q.watches, q.transactions, q.node_size, q.node_permissions, q.path_max) == (
        1000,
        128,
        10,
        2048,
        5,
        2048,
    )
    assert q.transaction_nodes == 1024
    with pytest.raises(ValueError):
        Quotas(nodes=-1)


def test_nodes_quota_is_enospc_and_changes_nothing() -> None:
    w = world(nodes=5)
    assert w.d.store.owner_counts[1] == 1  # data/
    for i in range(4):
        ok(w.d, w.d1, T.WRITE, fields(f"data/n{i}") + b"v")
    assert w.d.store.owner_counts[1] == 5
    check = unchanged(w)
    assert err(w.d, w.d1, T.WRITE, fields("data/one-too-many") + b"v") == "ENOSPC"
    assert err(w.d, w.d1, T.MKDIR, fields("data/n0/sub")) == "ENOSPC"
    assert check()
    ok(w.d, w.d1, T.WRITE, fields("data/n0") + b"rewrite is fine")
    ok(w.d, w.d1, T.RM, fields("data/n3"))
    ok(w.d, w.d1, T.WRITE, fields("data/room") + b"v")


def test_multi_level_create_over_quota_creates_nothing() -> None:
    w = world(nodes=3)
    check = unchanged(w)
    assert err(w.d, w.d1, T.WRITE, fields("data/a/b/c") + b"v") == "ENOSPC"
    assert check()
    ok(w.d, w.d1, T.WRITE, fields("data/a/b") + b"v")


def test_nodes_given_to_a_domain_count_but_dom0_is_unlimited() -> None:
    w = world(nodes=2)
    for i in range(5):
        ok(w.d, w.dom0, T.WRITE, fields(f"/local/domain/1/data/by-dom0-{i}") + b"v")
    assert w.d.store.owner_counts[1] == 6
    assert err(w.d, w.d1, T.WRITE, fields("data/mine") + b"v") == "ENOSPC"


def test_watches_quota_is_e2big() -> None:
    w = world(watches=3)
    for i in range(3):
        ok(w.d, w.d1, T.WATCH, fields("data", f"t{i}"))
    out = w.d.handle(w.d1, T.WATCH, 1, 0, fields("data", "t3"))
    assert out[0].payload == b"E2BIG\0" and len(out) == 1
    assert len(w.d1.watches) == 3
    ok(w.d, w.d1, T.UNWATCH, fields("data", "t0"))
    ok(w.d, w.d1, T.WATCH, fields("data", "t3"))
    for i in range(10):
        ok(w.d, w.dom0, T.WATCH, fields("/", f"t{i}"))


def test_transactions_quota_is_enospc() -> None:
    w = world(transactions=2)
    first = int(ok(w.d, w.d1, T.TRANSACTION_START, b"\0")[:-1])
    ok(w.d, w.d1, T.TRANSACTION_START, b"\0")
    assert err(w.d, w.d1, T.TRANSACTION_START, b"\0") == "ENOSPC"
    assert len(w.d1.transactions) == 2
    ok(w.d, w.d1, T.TRANSACTION_END, b"F\0", first)
    ok(w.d, w.d1, T.TRANSACTION_START, b"\0")
    for _ in range(5):
        ok(w.d, w.dom0, T.TRANSACTION_START, b"\0")


def test_node_size_counts_header_perms_value_and_children() -> None:
    w = world()
    # 16-byte header + one 8-byte permission entry + value = 2048 exactly.
    ok(w.d, w.d1, T.WRITE, fields("data/fits") + b"v" * (2048 - 16 - 8))
    check = unchanged(w)
    assert err(w.d, w.d1, T.WRITE, fields("data/fits") + b"v" * (2048 - 16 - 8 + 1)) == "ENOSPC"
    assert err(w.d, w.d1, T.WRITE, fields("data/new") + b"v" * 2100) == "ENOSPC"
    assert check()
    ok(w.d, w.dom0, T.WRITE, fields("/local/domain/1/data/fits") + b"v" * 4000)


def test_node_size_includes_child_names() -> None:
    w = world(node_size=16 + 8 + 3 * 10)
    for i in range(3):
        ok(w.d, w.d1, T.MKDIR, fields(f"data/child-{i:03d}"))
    check = unchanged(w)
    assert err(w.d, w.d1, T.MKDIR, fields("data/child-003")) == "ENOSPC"
    assert check()


def test_permissions_per_node_quota() -> None:
    w = world()
    ok(w.d, w.d1, T.WRITE, fields("data/p") + b"v")
    ok(w.d, w.d1, T.SET_PERMS, fields("data/p", "n1", "r2", "r3", "r4", "r5"))
    check = unchanged(w)
    assert err(w.d, w.d1, T.SET_PERMS, fields("data/p", "n1", "r2", "r3", "r4", "r5", "r6")) == "ENOSPC"
    assert check()
    ok(w.d, w.dom0, T.SET_PERMS, fields("/local/domain/1/data/p", "n1", "r2", "r3", "r4", "r5", "r6", "r7"))


def test_path_length_quota_counts_below_the_domain_home() -> None:
    w = world(path_max=20)
    ok(w.d, w.d1, T.WRITE, fields("data/" + "x" * 15) + b"v")
    assert err(w.d, w.d1, T.WRITE, fields("data/" + "x" * 16) + b"v") == "EINVAL"
    assert err(w.d, w.d1, T.READ, fields("/" + "y" * 21)) == "EINVAL"
    ok(w.d, w.dom0, T.WRITE, fields("/local/domain/1/data/" + "x" * 100) + b"v")


def test_transaction_nodes_quota() -> None:
    w = world(transaction_nodes=2)
    tx = int(ok(w.d, w.d1, T.TRANSACTION_START, b"\0")[:-1])
    for _ in range(3):
        ok(w.d, w.d1, T.WRITE, fields("data") + b"v", tx)
    ok(w.d, w.d1, T.READ, fields("data"), tx)
    ok(w.d, w.d1, T.MKDIR, fields("data/a"), tx)  # touches data/a; data was touched already
    assert err(w.d, w.d1, T.MKDIR, fields("data/b"), tx) == "ENOSPC"
    assert err(w.d, w.d1, T.READ, fields("/local/domain/1"), tx) == "ENOSPC"
    ok(w.d, w.d1, T.TRANSACTION_END, b"T\0", tx)
    assert ok(w.d, w.d1, T.DIRECTORY, fields("data")) == b"a\0"


def test_node_quota_is_checked_again_at_commit() -> None:
    w = world(nodes=4)
    ok(w.d, w.d1, T.MKDIR, fields("data/left"))
    ok(w.d, w.d1, T.MKDIR, fields("data/right"))  # owns 3 now
    tx1 = int(ok(w.d, w.d1, T.TRANSACTION_START, b"\0")[:-1])
    tx2 = int(ok(w.d, w.d1, T.TRANSACTION_START, b"\0")[:-1])
    ok(w.d, w.d1, T.MKDIR, fields("data/left/a"), tx1)
    ok(w.d, w.d1, T.MKDIR, fields("data/right/b"), tx2)
    ok(w.d, w.d1, T.TRANSACTION_END, b"T\0", tx1)
    check = unchanged(w)
    assert err(w.d, w.d1, T.TRANSACTION_END, b"T\0", tx2) == "ENOSPC"
    assert check()


def test_quotas_change_at_run_time_per_domain_and_globally() -> None:
    w = world()
    ok(w.d, w.dom0, T.SET_QUOTA, fields("1", "nodes", "2"))
    ok(w.d, w.d1, T.MKDIR, fields("data/one"))
    assert err(w.d, w.d1, T.MKDIR, fields("data/two")) == "ENOSPC"
    ok(w.d, w.dom0, T.SET_QUOTA, fields("watches", "0"))
    assert err(w.d, w.d1, T.WATCH, fields("data", "t")) == "E2BIG"
    assert w.d.quotas.for_domain(1).nodes == 2
    assert w.d.quotas.for_domain(2).nodes == 1000
    w.d.release_domain(1)
    assert w.d.quotas.for_domain(1).nodes == 1000
