"""The sender's side of the stream window: CREDITs are taken, and never keep it waiting past a deadline.

A real DEALER socket, as ``xenlike migrate`` connects, against a ROUTER on 127.0.0.1
standing in for the target: only the wire methods of :class:`Migration` are used.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

from dom0.toolstack.migrate_send import Migration, MigrationFailed, TargetSilent
from xenlike.public import migration_channel as ch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def wire():
    context = zmq.Context()
    port = _free_port()
    target = context.socket(zmq.ROUTER)
    target.setsockopt(zmq.LINGER, 0)
    target.bind(f"tcp://127.0.0.1:{port}")
    sender = object.__new__(Migration)  # its wire alone: no toolstack, no domain
    sender.endpoint = f"tcp://127.0.0.1:{port}"
    sender.sock = context.socket(zmq.DEALER)
    sender.sock.setsockopt(zmq.LINGER, 0)
    sender.disconnects = sender.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sender.sock.connect(sender.endpoint)
    sender._credit = 0
    sender.sock.send(b"HELLO")
    assert target.poll(3000)
    identity = target.recv_multipart()[0]
    yield sender, target, identity
    context.destroy(linger=0)


def test_credits_met_while_waiting_for_an_answer_are_taken(wire):
    sender, target, identity = wire
    target.send_multipart([identity, ch.CREDIT, ch.encode({"chunks": 3})])
    target.send_multipart([identity, ch.ROUND_OK, ch.encode({"round": 1})])
    assert sender._message(3.0) == (ch.ROUND_OK, ch.encode({"round": 1}))
    assert sender._credit == 3


def test_a_target_that_only_sends_credit_is_silent_once_the_answer_s_time_is_up(wire):
    sender, target, identity = wire
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            target.send_multipart([identity, ch.CREDIT, ch.encode({"chunks": 1})])
            time.sleep(0.01)

    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            sender._message(0.5)
        except BaseException as exc:
            outcome.append(exc)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    waiter = threading.Thread(target=wait, daemon=True)  # a wait that never ends fails here, not hangs
    waiter.start()
    waiter.join(3.0)
    stop.set()
    flooder.join(2)
    assert not waiter.is_alive(), "CREDITs kept the sender waiting past its 0.5 s"
    assert isinstance(outcome[0], TargetSilent) and "did not answer within 0.5s" in str(outcome[0])
    assert sender._credit > 0


@pytest.mark.parametrize("body", [b'{"chunks":0}', b'{"chunks":"8"}', b"{}", b"not json"])
def test_a_credit_that_grants_nothing_fails_the_migration(wire, body):
    sender, target, identity = wire
    target.send_multipart([identity, ch.CREDIT, body])
    with pytest.raises(MigrationFailed, match="a CREDIT that grants no chunks"):
        sender._wait_for_credit()
