"""xenstored: the in-process client used by dom0's toolstack."""

from __future__ import annotations

import pytest

from dom0.xenstored import Delivery, LocalXenstore, Permission, Quotas, Xenstored, XsError, XsPerm
from xenlike.public.xs_wire import XsdSockmsgType, join_strings

T = XsdSockmsgType


def test_typed_calls_round_trip() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)
    xs.write("/vm/abc/name", "guest")
    xs.write("/vm/abc/raw", b"\x00\x01")
    assert xs.read("/vm/abc/name") == b"guest"
    assert xs.read("/vm/abc/raw") == b"\x00\x01"
    assert xs.directory("/vm/abc") == ["name", "raw"]
    assert xs.exists("/vm/abc") and not xs.exists("/vm/zzz")
    xs.mkdir("/vm/abc/empty")
    assert xs.read("/vm/abc/empty") == b""
    xs.set_perms("/vm/abc", ["n0", Permission(3, XsPerm.READ)])
    assert xs.get_perms("/vm/abc") == [Permission(0, XsPerm.NONE), Permission(3, XsPerm.READ)]
    xs.rm("/vm/abc")
    assert not xs.exists("/vm/abc")
    assert xs.get_domain_path(4) == "/local/domain/4"


def test_errors_raise_with_the_errno_name() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)
    with pytest.raises(XsError) as info:
        xs.read("/missing")
    assert info.value.errno_name == "ENOENT"
    with pytest.raises(XsError) as info:
        xs.write("bad path", "v")
    assert info.value.errno_name == "EINVAL"


def test_write_with_perms_is_one_change_for_watchers() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)
    watcher = LocalXenstore(d)
    watcher.watch("/local/domain/3", "t")
    assert watcher.pop_events() == [("/local/domain/3", b"t")]
    xs.write("/local/domain/3/control/shutdown", "", perms=["n3"])
    assert [str(p) for p in xs.get_perms("/local/domain/3/control/shutdown")] == ["n3"]
    assert watcher.pop_events() == [("/local/domain/3/control/shutdown", b"t")]
    xs.mkdir("/local/domain/3/data", perms=["n3", "r0"])
    assert [str(p) for p in xs.get_perms("/local/domain/3/data")] == ["n3", "r0"]
    assert watcher.pop_events() == [("/local/domain/3/data", b"t")]


def test_events_for_other_connections_reach_the_sink() -> None:
    sent: list[Delivery] = []
    d = Xenstored(sink=sent.append)
    tools = d.connect(0)
    d.handle(tools, T.WATCH, 1, 0, join_strings(["/x", "remote"]))
    xs = LocalXenstore(d)
    xs.write("/x/y", "1")
    assert [(e.conn, e.payload) for e in sent] == [(tools, b"/x/y\0remote\0")]


def test_remote_changes_reach_local_watchers_directly() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)
    xs.watch("/shared", "local", depth=1)
    xs.pop_events()
    remote = d.connect(0)
    out = d.handle(remote, T.WRITE, 1, 0, join_strings(["/shared/k"]) + b"v")
    assert len(out) == 1  # the reply only: the local watcher was served in-process
    assert xs.pop_events() == [("/shared/k", b"local")]
    d.handle(remote, T.WRITE, 1, 0, join_strings(["/shared/k/deeper"]) + b"v")
    assert xs.pop_events() == []
    xs.unwatch("/shared", "local")
    d.handle(remote, T.WRITE, 1, 0, join_strings(["/shared/k"]) + b"w")
    assert xs.pop_events() == []


def test_transactions_commit_abort_and_retry() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)
    other = LocalXenstore(d)
    xs.write("/c", "0")
    tx = xs.transaction_start()
    xs.write("/c", str(int(xs.read("/c", tx)) + 1), tx=tx)
    other.write("/c", "10")
    assert xs.transaction_end(tx) is False
    tries: list[int] = []

    def bump(t: int) -> int:
        value = int(xs.read("/c", t)) + 1
        if not tries:
            other.write("/c", "20")  # a conflict the first time round
        tries.append(value)
        xs.write("/c", str(value), tx=t)
        return value

    assert xs.transact(bump) == 21
    assert tries == [11, 21]
    assert xs.read("/c") == b"21"
    tx = xs.transaction_start()
    xs.write("/c", "aborted", tx=tx)
    assert xs.transaction_end(tx, commit=False)
    assert xs.read("/c") == b"21"


def test_transact_aborts_when_the_body_fails() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)

    def body(t: int) -> None:
        xs.write("/half", "done", tx=t)
        xs.read("/missing", t)

    with pytest.raises(XsError):
        xs.transact(body)
    assert not xs.exists("/half")
    assert xs.conn.transactions == {}


def test_domains_and_quotas_through_the_client() -> None:
    d = Xenstored(Quotas(nodes=50))
    xs = LocalXenstore(d)
    xs.watch("@introduceDomain", "i")
    xs.pop_events()
    xs.introduce(7, 123, 4)
    assert xs.pop_events() == [("@introduceDomain", b"i")]
    assert xs.is_domain_introduced(7)
    assert xs.get_quota("nodes") == 50
    xs.set_quota("nodes", 9, domid=7)
    assert xs.get_quota("nodes", domid=7) == 9
    xs.release(7)
    assert not xs.is_domain_introduced(7)


def test_unprivileged_local_client_and_close() -> None:
    d = Xenstored()
    admin = LocalXenstore(d)
    admin.write("/secret", "s")
    guest = LocalXenstore(d, 8, privileged=False)
    with pytest.raises(XsError) as info:
        guest.read("/secret")
    assert info.value.errno_name == "EACCES"
    guest.close()
    with pytest.raises(XsError):
        guest.read("/secret")


def test_a_directory_too_long_for_one_reply_is_read_in_parts() -> None:
    d = Xenstored()
    xs = LocalXenstore(d)
    names = [str(domid) for domid in range(1, 1501)]  # /local/domain of a host with 1,500 guests: 6,393 bytes
    for name in names:
        xs.write(f"/local/domain/{name}/name", f"g{name}")
    with pytest.raises(XsError) as info:
        xs.request(T.DIRECTORY, join_strings(["/local/domain"]))
    assert info.value.errno_name == "E2BIG"
    assert xs.directory("/local/domain") == names
    assert xs.directory("/local/domain/7") == ["name"]  # a short one is one DIRECTORY as before
