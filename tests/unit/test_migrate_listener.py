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
import time

import pytest
import zmq

from dom0.toolstack.migrate_receive import MAX_SESSIONS, MigrationListener
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
    context.term()


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
    assert _ask(sock, [ch.AUTH, ch.auth_reply(listener.key, challenge[1])]) == [ch.OK]
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
