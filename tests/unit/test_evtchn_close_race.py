"""A port's fds are closed by one thread while another uses them (the peer went).

The peer's close reaches a domain's event-loop thread as ``evtchn_peer`` with no fd,
while a workload thread may be inside ``notify``. The close must wait for the send
in flight; a send after it is dropped, as on any unbound port. Each test holds the
using thread inside its system call, lets the closing thread run, then lets go.
"""

from __future__ import annotations

import os

import pytest

from xenlike.kernel import events
from xenlike.kernel.events import EventLoop, new_port_fd

from .race_support import Held, close_while_held

PORT = 5


@pytest.fixture
def loop():
    loop = EventLoop("d7 (race)")
    peer = new_port_fd()
    loop.bind(PORT, new_port_fd(), os.dup(peer))
    yield loop, peer
    loop.close()
    os.close(peer)


def _race(use, close, monkeypatch, name: str) -> tuple[list, list]:
    held = Held(getattr(events.os, name))
    monkeypatch.setattr(events.os, name, held)
    waited, use_errors, close_errors = close_while_held(held, use, close)
    assert waited, "the fd was closed while a thread was using it"
    return use_errors, close_errors


def test_a_notify_in_flight_finishes_before_the_peer_s_close_takes_its_fd(loop, monkeypatch):
    loop, peer = loop
    use_errors, close_errors = _race(
        lambda: loop.notify(PORT), lambda: loop.connect(PORT, None), monkeypatch, "eventfd_write"
    )
    assert use_errors == [] and close_errors == []
    assert os.eventfd_read(peer) == 1  # the send in flight arrived
    monkeypatch.undo()
    loop.notify(PORT)  # and one after the close is dropped, not written to a stale fd
    assert loop.channel(PORT).send_fd is None


def test_an_unbind_waits_for_a_notify_in_flight(loop, monkeypatch):
    loop, peer = loop
    use_errors, close_errors = _race(lambda: loop.notify(PORT), lambda: loop.unbind(PORT), monkeypatch, "eventfd_write")
    assert use_errors == [] and close_errors == []
    assert os.eventfd_read(peer) == 1


def test_an_upcall_being_cleared_holds_off_an_unbind(loop, monkeypatch):
    loop, peer = loop
    os.eventfd_write(loop.channel(PORT).recv_fd, 1)
    use_errors, close_errors = _race(lambda: loop.poll(1), lambda: loop.unbind(PORT), monkeypatch, "read")
    assert use_errors == [] and close_errors == []
