"""xenstored: every request type over Xenstored.handle, with its replies and errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dom0.xenstored import LIBRARY_FEATURES, Connection, Delivery, Xenstored
from xenlike.public.xen import DOMID_SELF
from xenlike.public.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_SERVER_FEATURE_ERROR,
    XsdSockmsgType,
    split_strings,
)

from .xenstored_support import err, fields, introduce_both, ok, two_guests

T = XsdSockmsgType


def send(
    d: Xenstored, conn: Connection, msg_type: int, payload: bytes = b"", tx: int = 0
) -> tuple[Delivery, list[Delivery]]:
    out = d.handle(conn, msg_type, 42, tx, payload)
    return out[0], out[1:]


@pytest.fixture
def w() -> SimpleNamespace:
    return introduce_both(two_guests())


def test_initial_tree_matches_setup_structure() -> None:
    d = Xenstored()
    c = d.connect()
    assert ok(d, c, T.DIRECTORY, fields("/")) == b"tool\0"
    assert ok(d, c, T.DIRECTORY, fields("/tool")) == b"xenstored\0"
    assert ok(d, c, T.READ, fields("/tool/xenstored")) == b""
    for path in ("/", "@introduceDomain", "@releaseDomain"):
        assert ok(d, c, T.GET_PERMS, fields(path)) == b"n0\0"


def test_reply_echoes_header(w: SimpleNamespace) -> None:
    out = w.d.handle(w.dom0, T.WRITE, 1234, 0, fields("/a") + b"v")
    assert out[0] == Delivery(w.dom0, T.WRITE, 1234, 0, b"OK\0")
    out = w.d.handle(w.dom0, T.READ, 99, 0, fields("/nope"))
    assert out[0] == Delivery(w.dom0, T.ERROR, 99, 0, b"ENOENT\0")


def test_write_read_binary_value_and_missing_parents(w: SimpleNamespace) -> None:
    value = b"\x00\x01binary\x00\xff"
    ok(w.d, w.dom0, T.WRITE, fields("/x/y/z") + value)
    assert ok(w.d, w.dom0, T.READ, fields("/x/y/z")) == value
    assert ok(w.d, w.dom0, T.READ, fields("/x/y")) == b""
    assert ok(w.d, w.dom0, T.DIRECTORY, fields("/x")) == b"y\0"
    ok(w.d, w.dom0, T.WRITE, fields("/x/y/z"))
    assert ok(w.d, w.dom0, T.READ, fields("/x/y/z")) == b""


@pytest.mark.parametrize(
    "msg_type,payload",
    [
        (T.WRITE, b"/no-nul"),
        (T.READ, b"/a"),
        (T.READ, b"/a\0/b\0"),
        (T.READ, b""),
        (T.READ, b"/a//b\0"),
        (T.READ, b"/a/\0"),
        (T.READ, b"/sp ace\0"),
        (T.READ, b"@introduceDomain\0"),
        (T.WRITE, b"@releaseDomain\0x"),
        (T.MKDIR, b"\0"),
        (T.RM, b"/a"),
        (T.DIRECTORY, b"/\xff\0"),
        (T.GET_PERMS, b"/a\0b\0"),
        (T.SET_PERMS, b"/a\0"),
        (T.SET_PERMS, b"/tool\0x0\0"),
        (T.DIRECTORY_PART, b"/\0"),
        (T.DIRECTORY_PART, b"/\0x\0"),
        (T.GET_DOMAIN_PATH, b"abc\0"),
        (T.GET_DOMAIN_PATH, b"1"),
        (T.TRANSACTION_END, b"X\0"),
        (T.WATCH, b"/a\0"),
        (T.WATCH, b"/a\0t\0x\0"),
        (T.UNWATCH, b"/a\0"),
    ],
)
def test_malformed_requests_get_einval(w: SimpleNamespace, msg_type: int, payload: bytes) -> None:
    before = dict(w.d.store.nodes)
    assert err(w.d, w.dom0, msg_type, payload) == "EINVAL"
    assert dict(w.d.store.nodes) == before


def test_read_missing_is_enoent(w: SimpleNamespace) -> None:
    assert err(w.d, w.dom0, T.READ, fields("/missing")) == "ENOENT"
    assert err(w.d, w.dom0, T.DIRECTORY, fields("/missing/deeper")) == "ENOENT"


def test_mkdir_creates_and_leaves_existing_alone(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.MKDIR, fields("/m/n"))
    assert ok(w.d, w.dom0, T.READ, fields("/m/n")) == b""
    ok(w.d, w.dom0, T.WRITE, fields("/m/n") + b"keep")
    before = w.d.store.get("/m/n")
    ok(w.d, w.dom0, T.MKDIR, fields("/m/n"))
    assert w.d.store.get("/m/n") == before


def test_rm_is_recursive_and_tolerates_missing_leaf(w: SimpleNamespace) -> None:
    for p in ("/r/a/b", "/r/a/c", "/r/d"):
        ok(w.d, w.dom0, T.WRITE, fields(p) + b"v")
    ok(w.d, w.dom0, T.RM, fields("/r/a"))
    assert ok(w.d, w.dom0, T.DIRECTORY, fields("/r")) == b"d\0"
    assert not [p for p in w.d.store.nodes if p.startswith("/r/a")]
    ok(w.d, w.dom0, T.RM, fields("/r/a"))  # already gone, parent exists
    assert err(w.d, w.dom0, T.RM, fields("/r/a/b")) == "ENOENT"  # parent gone too
    assert err(w.d, w.dom0, T.RM, fields("/")) == "EINVAL"


def test_directory_keeps_creation_order(w: SimpleNamespace) -> None:
    for name in ("zeta", "alpha", "mid"):
        ok(w.d, w.dom0, T.MKDIR, fields(f"/o/{name}"))
    assert split_strings(ok(w.d, w.dom0, T.DIRECTORY, fields("/o"))) == [b"zeta", b"alpha", b"mid"]
    assert ok(w.d, w.dom0, T.DIRECTORY, fields("/o/mid")) == b""


def test_directory_too_big_for_one_reply_is_e2big_and_part_pages_it(w: SimpleNamespace) -> None:
    names = [f"child-{i:03d}-" + "x" * 40 for i in range(120)]
    for name in names:
        ok(w.d, w.dom0, T.MKDIR, fields(f"/big/{name}"))
    assert err(w.d, w.dom0, T.DIRECTORY, fields("/big")) == "E2BIG"
    gen = str(w.d.store.get("/big").generation).encode()
    collected = b""
    offset = 0
    for _ in range(10):
        reply = ok(w.d, w.dom0, T.DIRECTORY_PART, fields("/big", str(offset)))
        assert len(reply) <= XENSTORE_PAYLOAD_MAX
        got_gen, _, rest = reply.partition(b"\0")
        assert got_gen == gen
        if rest.endswith(b"\0\0") or rest == b"\0":
            collected += rest[:-1]
            break
        collected += rest
        offset += len(rest)
    assert split_strings(collected) == [n.encode() for n in names]


def test_directory_part_small_and_past_end(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.MKDIR, fields("/dp/a"))
    ok(w.d, w.dom0, T.MKDIR, fields("/dp/b"))
    gen = str(w.d.store.get("/dp").generation).encode()
    assert ok(w.d, w.dom0, T.DIRECTORY_PART, fields("/dp", "0")) == gen + b"\0a\0b\0\0"
    assert ok(w.d, w.dom0, T.DIRECTORY_PART, fields("/dp", "2")) == gen + b"\0b\0\0"
    assert ok(w.d, w.dom0, T.DIRECTORY_PART, fields("/dp", "99")) == gen + b"\0\0"


def test_get_and_set_perms(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.WRITE, fields("/p") + b"v")
    assert ok(w.d, w.dom0, T.GET_PERMS, fields("/p")) == b"n0\0"
    ok(w.d, w.dom0, T.SET_PERMS, fields("/p", "r3", "w4", "b5", "n6"))
    assert ok(w.d, w.dom0, T.GET_PERMS, fields("/p")) == b"r3\0w4\0b5\0n6\0"
    assert err(w.d, w.dom0, T.SET_PERMS, fields("/nope", "n0")) == "ENOENT"
    ok(w.d, w.dom0, T.SET_PERMS, fields("@releaseDomain", "n0", "r1"))
    assert ok(w.d, w.dom0, T.GET_PERMS, fields("@releaseDomain")) == b"n0\0r1\0"
    assert err(w.d, w.dom0, T.GET_PERMS, fields("@nothing")) == "ENOENT"


def test_get_domain_path(w: SimpleNamespace) -> None:
    assert ok(w.d, w.d1, T.GET_DOMAIN_PATH, fields("7")) == b"/local/domain/7\0"
    assert ok(w.d, w.dom0, T.GET_DOMAIN_PATH, fields("0")) == b"/local/domain/0\0"


def test_is_domain_introduced(w: SimpleNamespace) -> None:
    assert ok(w.d, w.dom0, T.IS_DOMAIN_INTRODUCED, fields("1")) == b"T\0"
    assert ok(w.d, w.dom0, T.IS_DOMAIN_INTRODUCED, fields("0")) == b"T\0"
    assert ok(w.d, w.dom0, T.IS_DOMAIN_INTRODUCED, fields("9")) == b"F\0"
    assert ok(w.d, w.dom0, T.IS_DOMAIN_INTRODUCED, fields(str(DOMID_SELF))) == b"T\0"


def test_relative_paths_of_a_domain(w: SimpleNamespace) -> None:
    assert ok(w.d, w.d1, T.READ, fields("name")) == b"guest1"
    ok(w.d, w.d1, T.WRITE, fields("data/k") + b"v")
    assert ok(w.d, w.dom0, T.READ, fields("/local/domain/1/data/k")) == b"v"
    # Sockets resolve relative paths under dom0's home, like C xenstored.
    ok(w.d, w.dom0, T.WRITE, fields("rel") + b"0")
    assert ok(w.d, w.dom0, T.READ, fields("/local/domain/0/rel")) == b"0"


def test_reset_watches_drops_watches_and_transactions(w: SimpleNamespace) -> None:
    ok(w.d, w.d1, T.WATCH, fields("name", "t"))
    tx = int(ok(w.d, w.d1, T.TRANSACTION_START, b"\0")[:-1])
    ok(w.d, w.d1, T.RESET_WATCHES, b"")
    assert w.d1.watches == [] and w.d1.transactions == {}
    assert err(w.d, w.d1, T.READ, fields("name"), tx=tx) == "ENOENT"
    _, events = send(w.d, w.dom0, T.WRITE, fields("/local/domain/1/name") + b"n")
    assert events == []


def test_resume_and_set_target(w: SimpleNamespace) -> None:
    ok(w.d, w.dom0, T.RESUME, fields("1"))
    assert err(w.d, w.dom0, T.RESUME, fields("0")) == "EINVAL"
    assert err(w.d, w.dom0, T.RESUME, fields("9")) == "ENOENT"
    assert err(w.d, w.dom0, T.SET_TARGET, fields("2", "9")) == "ENOENT"
    assert err(w.d, w.dom0, T.SET_TARGET, fields("2")) == "EINVAL"
    ok(w.d, w.dom0, T.SET_TARGET, fields("2", "1"))
    assert w.d2.target == 1


def test_control(w: SimpleNamespace) -> None:
    assert ok(w.d, w.dom0, T.CONTROL, fields("check")) == b"OK\0"
    assert b"check" in ok(w.d, w.dom0, T.CONTROL, fields("help"))
    ok(w.d, w.dom0, T.CONTROL, fields("print", "hello"))
    assert err(w.d, w.dom0, T.CONTROL, fields("frobnicate")) == "EINVAL"
    assert err(w.d, w.dom0, T.CONTROL, b"") == "EINVAL"


def test_features() -> None:
    d = Xenstored(server_features=LIBRARY_FEATURES | XENSTORE_SERVER_FEATURE_ERROR)
    dom0 = d.connect()
    d1 = d.introduce_domain(1)
    expected = str(LIBRARY_FEATURES | XENSTORE_SERVER_FEATURE_ERROR).encode() + b"\0"
    assert ok(d, dom0, T.GET_FEATURE, fields("1")) == expected
    assert ok(d, d1, T.GET_FEATURE, fields("1")) == expected
    assert err(d, d1, T.GET_FEATURE, fields("0")) == "EACCES"
    assert err(d, dom0, T.GET_FEATURE, fields("5")) == "ENOENT"
    ok(d, dom0, T.SET_FEATURE, fields("1", str(XENSTORE_SERVER_FEATURE_ERROR)))
    assert d.domain_features(1) == XENSTORE_SERVER_FEATURE_ERROR
    assert err(d, dom0, T.SET_FEATURE, fields("1", "1")) == "EINVAL"  # reconnection not offered
    assert err(d, dom0, T.SET_FEATURE, fields("5", "2")) == "ENOENT"
    assert err(d, dom0, T.SET_FEATURE, fields("1")) == "EINVAL"


def test_quota_requests(w: SimpleNamespace) -> None:
    names = ok(w.d, w.dom0, T.GET_QUOTA, b"")[:-1].decode().split(" ")
    assert names == [
        "nodes",
        "watches",
        "outstanding",
        "transactions",
        "transaction-nodes",
        "node-permissions",
        "path-max",
        "node-size",
    ]
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("nodes")) == b"1000\0"
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("watches")) == b"128\0"
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("transactions")) == b"10\0"
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("outstanding")) == b"20\0"
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("node-size")) == b"2048\0"
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("node-permissions")) == b"5\0"
    ok(w.d, w.dom0, T.SET_QUOTA, fields("1", "watches", "3"))
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("1", "watches")) == b"3\0"
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("watches")) == b"128\0"
    ok(w.d, w.dom0, T.SET_QUOTA, fields("nodes", "7"))
    assert ok(w.d, w.dom0, T.GET_QUOTA, fields("2", "nodes")) == b"7\0"
    assert err(w.d, w.dom0, T.GET_QUOTA, fields("bogus")) == "EINVAL"
    assert err(w.d, w.dom0, T.SET_QUOTA, fields("nodes")) == "EINVAL"
    assert err(w.d, w.dom0, T.SET_QUOTA, fields("nodes", "-1")) == "EINVAL"
    assert err(w.d, w.dom0, T.GET_QUOTA, fields("a", "b", "c")) == "EINVAL"
    assert err(w.d, w.dom0, T.GET_QUOTA, fields(str(DOMID_SELF), "nodes")) == "ENOENT"


@pytest.mark.parametrize("msg_type", [T.WATCH_EVENT, T.ERROR, T.RESTRICT, 27, 1000, T.INVALID])
def test_unsupported_types_are_enosys(w: SimpleNamespace, msg_type: int) -> None:
    assert err(w.d, w.dom0, msg_type, fields("/")) == "ENOSYS"
    assert err(w.d, w.d1, msg_type, fields("/")) == "ENOSYS"


def test_unknown_transaction_id_is_enoent_but_watch_ignores_it(w: SimpleNamespace) -> None:
    assert err(w.d, w.dom0, T.READ, fields("/tool"), tx=77) == "ENOENT"
    assert err(w.d, w.dom0, T.WRITE, fields("/tool") + b"x", tx=77) == "ENOENT"
    assert ok(w.d, w.dom0, T.WATCH, fields("/tool", "t"), tx=77) == b"OK\0"
    assert ok(w.d, w.dom0, T.UNWATCH, fields("/tool", "t"), tx=77) == b"OK\0"


def test_oversized_payload_is_e2big(w: SimpleNamespace) -> None:
    payload = fields("/big") + b"v" * XENSTORE_PAYLOAD_MAX
    assert err(w.d, w.dom0, T.WRITE, payload) == "E2BIG"
    assert w.d.store.get("/big") is None


def test_closed_connection_is_ignored(w: SimpleNamespace) -> None:
    conn = w.d.connect(0)
    w.d.disconnect(conn)
    assert w.d.handle(conn, T.READ, 1, 0, fields("/")) == []
