"""A domain that does not read its hypercall socket cannot stop the hypervisor's loop.

The hypervisor answers every domain from one loop. A guest that sends hypercalls
and never reads the replies used to block that loop in ``sendall`` after a few
hundred replies, and every other domain's calls went unanswered. Replies and
events now wait in the socket's :class:`Outbox`; the guest's requests are not
read meanwhile, and a domU that leaves too much unread is crashed. The
hypervisor runs in-process here, its loop turned by the test.
"""

from __future__ import annotations

import os
import select
import socket
import threading

import msgpack
import pytest

from xenlike.hypervisor import core
from xenlike.kernel.hypercall import MAX_DATAGRAM, Outbox, recv_message, send_message, socketpair

from .hypervisor_support import InProcessHost


@pytest.fixture
def host(tmp_path):
    host = InProcessHost(tmp_path)
    yield host
    host.close()


def _flood(host: InProcessHost, guest: socket.socket) -> int:
    """Send xen_version calls, never reading a reply, until the hypervisor stops reading them; how many went."""
    hv = host.hv
    sock = hv.domains[1].sock
    guest.setblocking(False)
    sent = 0
    for _ in range(20_000):
        try:
            guest.send(msgpack.packb({"id": sent, "op": "xen_version", "args": {}}))
            sent += 1
        except BlockingIOError:
            pass  # its socket is full: the hypervisor has not read what waits there
        host.turn()
        if hv.selector.get_key(sock).data == hv._on_writable:
            break
    guest.setblocking(True)
    return sent


def test_a_guest_that_reads_no_replies_stops_only_itself(host):
    hv = host.hv
    hostile, innocent = host.domu(1), host.domu(2)
    sent = _flood(host, hostile)
    hostile_sock = hv.domains[1].sock
    assert hv.selector.get_key(hostile_sock).data == hv._on_writable  # its requests wait: none is read
    assert len(hv._outboxes[hostile_sock.fileno()]) > 0

    send_message(innocent, {"id": 7, "op": "xen_version", "args": {}})
    host.turn(3)
    innocent.settimeout(5)
    reply, _ = recv_message(innocent)
    assert reply["id"] == 7 and reply["ok"]

    # Once it reads, everything it asked is answered, in order.
    hostile.settimeout(5)
    ids = []
    while len(ids) < sent:
        host.turn()
        ids.append(recv_message(hostile)[0]["id"])
    assert ids == list(range(sent))
    host.turn(3)
    assert hv.selector.get_key(hostile_sock).data == hv._on_hypercall
    assert host.killed == []


def test_a_domu_that_leaves_too_much_unread_is_crashed(host, monkeypatch):
    monkeypatch.setattr(core, "DOMU_OUTBOX_BYTES", 4096)
    hv = host.hv
    _hostile, innocent = host.domu(1), host.domu(2)  # the guest's end stays open, unread
    hostile_sock = hv.domains[1].sock
    for port in range(2000):  # events other domains cause keep coming while it reads nothing
        hv.send_event(1, {"event": "evtchn_peer", "port": port, "pad": bytes(256)})
        if host.killed:
            break
    assert host.killed == [1]
    assert hv._outboxes[hostile_sock.fileno()].nbytes == 0  # what waited was dropped with it
    assert host.call(innocent, "xen_version")["ok"]


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_an_outbox_keeps_order_fragments_what_is_large_and_carries_the_fds():
    ours, theirs = socketpair()
    r, w = os.pipe()
    got: list = []
    try:
        outbox = Outbox(ours)
        small = [{"n": i} for i in range(400)]  # more datagrams than the socket holds
        for message in small:
            outbox.put(message)
        outbox.put({"n": "large", "blob": bytes(3 * MAX_DATAGRAM // 2)}, [r])
        assert len(outbox) > 0 and outbox.nbytes > 0  # nothing blocked: the rest waits

        def read() -> None:
            theirs.settimeout(10)
            while len(got) < len(small) + 1:
                message, fds = recv_message(theirs)
                got.append((message["n"], len(fds)))
                for fd in fds:
                    os.close(fd)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while not outbox.flush():
            select.select([], [ours], [], 1)
        reader.join(10)
        assert got == [*((i, 0) for i in range(400)), ("large", 1)]
        assert len(outbox) == 0 and outbox.nbytes == 0
    finally:
        ours.close()
        theirs.close()
        os.close(r)
        os.close(w)


def test_an_outbox_dropped_closes_the_fds_it_kept():
    ours, theirs = socketpair()
    r, w = os.pipe()
    try:
        outbox = Outbox(ours)
        for _ in range(400):
            outbox.put({"filler": bytes(64)})
        before = _open_fds()
        outbox.put({"with": "fd"}, [r])
        assert len(_open_fds() - before) == 1  # its own duplicate, waiting behind the rest
        outbox.discard()
        assert _open_fds() == before and len(outbox) == 0
    finally:
        ours.close()
        theirs.close()
        os.close(r)
        os.close(w)
