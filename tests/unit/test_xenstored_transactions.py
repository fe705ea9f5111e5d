"""xenstored: transactions, their private view and generation-count conflict detection."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.xenstored import Connection, Xenstored
from xenlike.public.xs_wire import XsdSockmsgType

from .xenstored_support import err, fields, ok

T = XsdSockmsgType


def start(d: Xenstored, conn: Connection) -> int:
    reply = ok(d, conn, T.TRANSACTION_START, b"\0")
    assert reply.endswith(b"\0") and reply[:-1].isdigit()
    return int(reply[:-1])


def write(d: Xenstored, conn: Connection, path: str, value: bytes, tx: int = 0) -> None:
    ok(d, conn, T.WRITE, fields(path) + value, tx)


def read(d: Xenstored, conn: Connection, path: str, tx: int = 0) -> bytes:
    return ok(d, conn, T.READ, fields(path), tx)


@pytest.fixture
def w() -> SimpleNamespace:
    d = Xenstored()
    a = d.connect(0)
    b = d.connect(0)
    for path in ("/t/x", "/t/y", "/u/z"):
        write(d, a, path, b"0")
    return SimpleNamespace(d=d, a=a, b=b)


def test_ids_are_decimal_per_connection_and_skip_zero(w: SimpleNamespace) -> None:
    assert start(w.d, w.a) == 1
    assert start(w.d, w.a) == 2
    assert start(w.d, w.b) == 1
    w.a.next_tx_id = 0xFFFFFFFF
    assert start(w.d, w.a) == 0xFFFFFFFF
    assert start(w.d, w.a) == 3  # wraps past 0 and the ids still open


def test_private_view_and_commit(w: SimpleNamespace) -> None:
    tx = start(w.d, w.a)
    write(w.d, w.a, "/t/x", b"in-tx", tx)
    write(w.d, w.a, "/t/new/deep", b"n", tx)
    ok(w.d, w.a, T.RM, fields("/u"), tx)
    assert read(w.d, w.a, "/t/x", tx) == b"in-tx"
    assert ok(w.d, w.a, T.DIRECTORY, fields("/t"), tx) == b"x\0y\0new\0"
    assert err(w.d, w.a, T.READ, fields("/u/z"), tx) == "ENOENT"
    assert read(w.d, w.b, "/t/x") == b"0"
    assert err(w.d, w.b, T.READ, fields("/t/new")) == "ENOENT"
    assert read(w.d, w.b, "/u/z") == b"0"
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx)
    assert read(w.d, w.b, "/t/x") == b"in-tx"
    assert read(w.d, w.b, "/t/new/deep") == b"n"
    assert err(w.d, w.b, T.READ, fields("/u")) == "ENOENT"
    assert err(w.d, w.a, T.READ, fields("/t/x"), tx) == "ENOENT"  # the id is gone


def test_abort_discards(w: SimpleNamespace) -> None:
    before = dict(w.d.store.nodes)
    tx = start(w.d, w.a)
    write(w.d, w.a, "/t/x", b"doomed", tx)
    ok(w.d, w.a, T.TRANSACTION_END, b"F\0", tx)
    assert dict(w.d.store.nodes) == before


@pytest.mark.parametrize(
    "outside",
    [
        lambda d, c: write(d, c, "/t/x", b"changed"),
        lambda d, c: write(d, c, "/t/x", b"0"),  # the value it holds: still a write, a new generation
        lambda d, c: ok(d, c, T.RM, fields("/t/x")),
        lambda d, c: ok(d, c, T.SET_PERMS, fields("/t/x", "r0")),
    ],
    ids=["write", "same-value-write", "rm", "set_perms"],
)
def test_changed_read_node_conflicts(w: SimpleNamespace, outside) -> None:
    tx = start(w.d, w.a)
    value = read(w.d, w.a, "/t/x", tx)
    write(w.d, w.a, "/t/y", value + b"+1", tx)
    outside(w.d, w.b)
    snapshot = dict(w.d.store.nodes)
    assert err(w.d, w.a, T.TRANSACTION_END, b"T\0", tx) == "EAGAIN"
    assert dict(w.d.store.nodes) == snapshot
    assert err(w.d, w.a, T.TRANSACTION_END, b"T\0", tx) == "ENOENT"


def test_node_read_as_absent_must_stay_absent(w: SimpleNamespace) -> None:
    tx = start(w.d, w.a)
    assert err(w.d, w.a, T.READ, fields("/t/flag"), tx) == "ENOENT"
    write(w.d, w.a, "/u/seen-no-flag", b"1", tx)
    write(w.d, w.b, "/t/flag", b"1")
    assert err(w.d, w.a, T.TRANSACTION_END, b"T\0", tx) == "EAGAIN"


def test_conflicting_writes_of_the_same_node(w: SimpleNamespace) -> None:
    tx1 = start(w.d, w.a)
    tx2 = start(w.d, w.b)
    write(w.d, w.a, "/t/x", b"a", tx1)
    write(w.d, w.b, "/t/x", b"b", tx2)
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx1)
    assert err(w.d, w.b, T.TRANSACTION_END, b"T\0", tx2) == "EAGAIN"
    assert read(w.d, w.a, "/t/x") == b"a"


def test_disjoint_transactions_both_commit(w: SimpleNamespace) -> None:
    tx1 = start(w.d, w.a)
    tx2 = start(w.d, w.b)
    write(w.d, w.a, "/t/x", read(w.d, w.a, "/t/x", tx1) + b"a", tx1)
    write(w.d, w.b, "/t/y", read(w.d, w.b, "/t/y", tx2) + b"b", tx2)
    write(w.d, w.a, "/u/z", b"outside")
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx1)
    ok(w.d, w.b, T.TRANSACTION_END, b"T\0", tx2)
    assert (read(w.d, w.a, "/t/x"), read(w.d, w.a, "/t/y")) == (b"0a", b"0b")


def test_crossed_read_write_sets_second_commit_fails(w: SimpleNamespace) -> None:
    # transaction.c example 4: TA1 reads A writes B, TA2 reads B writes A.
    tx1 = start(w.d, w.a)
    tx2 = start(w.d, w.b)
    read(w.d, w.a, "/t/x", tx1)
    read(w.d, w.b, "/t/y", tx2)
    write(w.d, w.a, "/t/y", b"1", tx1)
    write(w.d, w.b, "/t/x", b"2", tx2)
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx1)
    assert err(w.d, w.b, T.TRANSACTION_END, b"T\0", tx2) == "EAGAIN"


def test_first_read_is_current_not_a_snapshot(w: SimpleNamespace) -> None:
    tx = start(w.d, w.a)
    write(w.d, w.b, "/t/y", b"later")
    assert read(w.d, w.a, "/t/y", tx) == b"later"
    write(w.d, w.b, "/t/y", b"again")
    assert read(w.d, w.a, "/t/y", tx) == b"later"
    assert err(w.d, w.a, T.TRANSACTION_END, b"T\0", tx) == "EAGAIN"


def test_transaction_request_errors(w: SimpleNamespace) -> None:
    tx = start(w.d, w.a)
    assert err(w.d, w.a, T.TRANSACTION_START, b"\0", tx) == "EBUSY"
    assert err(w.d, w.a, T.TRANSACTION_START, b"\0", 999) == "ENOENT"
    assert err(w.d, w.a, T.TRANSACTION_END, b"T\0") == "ENOENT"
    assert err(w.d, w.a, T.TRANSACTION_END, b"X\0", tx) == "EINVAL"
    assert err(w.d, w.a, T.TRANSACTION_END, b"T", tx) == "EINVAL"
    assert err(w.d, w.b, T.READ, fields("/t/x"), tx) == "ENOENT"  # another connection's id
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx)


def test_created_then_removed_inside_leaves_no_trace(w: SimpleNamespace) -> None:
    tx = start(w.d, w.a)
    write(w.d, w.a, "/tmp/a/b", b"v", tx)
    ok(w.d, w.a, T.RM, fields("/tmp"), tx)
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx)
    assert w.d.store.get("/tmp") is None
    assert b"tmp" not in ok(w.d, w.a, T.DIRECTORY, fields("/"))


def test_generation_counts_grow_on_every_change(w: SimpleNamespace) -> None:
    g0 = w.d.store.get("/t/x").generation
    write(w.d, w.a, "/t/x", b"1")
    g1 = w.d.store.get("/t/x").generation
    tx = start(w.d, w.a)
    write(w.d, w.a, "/t/x", b"2", tx)
    ok(w.d, w.a, T.TRANSACTION_END, b"T\0", tx)
    g2 = w.d.store.get("/t/x").generation
    assert g0 < g1 < g2 == w.d.store.generation
