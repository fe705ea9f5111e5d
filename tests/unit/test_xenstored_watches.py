"""xenstored: watches, their events, and who may hear them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.xenstored import Connection, Delivery, Xenstored
from xenlike.public.xs_wire import XsdSockmsgType, join_strings

T = XsdSockmsgType


def fields(*items: bytes | str) -> bytes:
    return join_strings(items)


def send(d: Xenstored, conn: Connection, msg_type: int, payload: bytes, tx: int = 0) -> list[Delivery]:
    out = d.handle(conn, msg_type, 5, tx, payload)
    assert out[0].msg_type == msg_type, out[0].payload
    return out[1:]


def events_for(deliveries: list[Delivery], conn: Connection) -> list[tuple[str, str]]:
    out = []
    for delivery in deliveries:
        if delivery.conn is conn:
            assert delivery.msg_type == T.WATCH_EVENT
            assert (delivery.req_id, delivery.tx_id) == (0, 0)
            path, token, tail = delivery.payload.split(b"\0")
            assert tail == b""
            out.append((path.decode(), token.decode()))
    return out


def watch(d: Xenstored, conn: Connection, path: str, token: str, *extra: str) -> None:
    out = send(d, conn, T.WATCH, fields(path, token, *extra))
    assert len(out) == 1  # the immediate event


@pytest.fixture
def w() -> SimpleNamespace:
    d = Xenstored()
    dom0 = d.connect(0)
    tools = d.connect(0)
    for domid in (1, 2):
        home = f"/local/domain/{domid}"
        send(d, dom0, T.MKDIR, fields(home))
        send(d, dom0, T.SET_PERMS, fields(home, "n0", f"r{domid}"))
        send(d, dom0, T.MKDIR, fields(f"{home}/data"))
        send(d, dom0, T.SET_PERMS, fields(f"{home}/data", f"n{domid}"))
    d1 = d.introduce_domain(1)
    d2 = d.introduce_domain(2)
    d.drain()
    return SimpleNamespace(d=d, dom0=dom0, tools=tools, d1=d1, d2=d2)


def test_new_watch_fires_once_at_once_after_the_reply(w: SimpleNamespace) -> None:
    out = w.d.handle(w.tools, T.WATCH, 9, 0, fields("/not/there", "tok"))
    assert out[0] == Delivery(w.tools, T.WATCH, 9, 0, b"OK\0")
    assert out[1:] == [Delivery(w.tools, T.WATCH_EVENT, 0, 0, b"/not/there\0tok\0")]


def test_changes_at_or_below_fire_others_do_not(w: SimpleNamespace) -> None:
    watch(w.d, w.tools, "/a", "A")
    ev = send(w.d, w.dom0, T.WRITE, fields("/a/b/c") + b"v")
    assert events_for(ev, w.tools) == [("/a/b/c", "A")]
    ev = send(w.d, w.dom0, T.WRITE, fields("/a") + b"v")
    assert events_for(ev, w.tools) == [("/a", "A")]
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/ab") + b"v"), w.tools) == []
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/other") + b"v"), w.tools) == []
    assert events_for(send(w.d, w.dom0, T.MKDIR, fields("/a/b")), w.tools) == []  # exists: no change
    assert events_for(send(w.d, w.dom0, T.MKDIR, fields("/a/new")), w.tools) == [("/a/new", "A")]
    assert events_for(send(w.d, w.dom0, T.SET_PERMS, fields("/a/b", "r0")), w.tools) == [("/a/b", "A")]


def test_root_watch_sees_everything_and_several_watches_all_fire(w: SimpleNamespace) -> None:
    watch(w.d, w.tools, "/", "root")
    watch(w.d, w.tools, "/x", "x1")
    watch(w.d, w.tools, "/x", "x2")
    ev = send(w.d, w.dom0, T.WRITE, fields("/x/y") + b"v")
    assert events_for(ev, w.tools) == [("/x/y", "root"), ("/x/y", "x1"), ("/x/y", "x2")]


def test_removal_events(w: SimpleNamespace) -> None:
    for p in ("/r/a/b", "/r/a/c", "/r/z"):
        send(w.d, w.dom0, T.WRITE, fields(p) + b"v")
    watch(w.d, w.tools, "/r", "top")
    watch(w.d, w.tools, "/r/a/b", "leaf")
    watch(w.d, w.tools, "/r/a/b/never", "ghost")
    ev = send(w.d, w.dom0, T.RM, fields("/r/a"))
    # Descendants fire only watches set on them; the removed root fires upward.
    assert events_for(ev, w.tools) == [("/r/a/b", "leaf"), ("/r/a", "top")]
    assert events_for(send(w.d, w.dom0, T.RM, fields("/r/a")), w.tools) == []


def test_relative_watches_get_relative_paths(w: SimpleNamespace) -> None:
    out = w.d.handle(w.d1, T.WATCH, 1, 0, fields("data", "rel"))
    assert events_for(out[1:], w.d1) == [("data", "rel")]
    ev = send(w.d, w.dom0, T.WRITE, fields("/local/domain/1/data/k") + b"v")
    assert events_for(ev, w.d1) == [("data/k", "rel")]
    send(w.d, w.d1, T.UNWATCH, fields("data", "rel"))
    watch(w.d, w.d1, "/local/domain/1/data", "abs")
    ev = send(w.d, w.d1, T.WRITE, fields("data/k") + b"w")
    assert events_for(ev, w.d1) == [("/local/domain/1/data/k", "abs")]


def test_watch_depth(w: SimpleNamespace) -> None:
    watch(w.d, w.tools, "/d", "d0", "0")
    watch(w.d, w.tools, "/d", "d1", "1")
    watch(w.d, w.tools, "/", "r1", "1")
    ev = send(w.d, w.dom0, T.WRITE, fields("/d") + b"v")
    assert events_for(ev, w.tools) == [("/d", "d0"), ("/d", "d1"), ("/d", "r1")]
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/d/e") + b"v"), w.tools) == [("/d/e", "d1")]
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/d/e/f") + b"v"), w.tools) == []


def test_no_event_for_nodes_the_watcher_cannot_read(w: SimpleNamespace) -> None:
    watch(w.d, w.d2, "/local/domain/1/data", "spy")
    watch(w.d, w.d1, "data", "own")
    ev = send(w.d, w.dom0, T.WRITE, fields("/local/domain/1/data/secret") + b"s")
    assert events_for(ev, w.d2) == []
    assert events_for(ev, w.d1) == [("data/secret", "own")]
    ev = send(w.d, w.dom0, T.RM, fields("/local/domain/1/data/secret"))
    assert events_for(ev, w.d2) == []
    assert events_for(ev, w.d1) == [("data/secret", "own")]


def test_readable_parent_or_old_permissions_let_the_event_through(w: SimpleNamespace) -> None:
    send(w.d, w.dom0, T.WRITE, fields("/pub") + b"")
    send(w.d, w.dom0, T.SET_PERMS, fields("/pub", "r0"))
    send(w.d, w.dom0, T.WRITE, fields("/pub/hidden") + b"v")
    send(w.d, w.dom0, T.SET_PERMS, fields("/pub/hidden", "n0"))
    watch(w.d, w.d2, "/pub", "p")
    # The node itself is unreadable, but its parent is (watch.c watch_permitted).
    ev = send(w.d, w.dom0, T.WRITE, fields("/pub/hidden") + b"w")
    assert events_for(ev, w.d2) == [("/pub/hidden", "p")]
    send(w.d, w.dom0, T.WRITE, fields("/priv/x") + b"v")
    send(w.d, w.dom0, T.SET_PERMS, fields("/priv/x", "r0"))
    watch(w.d, w.d2, "/priv/x", "q")
    # Losing read access is itself announced (watch.c uses the old permissions).
    ev = send(w.d, w.dom0, T.SET_PERMS, fields("/priv/x", "n0"))
    assert events_for(ev, w.d2) == [("/priv/x", "q")]
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/priv/x") + b"w"), w.d2) == []


def test_unwatch_duplicates_and_bad_watches(w: SimpleNamespace) -> None:
    watch(w.d, w.tools, "/u", "t")
    out = w.d.handle(w.tools, T.WATCH, 1, 0, fields("/u", "t"))
    assert out[0].payload == b"EEXIST\0" and len(out) == 1
    watch(w.d, w.tools, "/u", "other-token")
    send(w.d, w.tools, T.UNWATCH, fields("/u", "t"))
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/u") + b"v"), w.tools) == [("/u", "other-token")]
    assert w.d.handle(w.tools, T.UNWATCH, 1, 0, fields("/u", "t"))[0].payload == b"ENOENT\0"
    for bad in (fields("/u"), fields("/u", "t", "x"), fields("bad path", "t"), fields("@releaseDomain", "t", "2")):
        assert w.d.handle(w.tools, T.WATCH, 1, 0, bad)[0].payload == b"EINVAL\0"


def test_special_watches(w: SimpleNamespace) -> None:
    watch(w.d, w.tools, "@introduceDomain", "intro")
    watch(w.d, w.tools, "@releaseDomain", "rel")
    watch(w.d, w.tools, "@releaseDomain", "rel-id", "1")
    watch(w.d, w.tools, "@releaseDomain/2", "only2")
    watch(w.d, w.d1, "@releaseDomain", "domu")
    out = w.d.handle(w.dom0, T.INTRODUCE, 1, 0, fields("3", "0", "7"))
    assert events_for(out[1:], w.tools) == [("@introduceDomain", "intro")]
    out = w.d.handle(w.dom0, T.RELEASE, 1, 0, fields("3"))
    assert events_for(out[1:], w.tools) == [("@releaseDomain", "rel"), ("@releaseDomain/3", "rel-id")]
    assert events_for(out[1:], w.d1) == []  # unprivileged, not granted
    send(w.d, w.dom0, T.SET_PERMS, fields("@releaseDomain", "n0", "r1"))
    out = w.d.handle(w.dom0, T.RELEASE, 1, 0, fields("2"))
    assert events_for(out[1:], w.tools) == [
        ("@releaseDomain", "rel"),
        ("@releaseDomain/2", "rel-id"),
        ("@releaseDomain/2", "only2"),
    ]
    assert events_for(out[1:], w.d1) == [("@releaseDomain", "domu")]


def test_watch_events_in_a_transaction_wait_for_commit(w: SimpleNamespace) -> None:
    watch(w.d, w.tools, "/t", "t")
    tx = int(w.d.handle(w.dom0, T.TRANSACTION_START, 1, 0, b"\0")[0].payload[:-1])
    assert send(w.d, w.dom0, T.WRITE, fields("/t/a") + b"1", tx) == []
    assert send(w.d, w.dom0, T.WRITE, fields("/t/b") + b"2", tx) == []
    ev = send(w.d, w.dom0, T.TRANSACTION_END, b"T\0", tx)
    assert sorted(events_for(ev, w.tools)) == [("/t/a", "t"), ("/t/b", "t")]
    tx = int(w.d.handle(w.dom0, T.TRANSACTION_START, 1, 0, b"\0")[0].payload[:-1])
    send(w.d, w.dom0, T.WRITE, fields("/t/c") + b"3", tx)
    assert send(w.d, w.dom0, T.TRANSACTION_END, b"F\0", tx) == []


def test_node_written_and_removed_in_a_transaction_fires_at_commit(w: SimpleNamespace) -> None:
    # The write creates the missing parent .../b, which outlives the rm of a:
    # the commit changes the store, so the watchers of b and above must hear it.
    parent = "/local/domain/1/data/b"
    watch(w.d, w.tools, "/", "root")
    watch(w.d, w.tools, parent, "parent")
    tx = int(w.d.handle(w.dom0, T.TRANSACTION_START, 1, 0, b"\0")[0].payload[:-1])
    assert send(w.d, w.dom0, T.WRITE, fields(f"{parent}/a"), tx) == []
    assert send(w.d, w.dom0, T.RM, fields(f"{parent}/a"), tx) == []
    ev = send(w.d, w.dom0, T.TRANSACTION_END, b"T\0", tx)
    assert w.d.store.get(parent) is not None and w.d.store.get(f"{parent}/a") is None
    assert events_for(ev, w.tools) == [(f"{parent}/a", "root"), (f"{parent}/a", "parent")]


def test_node_written_and_removed_in_a_transaction_reaches_only_its_readers(w: SimpleNamespace) -> None:
    # Judged by the permissions the node had inside the transaction: domain 1
    # owns it, domain 2 could never read it.
    watch(w.d, w.d1, "/local/domain/1/data", "own")
    watch(w.d, w.d2, "/local/domain/1/data", "other")
    tx = int(w.d.handle(w.d1, T.TRANSACTION_START, 1, 0, b"\0")[0].payload[:-1])
    send(w.d, w.d1, T.WRITE, fields("/local/domain/1/data/b/a") + b"v", tx)
    send(w.d, w.d1, T.RM, fields("/local/domain/1/data/b/a"), tx)
    ev = send(w.d, w.d1, T.TRANSACTION_END, b"T\0", tx)
    assert events_for(ev, w.d1) == [("/local/domain/1/data/b/a", "own")]
    assert events_for(ev, w.d2) == []


def test_over_long_events_are_dropped(w: SimpleNamespace) -> None:
    token = "k" * 3000
    watch(w.d, w.tools, "/", token)
    long_path = "/" + "/".join(["abcdefghij"] * 100)
    ev = send(w.d, w.dom0, T.WRITE, fields(long_path) + b"v")
    assert events_for(ev, w.tools) == []
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/short") + b"v"), w.tools) == [("/short", token)]


def test_released_domain_gets_no_events(w: SimpleNamespace) -> None:
    watch(w.d, w.d1, "/local/domain/1", "home")
    w.d.release_domain(1)
    events = w.d.drain()
    assert all(delivery.conn is not w.d1 for delivery in events)
    assert events_for(send(w.d, w.dom0, T.WRITE, fields("/local/domain/1/x") + b"v"), w.d1) == []
