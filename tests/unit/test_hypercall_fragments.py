"""Messages larger than one datagram on the hypercall channel: split, joined again, or refused by name.

On real ``SOCK_SEQPACKET`` socketpairs. A datagram may be at most the send
buffer less 32 bytes (EMSGSIZE beyond): a message just under it is one
datagram, one just over is fragments, and one over MAX_MESSAGE is refused
before anything is sent. Nothing is lost silently.
"""

from __future__ import annotations

import os
import socket
import threading

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenlike.kernel import hypercall
from xenlike.kernel.hypercall import (
    MAX_MESSAGE,
    Fragments,
    HypercallClient,
    MessageIncomplete,
    MessageTooLarge,
    fragment_size,
    recv_message,
    send_message,
    socketpair,
)

SNDBUF = 64 * 1024


@pytest.fixture
def pair():
    a, b = socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    yield a, b
    a.close()
    b.close()


def datagram_limit(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32


def message_of(size: int) -> bytes:
    """A bytes message whose packed form is exactly ``size`` bytes (bin 32 header: 5 bytes)."""
    body = os.urandom(4) * ((size - 5) // 4) + b"x" * ((size - 5) % 4)
    assert len(msgpack.packb(body, use_bin_type=True)) == size
    return body


def send_in_thread(sock: socket.socket, message, fds=()) -> threading.Thread:
    """Send from another thread: fragments beyond the send buffer wait for the reader."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            send_message(sock, message, fds)
        except BaseException as exc:  # noqa: BLE001 - surfaced by join_sender
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def join_sender(thread: threading.Thread) -> None:
    thread.join(30)
    assert not thread.is_alive()
    assert not thread.errors, thread.errors  # type: ignore[attr-defined]


def test_raw_datagram_over_the_send_buffer_is_refused_by_the_kernel(pair):
    """The cause of the hang: af_unix refuses such a datagram, and the hypervisor used to drop the reply."""
    a, b = pair
    with pytest.raises(OSError) as info:
        a.send(b"x" * (datagram_limit(a) + 1))
    assert info.value.errno == 90  # EMSGSIZE
    a.send(b"x" * datagram_limit(a))
    assert len(b.recv(1 << 20)) == datagram_limit(a)


def test_just_under_the_limit_is_one_datagram(pair):
    a, b = pair
    size = datagram_limit(a)
    send_message(a, message_of(size))
    data = b.recv(1 << 20, socket.MSG_PEEK)
    assert len(data) == size and data[0] != hypercall.FRAGMENT
    message, fds = recv_message(b)
    assert len(message) == size - 5 and fds == []


def test_just_over_the_limit_is_split_and_joined_with_its_fds(pair):
    a, b = pair
    body = message_of(datagram_limit(a) + 1)
    r, w = os.pipe()
    try:
        sender = send_in_thread(a, {"id": 7, "result": body}, [w])
        message, fds = recv_message(b)
        join_sender(sender)
        assert message == {"id": 7, "result": body}
        assert len(fds) == 1
        os.write(fds[0], b"!")  # the pipe's write end came across
        assert os.read(r, 1) == b"!"
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_fragments_are_within_the_limit_and_fds_ride_on_the_first(pair):
    a, b = pair
    body = message_of(3 * fragment_size(a) + 10)
    r, w = os.pipe()
    try:
        sender = send_in_thread(a, body, [w])
        datagrams = []
        while True:
            data, anc, _, _ = b.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
            datagrams.append((data, bool(anc)))
            for _, _, payload in anc:
                os.close(int.from_bytes(payload[:4], "little"))
            if data[1] == 0:
                break
        join_sender(sender)
        assert len(datagrams) == 4
        assert all(len(d) <= datagram_limit(a) and d[0] == hypercall.FRAGMENT for d, _ in datagrams)
        assert [has_fds for _, has_fds in datagrams] == [True, False, False, False]
        assert [d[1] for d, _ in datagrams] == [1, 1, 1, 0]
        assert msgpack.unpackb(b"".join(d[2:] for d, _ in datagrams)) == body
    finally:
        os.close(r)
        os.close(w)


def test_over_max_message_is_refused_naming_the_limit_and_nothing_is_sent(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(hypercall, "MAX_MESSAGE", 100_000)
    with pytest.raises(MessageTooLarge, match="exceeds the channel's limit of 100000"):
        send_message(a, message_of(100_001))
    with pytest.raises(BlockingIOError):
        b.recv(1, socket.MSG_DONTWAIT)


def test_the_client_refuses_a_request_over_max_request(pair):
    a, b = pair
    client = HypercallClient(a, lambda message, fds: None)
    with pytest.raises(MessageTooLarge, match=f"exceeds the channel's limit of {hypercall.MAX_REQUEST}"):
        client.call("console_io", data=b"x" * hypercall.MAX_REQUEST)
    with pytest.raises(BlockingIOError):
        b.recv(1, socket.MSG_DONTWAIT)


def test_too_many_fds_is_refused_naming_the_limit(pair):
    a, _ = pair
    with pytest.raises(MessageTooLarge, match="65 file descriptors exceeds the channel's limit of 64"):
        send_message(a, "x", [0] * 65)


def test_a_reader_that_must_not_wait_takes_one_fragment_at_a_time(pair):
    """The hypervisor's way: a domain that sends half a request stalls nothing."""
    a, b = pair
    body = message_of(2 * datagram_limit(a))
    sender = send_in_thread(a, body)
    pending = Fragments()
    incomplete = 0
    while True:
        try:
            got = recv_message(b, pending=pending)
            break
        except MessageIncomplete:
            incomplete += 1
    join_sender(sender)
    assert got == (body, [])
    assert incomplete == 4  # five fragments of half the send buffer each
    assert pending.chunks == [] and pending.size == 0


def test_fragments_over_the_readers_limit_are_dropped_with_their_fds(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        sender = send_in_thread(a, message_of(3 * fragment_size(a)), [w])
        pending = Fragments(limit=fragment_size(a) + 10)
        with pytest.raises(MessageIncomplete):
            recv_message(b, pending=pending)
        assert len(pending.fds) == 1
        with pytest.raises(ValueError, match="exceeds the channel's limit"):
            recv_message(b, pending=pending)
        assert pending.fds == [] and pending.chunks == []
        with pytest.raises(MessageIncomplete):  # its last fragment is skipped, not taken for a message
            recv_message(b, pending=pending)
        join_sender(sender)
        assert not pending.dropping
        send_message(a, "next")
        assert recv_message(b, pending=pending) == ("next", [])
    finally:
        os.close(r)
        os.close(w)


def test_a_datagram_larger_than_the_receive_buffer_is_refused_not_cut(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(hypercall, "MAX_DATAGRAM", 1000)
    a.send(msgpack.packb(b"x" * 2000))
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        recv_message(b)


def test_the_client_gets_a_large_reply(pair):
    """HypercallClient.call across fragments: what dom0's ``getdomaininfo`` of ~1,000 domains needs."""
    a, b = pair
    rows = [{"domid": i, "name": f"g{i}", "uuid": "0" * 36, "cpu_time": 0.5} for i in range(2000)]

    def hypervisor() -> None:
        request, _ = recv_message(b)
        send_message(b, {"event": "evtchn_peer", "port": 3})
        send_message(b, {"id": request["id"], "ok": True, "result": rows})

    thread = threading.Thread(target=hypervisor, daemon=True)
    thread.start()
    events = []
    client = HypercallClient(a, lambda message, fds: events.append(message))
    result, fds = client.call("domctl", cmd="getdomaininfo")
    thread.join(30)
    assert len(msgpack.packb(rows)) > datagram_limit(a)
    assert result == rows and fds == [] and events == [{"event": "evtchn_peer", "port": 3}]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=(1 << 16) + 5, max_value=5 * SNDBUF))
def test_any_size_arrives_whole(pair, size):
    a, b = pair
    body = message_of(size)
    sender = send_in_thread(a, body)
    message, fds = recv_message(b)
    join_sender(sender)
    assert message == body and fds == []
    assert MAX_MESSAGE >= size


def test_the_hypervisor_answers_a_reply_it_cannot_send_with_an_error_naming_why(pair, monkeypatch):
    """No caller waits forever: a reply over the limit becomes an EMSGSIZE error reply."""
    from types import SimpleNamespace

    from xenlike.hypervisor.core import Hypervisor

    a, b = pair
    monkeypatch.setattr(hypercall, "MAX_MESSAGE", 100_000)
    hv = SimpleNamespace(_by_sock={}, _outboxes={})
    hv._reply_error = lambda *args: Hypervisor._reply_error(hv, *args)  # type: ignore[attr-defined]
    hv._send = lambda *args: Hypervisor._send(hv, *args)  # type: ignore[attr-defined]
    Hypervisor._reply(hv, b, 9, [b"x" * 1000] * 200)  # type: ignore[arg-type]
    reply, fds = recv_message(a)
    assert reply == {
        "id": 9,
        "ok": False,
        "errno": "EMSGSIZE",
        "error": "the reply could not be sent: a message of 200619 bytes exceeds the channel's limit of 100000",
    }
    assert fds == []
