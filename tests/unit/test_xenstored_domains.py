"""xenstored: domain introduction and release, through the API and the wire."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.xenstored import Connection, Delivery, Xenstored
from xenlike.public.xs_wire import XsdSockmsgType, XsError, join_strings

T = XsdSockmsgType


def fields(*items: bytes | str) -> bytes:
    return join_strings(items)


def call(d: Xenstored, conn: Connection, msg_type: int, payload: bytes, tx: int = 0) -> list[Delivery]:
    return d.handle(conn, msg_type, 3, tx, payload)


def ok(d: Xenstored, conn: Connection, msg_type: int, payload: bytes, tx: int = 0) -> list[Delivery]:
    out = call(d, conn, msg_type, payload, tx)
    assert out[0].msg_type == msg_type, out[0].payload
    return out[1:]


def err(d: Xenstored, conn: Connection, msg_type: int, payload: bytes) -> str:
    out = call(d, conn, msg_type, payload)
    assert out[0].msg_type == T.ERROR, out[0].payload
    return out[0].payload[:-1].decode()


def paths(events: list[Delivery], conn: Connection) -> list[str]:
    return [e.payload.split(b"\0")[0].decode() for e in events if e.conn is conn]


@pytest.fixture
def w() -> SimpleNamespace:
    hooks: list[tuple] = []
    d = Xenstored(
        on_introduce=lambda conn, gfn, port: hooks.append(("introduce", conn, gfn, port)),
        on_release=lambda conn: hooks.append(("release", conn)),
    )
    dom0 = d.connect(0)
    ok(d, dom0, T.MKDIR, fields("/local/domain/5"))
    ok(d, dom0, T.SET_PERMS, fields("/local/domain/5", "n0", "r5"))
    for key in ("data", "device", "control/shutdown"):
        ok(d, dom0, T.MKDIR, fields(f"/local/domain/5/{key}"))
        ok(d, dom0, T.SET_PERMS, fields(f"/local/domain/5/{key}", "n5"))
    ok(d, dom0, T.WRITE, fields("/local/domain/5/device/vbd/51712/state") + b"1")
    ok(d, dom0, T.WRITE, fields("/local/domain/0/backend/vbd/5/51712/state") + b"2")
    ok(d, dom0, T.WATCH, fields("/local/domain/5", "home"))
    ok(d, dom0, T.WATCH, fields("@introduceDomain", "intro"))
    ok(d, dom0, T.WATCH, fields("@releaseDomain", "rel"))
    return SimpleNamespace(d=d, dom0=dom0, hooks=hooks)


def test_introduce_message_creates_the_ring_connection(w: SimpleNamespace) -> None:
    events = ok(w.d, w.dom0, T.INTRODUCE, fields("5", "-1234", "17"))
    conn = w.d.domain_connection(5)
    assert conn is not None and conn.domid == 5 and not conn.privileged and conn.is_domain
    assert w.hooks == [("introduce", conn, -1234, 17)]
    assert paths(events, w.dom0) == ["@introduceDomain"]
    assert w.d.is_domain_introduced(5)
    assert call(w.d, conn, T.READ, fields("device/vbd/51712/state"))[0].payload == b"1"


@pytest.mark.parametrize(
    "payload",
    [
        fields("5", "0"),
        fields("5", "0", "0"),
        fields("0", "0", "3"),
        fields("32752", "0", "3"),
        fields("x", "0", "3"),
        fields("5", "z", "3"),
    ],
)
def test_bad_introduce_is_einval(w: SimpleNamespace, payload: bytes) -> None:
    assert err(w.d, w.dom0, T.INTRODUCE, payload) == "EINVAL"
    assert w.hooks == []


def test_introduce_hook_failure_undoes_it() -> None:
    def refuse(conn: Connection, gfn: int, port: int) -> None:
        raise XsError("ENOMEM")

    d = Xenstored(on_introduce=refuse)
    dom0 = d.connect()
    ok(d, dom0, T.WATCH, fields("@introduceDomain", "t"))
    out = call(d, dom0, T.INTRODUCE, fields("3", "0", "9"))
    assert out == [Delivery(dom0, T.ERROR, 3, 0, b"ENOMEM\0")]
    assert not d.is_domain_introduced(3)
    assert d.domain_connection(3) is None


def test_introducing_again_resets_watches_and_fires_nothing(w: SimpleNamespace) -> None:
    conn = w.d.introduce_domain(5)
    assert paths(w.d.drain(), w.dom0) == ["@introduceDomain"]
    ok(w.d, conn, T.WATCH, fields("data", "mine"))
    ok(w.d, conn, T.TRANSACTION_START, b"\0")
    assert w.d.introduce_domain(5) is conn
    assert conn.watches == [] and conn.transactions == {}
    assert w.d.drain() == []


def test_release_tears_down_and_removes_owned_nodes(w: SimpleNamespace) -> None:
    conn = w.d.introduce_domain(5)
    w.d.drain()
    ok(w.d, conn, T.WATCH, fields("data", "mine"))
    ok(w.d, conn, T.WRITE, fields("data/by-guest") + b"v")
    events = ok(w.d, w.dom0, T.RELEASE, fields("5"))
    assert w.hooks[-1] == ("release", conn)
    assert conn.closed and not w.d.is_domain_introduced(5)
    assert call(w.d, conn, T.READ, fields("data")) == []
    assert all(e.conn is not conn for e in events)
    # Guest-owned subtrees go; dom0-owned nodes (its home, the backend) stay.
    assert w.d.store.get("/local/domain/5/data") is None
    assert w.d.store.get("/local/domain/5/device/vbd/51712/state") is None
    assert w.d.store.get("/local/domain/5/control/shutdown") is None
    assert w.d.store.get("/local/domain/5/control") is not None
    assert w.d.store.get("/local/domain/5") is not None
    assert w.d.store.get("/local/domain/0/backend/vbd/5/51712/state") is not None
    assert w.d.store.owner_counts[5] == 0
    seen = paths(events, w.dom0)
    assert seen[-1] == "@releaseDomain"
    assert set(seen[:-1]) == {"/local/domain/5/data", "/local/domain/5/device", "/local/domain/5/control/shutdown"}


def test_release_removes_only_that_domains_topmost_nodes_in_tree_order() -> None:
    d = Xenstored()
    dom0 = d.connect(0)
    for domid in (7, 8):
        for key in ("zeta", "alpha", "alpha/inner", "mid"):
            ok(d, dom0, T.WRITE, fields(f"/local/domain/{domid}/{key}") + b"v")
        for key in ("zeta", "alpha", "alpha/inner"):
            ok(d, dom0, T.SET_PERMS, fields(f"/local/domain/{domid}/{key}", f"n{domid}"))
        d.introduce_domain(domid)
    ok(d, dom0, T.WATCH, fields("/local", "all"))
    d.drain()
    d.release_domain(7)
    # Each owned subtree fires once, at its root, in the order of the parent's children (not sorted).
    assert paths(d.drain(), dom0) == ["/local/domain/7/zeta", "/local/domain/7/alpha"]
    assert sorted(p for p in d.store.nodes if p.startswith("/local/domain/7/")) == ["/local/domain/7/mid"]
    assert len([p for p in d.store.nodes if p.startswith("/local/domain/8/")]) == 4
    assert d.store.owned_by(7) == frozenset() and d.store.owner_counts[8] == 3


def test_release_with_keep_orphans_gives_nodes_to_dom0() -> None:
    d = Xenstored(keep_orphans=True)
    dom0 = d.connect()
    ok(d, dom0, T.WRITE, fields("/local/domain/6/data/x") + b"v")
    ok(d, dom0, T.SET_PERMS, fields("/local/domain/6/data", "n6", "r0"))
    ok(d, dom0, T.SET_PERMS, fields("/local/domain/6/data/x", "b6"))
    d.introduce_domain(6)
    d.release_domain(6)
    assert d.store.nodes["/local/domain/6/data/x"].value == b"v"
    assert [str(p) for p in d.store.nodes["/local/domain/6/data"].perms] == ["n0", "r0"]
    assert [str(p) for p in d.store.nodes["/local/domain/6/data/x"].perms] == ["b0"]


def test_release_errors(w: SimpleNamespace) -> None:
    assert err(w.d, w.dom0, T.RELEASE, fields("0")) == "EINVAL"
    assert err(w.d, w.dom0, T.RELEASE, fields("9")) == "ENOENT"
    assert err(w.d, w.dom0, T.RELEASE, b"9") == "EINVAL"
    with pytest.raises(XsError) as info:
        w.d.release_domain(9)
    assert info.value.errno_name == "ENOENT"
    with pytest.raises(XsError):
        w.d.introduce_domain(0)


def test_api_events_go_to_the_sink() -> None:
    sent: list[Delivery] = []
    d = Xenstored(sink=sent.append)
    tools = d.connect()
    ok(d, tools, T.WATCH, fields("@introduceDomain", "i"))
    d.introduce_domain(4)
    assert [e.payload for e in sent] == [b"@introduceDomain\0i\0"]
    assert d.drain() == []


def test_domain_ids_in_special_events_with_depth(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.WATCH, fields("@introduceDomain", "which", "1"))
    w.d.introduce_domain(5)
    assert paths(w.d.drain(), w.dom0) == ["@introduceDomain", "@introduceDomain/5"]


def test_reset_connection_for_ring_reconnection(w: SimpleNamespace) -> None:
    conn = w.d.introduce_domain(5)
    ok(w.d, conn, T.WATCH, fields("data", "t"))
    w.d.reset_connection(conn)
    assert conn.watches == [] and not conn.closed
    assert call(w.d, conn, T.READ, fields("/local/domain/5"))[0].msg_type == T.READ


def test_refused_reintroduction_leaves_the_connection_alone() -> None:
    calls: list[int] = []

    def once_only(conn: Connection, gfn: int, port: int) -> None:
        calls.append(port)
        if len(calls) > 1:
            raise XsError("EBUSY")

    d = Xenstored(on_introduce=once_only)
    dom0 = d.connect()
    ok(d, dom0, T.INTRODUCE, fields("4", "0", "1"))
    conn = d.domain_connection(4)
    assert conn is not None
    ok(d, conn, T.WATCH, fields("/", "t"))
    assert err(d, dom0, T.INTRODUCE, fields("4", "0", "2")) == "EBUSY"
    assert calls == [1, 2]
    assert len(conn.watches) == 1 and d.domain_connection(4) is conn
