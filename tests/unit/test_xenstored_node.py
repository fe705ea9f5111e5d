"""xenstored's Node keeps its child names as one nul-separated list (struct node's children):
adding, finding and removing a name agree with a plain list of names (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dom0.xenstored.node import Node
from xenlike.public.xs_wire import Permission, XsPerm, join_strings

PERMS = (Permission(0, XsPerm.NONE),)

# Short names from few letters, so one is often another's prefix or suffix ("1", "10", "01").
names = st.text(alphabet="01a-_@", min_size=1, max_size=3)


def node_of(children: list[str]) -> Node:
    node = Node(b"", b"", PERMS)
    for name in children:
        node = node.with_child(name)
    return node


@given(st.lists(names, unique=True, max_size=12), names)
def test_finding_a_child_agrees_with_a_list(children: list[str], name: str) -> None:
    node = node_of(children)
    assert node.children == tuple(children)
    assert node.child_list == join_strings(children)
    assert node.childlen == sum(len(child) + 1 for child in children)
    assert node.child_index(name) == (children.index(name) if name in children else -1)


@given(st.lists(names, unique=True, max_size=12), names)
def test_removing_a_child_agrees_with_a_list(children: list[str], name: str) -> None:
    node = node_of(children)
    expected = [child for child in children if child != name]
    removed = node.without_child(name)
    assert removed.children == tuple(expected)
    if name not in children:
        assert removed is node


def test_a_node_without_children_lists_none() -> None:
    node = Node(b"v", b"", PERMS)
    assert node.children == ()
    assert node.children_blob() == b""
    assert node.child_index("a") == -1
