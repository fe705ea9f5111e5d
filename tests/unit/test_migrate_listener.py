"""The migration listener is one thread every incoming migration shares: no peer may stop it.

Before a peer proves the key it is anyone who can reach the port; after, its
messages are still checked. A ROUND whose number is no integer, more peers at
once than the listener serves, or a frame larger than any a sender sends used to
end the listener thread or take memory without bound. Here a real listener runs
on 127.0.0.1 with a toolstack stub (nothing is reached before the stream), and
the peers are DEALER sockets as ``xenlike migrate`` uses.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

from dom0.toolstack.migrate_receive import MAX_SESSIONS, Incoming, MigrationListener
from xenlike.public import migration_channel as ch


class _Calls:
    def call(self, fn, timeout: float = 30.0):
        return fn()


class _Toolstack:
    calls = _Calls()
    domains: dict = {}

    def hypercall(self, op, **args):
        raise OSError("no hypervisor here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served():
    port = _free_port()
    listener = MigrationListener(_Toolstack(), "127.0.0.1", port)
    context = zmq.Context()
    yield listener, port, context
    listener.close()
    context.destroy(linger=0)  # closes the peers a failed test left open, which term() would wait for


def _peer(context: zmq.Context, port: int) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def _ask(sock: zmq.Socket, frames: list[bytes]) -> list[bytes] | None:
    sock.send_multipart(frames)
    return sock.recv_multipart() if sock.poll(3000) else None


def _authed(listener: MigrationListener, context: zmq.Context, port: int) -> tuple[zmq.Socket, bytes]:
    sock = _peer(context, port)
    challenge = _ask(sock, [ch.HELLO, b"{}"])
    assert challenge is not None and challenge[0] == ch.CHALLENGE
    assert _ask(sock, [ch.AUTH, ch.auth_reply(listener.key, challenge[1])]) == [
        ch.OK,
        ch.encode({"window": ch.STREAM_WINDOW}),
    ]
    return sock, challenge[1]


def _still_serves(context: zmq.Context, port: int) -> bool:
    sock = _peer(context, port)
    try:
        reply = _ask(sock, [ch.HELLO, b"{}"])
        return reply is not None and reply[0] in (ch.CHALLENGE, ch.REFUSED)
    finally:
        sock.close()


@pytest.mark.parametrize("body", [b'{"round":1e999}', b'{"round":"1"}', b'{"round":-1}', b"[" * 100_000])
def test_a_round_that_is_no_number_is_refused_and_the_listener_goes_on(served, body):
    listener, port, context = served
    sock, nonce = _authed(listener, context, port)
    reply = _ask(sock, ch.seal(listener.key, nonce, ch.ROUND, 0, body))
    assert reply is not None and reply[0] == ch.REFUSED
    assert listener._thread.is_alive() and _still_serves(context, port)
    sock.close()


def test_more_peers_than_the_listener_serves_are_refused(served):
    listener, port, context = served
    peers = [_peer(context, port) for _ in range(MAX_SESSIONS + 1)]
    replies = [_ask(peer, [ch.HELLO, b"{}"]) for peer in peers]
    assert [r[0] for r in replies if r] == [ch.CHALLENGE] * MAX_SESSIONS + [ch.REFUSED]
    assert b"try later" in replies[-1][1]
    for peer in peers:
        peer.close()


def test_a_frame_larger_than_any_sender_sends_drops_that_peer_only(served):
    listener, port, context = served
    big = _peer(context, port)
    big.send_multipart([ch.HELLO, bytes(ch.MAX_FRAME + 1)])
    time.sleep(0.2)
    assert listener._sessions == {} and listener._thread.is_alive() and _still_serves(context, port)
    big.close()


def test_peers_that_never_prove_the_key_give_their_places_back(served, monkeypatch):
    from dom0.toolstack import migrate_receive

    listener, port, context = served
    monkeypatch.setattr(migrate_receive, "HANDSHAKE_S", 0.2)
    idle = [_peer(context, port) for _ in range(MAX_SESSIONS)]
    assert all(_ask(peer, [ch.HELLO, b"{}"])[0] == ch.CHALLENGE for peer in idle)  # and then nothing more
    time.sleep(0.5)
    late = _peer(context, port)
    assert _ask(late, [ch.HELLO, b"{}"])[0] == ch.CHALLENGE
    for peer in [*idle, late]:
        peer.close()


def _stream(listener: MigrationListener, sock: zmq.Socket, nonce: bytes, first: int, count: int) -> None:
    for seq in range(first, first + count):
        sock.send_multipart(ch.seal(listener.key, nonce, ch.STREAM, seq, bytes(ch.STREAM_CHUNK)))


def test_a_sender_that_goes_beyond_its_window_is_refused_and_the_target_holds_no_more(served, monkeypatch):
    """While the parser is busy, what a sender may queue is its window: one chunk more is refused."""
    listener, port, context = served
    busy = threading.Event()
    queued: list[Incoming] = []

    def parse(session: Incoming) -> None:
        queued.append(session)
        busy.wait(10)

    monkeypatch.setattr(Incoming, "_parse", parse)
    sock, nonce = _authed(listener, context, port)
    try:
        _stream(listener, sock, nonce, 0, ch.STREAM_WINDOW)
        assert not sock.poll(300)  # within the window: nothing to say
        _stream(listener, sock, nonce, ch.STREAM_WINDOW, 1)
        reply = sock.recv_multipart() if sock.poll(3000) else None
        assert reply is not None and reply[0] == ch.REFUSED and b"goes beyond what the target granted" in reply[1]
        assert queued[0]._chunks.qsize() <= ch.STREAM_WINDOW + 1  # the refusal's end-of-stream marker
        assert listener._thread.is_alive() and _still_serves(context, port)
    finally:
        busy.set()
        sock.close()


def test_the_target_grants_credit_as_it_takes_the_stream(served, monkeypatch):
    listener, port, context = served
    taken: list[bytes] = []

    def parse(session: Incoming) -> None:
        while True:
            chunk = session._read(ch.STREAM_CHUNK)
            if not chunk:
                return
            taken.append(chunk)

    monkeypatch.setattr(Incoming, "_parse", parse)
    sock, nonce = _authed(listener, context, port)
    try:
        granted, sent = ch.STREAM_WINDOW, 0
        while sent < 3 * ch.STREAM_WINDOW:  # a sender that sends only what it was granted
            while sent < granted and sent < 3 * ch.STREAM_WINDOW:
                sock.send_multipart(ch.seal(listener.key, nonce, ch.STREAM, sent, bytes(ch.STREAM_CHUNK)))
                sent += 1
            if sent < 3 * ch.STREAM_WINDOW:
                assert sock.poll(3000), "no CREDIT came"
                kind, body = sock.recv_multipart()
                assert kind == ch.CREDIT
                granted += ch.decode(body)["chunks"]
        deadline = time.monotonic() + 3
        while len(taken) < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(taken) == sent
    finally:
        sock.close()
