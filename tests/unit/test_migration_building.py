"""A target that builds says BUILDING: the sender waits out a long build, and gives up on a silent target.

The sender's side on a real zmq DEALER against a ROUTER that plays the target;
the target's side with a listener that records what it would send.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from dom0.toolstack import migrate_send
from dom0.toolstack.migrate_receive import Incoming
from dom0.toolstack.migrate_send import Migration, MigrationFailed
from xenlike.public import migration_channel as ch


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch):
    """A sender (a Migration's wire alone) connected to a ROUTER that answers as the target would."""
    monkeypatch.setattr(migrate_send, "ANSWER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(migrate_send, "BUILD_TIMEOUT_S", 1.0)
    context = zmq.Context()
    target = context.socket(zmq.ROUTER)
    target.setsockopt(zmq.LINGER, 0)
    port = target.bind_to_random_port("tcp://127.0.0.1")
    sender = Migration.__new__(Migration)  # the wire without a toolstack: what _built uses
    sender.context = zmq.Context()
    sender.sock = sender.context.socket(zmq.DEALER)
    sender.sock.setsockopt(zmq.LINGER, 0)
    sender.disconnects = sender.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sender.endpoint = f"tcp://127.0.0.1:{port}"
    sender.sock.connect(sender.endpoint)
    sender.sock.send_multipart([ch.HELLO, b"{}"])
    identity = target.recv_multipart()[0]
    yield sender, lambda *frames: target.send_multipart([identity, *frames])
    sender.sock.disable_monitor()
    sender.disconnects.close(linger=0)
    sender.sock.close()
    sender.context.term()
    target.close()
    context.term()


def _say_building(send, every_s: float, for_s: float, then: list[bytes] | None = None) -> threading.Thread:
    def run() -> None:
        end = time.monotonic() + for_s
        while time.monotonic() < end:
            send(ch.BUILDING, b"")
            time.sleep(every_s)
        if then is not None:
            send(*then)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_build_longer_than_a_step_goes_on_while_the_target_says_building(wire) -> None:
    sender, send = wire
    target = _say_building(send, 0.05, 0.6, then=[ch.DONE, ch.encode({"domid": 7})])  # twice the silence allowed
    try:
        assert ch.decode(sender._built()) == {"domid": 7}
    finally:
        target.join()


def test_a_target_that_falls_silent_while_it_builds_is_given_up_on(wire) -> None:
    sender, send = wire
    send(ch.BUILDING, b"")
    with pytest.raises(MigrationFailed, match=r"did not answer within 0\.3s"):
        sender._built()


def test_a_build_that_never_ends_is_given_up_on_at_the_build_timeout(wire) -> None:
    sender, send = wire
    target = _say_building(send, 0.05, 1.5)
    try:
        with pytest.raises(MigrationFailed, match=r"did not build it within 1s"):
            sender._built()
    finally:
        target.join()


class _Listener:
    """What a session asks of its listener: messages are recorded, calls run here."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, session: Incoming, kind: bytes, body: bytes) -> None:
        self.sent.append(kind)

    def calls(self, fn):
        return fn()


def test_the_target_says_building_before_it_builds_and_while_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ch, "BUILDING_INTERVAL_S", 0.05)
    listener = _Listener()
    session = Incoming(listener, b"sender")  # type: ignore[arg-type]

    def slow_build(image: object) -> str:
        listener.sent.append(b"(build starts)")
        time.sleep(0.3)  # six intervals
        return "built"

    monkeypatch.setattr(session, "_build", slow_build)
    assert session._build_saying_so(object()) == "built"  # type: ignore[arg-type]
    said = list(listener.sent)
    assert said[:2] == [ch.BUILDING, b"(build starts)"]
    assert said.count(ch.BUILDING) >= 2  # and more while it built
    time.sleep(0.15)
    assert listener.sent == said  # nothing once it is built


def test_ports_without_a_vif_are_refused_before_any_domain_exists():
    """An image's (or a sender's) config is not parsed as an xl.cfg is: the builder checks what it relies on."""
    from types import SimpleNamespace

    from dom0.builder import DomainBuilder

    builder = DomainBuilder.__new__(DomainBuilder)
    builder.ctx = SimpleNamespace(hypercall=lambda *args, **kwargs: pytest.fail("a domain was asked for"))
    with pytest.raises(ValueError, match="ports need a vif"):
        builder.create({"name": "pt", "memory": 32, "ports": [{"host": 8080, "guest": 80}], "vif": []})


def test_a_carried_config_creates_no_disk_image():
    """size= makes a new empty image at create; for a restored or migrated guest it would lose its disk's data."""
    from dom0.toolstack.ops_migrate import carried_config

    config = {"name": "g", "disk": [{"vdev": "xvda", "target": "/srv/g.img", "size": 1 << 30}]}
    carried = carried_config(config)
    assert carried["disk"] == [{"vdev": "xvda", "target": "/srv/g.img", "size": None}]
    assert config["disk"][0]["size"] == 1 << 30  # the image's own record is left as it was
