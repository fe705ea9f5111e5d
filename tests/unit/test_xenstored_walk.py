"""xenstored's walk (what xenstore-ls reads) agrees with DIRECTORY, READ and GET_PERMS on every node, for
dom0 and for a guest that may read only part of the tree (hypothesis); its errors are READ's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dom0.xenstored import LocalXenstore, Permission, Xenstored, XsError, XsPerm

GUEST = 5

# Paths below /t from a few names, so nodes share parents; each with a value and who may read it.
segments = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4)
owners = st.sampled_from([0, GUEST, 7])
defaults = st.sampled_from([XsPerm.NONE, XsPerm.READ])
nodes = st.lists(st.tuples(segments, st.binary(max_size=6), owners, defaults), max_size=25)


def walk_one_request_at_a_time(xs: LocalXenstore, path: str, depth: int = 0) -> list[tuple]:
    """xenstore-ls's way: READ and GET_PERMS of a node, then DIRECTORY and the same of each child;
    a node the caller may not read is passed over with what lies below it."""
    try:
        out = [(path, depth, xs.read(path), tuple(xs.get_perms(path)))]
        children = xs.directory(path)
    except XsError as err:
        if depth and err.errno_name in ("EACCES", "ENOENT"):
            return []
        raise
    for name in children:
        out += walk_one_request_at_a_time(xs, f"{path}/{name}", depth + 1)
    return out


def store_of(tree: list[tuple[list[str], bytes, int, XsPerm]]) -> Xenstored:
    daemon = Xenstored()
    dom0 = LocalXenstore(daemon)
    dom0.mkdir("/t")
    dom0.set_perms("/t", [Permission(0, XsPerm.READ)])
    for names, value, owner, default in tree:
        path = "/t/" + "/".join(names)
        dom0.write(path, value)
        dom0.set_perms(path, [Permission(owner, default)])
    return daemon


@given(nodes)
def test_the_walk_agrees_with_a_request_per_node(tree: list) -> None:
    daemon = store_of(tree)
    for xs in (LocalXenstore(daemon), LocalXenstore(daemon, GUEST, privileged=False)):
        assert xs.walk("/t") == walk_one_request_at_a_time(xs, "/t")


def test_the_top_of_a_walk_fails_as_its_read_would() -> None:
    daemon = Xenstored()
    dom0 = LocalXenstore(daemon)
    dom0.write("/secret/x", "v")
    dom0.set_perms("/secret", ["n0"])
    guest = LocalXenstore(daemon, GUEST, privileged=False)
    for xs, path in ((dom0, "/missing"), (guest, "/secret"), (dom0, "bad path"), (guest, "/secret/nothing")):
        with pytest.raises(XsError) as walked:
            xs.walk(path)
        with pytest.raises(XsError) as read:
            xs.read(path)
        assert walked.value.errno_name == read.value.errno_name


def test_a_walk_inside_a_transaction_sees_its_writes_and_an_unknown_one_is_enoent() -> None:
    daemon = Xenstored()
    xs = LocalXenstore(daemon)
    xs.write("/t/a", "1")
    tx = xs.transaction_start()
    xs.write("/t/b", "2", tx=tx)
    assert [path for path, *_ in xs.walk("/t", tx)] == ["/t", "/t/a", "/t/b"]
    assert [path for path, *_ in xs.walk("/t")] == ["/t", "/t/a"]
    with pytest.raises(XsError) as info:
        xs.walk("/t", tx + 1)
    assert info.value.errno_name == "ENOENT"
