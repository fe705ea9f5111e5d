"""Bytes that are no message on the hypercall channel: refused as malformed, whatever they are, fds closed.

A guest writes what it likes on its hypercall socket; the hypervisor catches
ValueError and refuses the datagram. Any other exception would end the loop that
serves every domain.
"""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenlike.kernel.hypercall import MAX_REQUEST, Fragments, MessageIncomplete, recv_message, socketpair


@pytest.fixture
def pair():
    a, b = socketpair()
    yield a, b
    a.close()
    b.close()


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_a_map_keyed_by_a_list_is_refused_and_its_fds_closed(pair):
    a, b = pair
    r, w = os.pipe()
    before = _open_fds()
    socket.send_fds(a, [b"\x81\x90\x00"], [r])
    with pytest.raises(ValueError, match="does not decode"):
        recv_message(b)
    assert _open_fds() == before  # the copy of the pipe that came with it was closed
    os.close(r)
    os.close(w)


# msgpack's own bytes, strung together in any order: maps and arrays (fixmap, fixarray, map16) nested
# anywhere, keys among them, scalars, and cut-short values.
TOKENS = st.lists(
    st.sampled_from([b"\x81", b"\x82", b"\x90", b"\x91", b"\x80", b"\xde\x00\x01", b"\x00", b"\xc0", b"\xa1k",
                     b"\xcb", b"\xc4\x02"]),
    min_size=1,
    max_size=10,
).map(b"".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(min_size=1, max_size=64), TOKENS))
def test_any_datagram_is_a_message_or_a_value_error(pair, data):
    a, b = pair
    a.send(data)
    try:
        recv_message(b, pending=Fragments(MAX_REQUEST))  # as the hypervisor reads a guest's channel
    except (ValueError, MessageIncomplete):
        pass
