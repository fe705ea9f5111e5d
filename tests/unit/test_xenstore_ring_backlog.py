"""A guest that does not take its xenstore replies cannot make dom0 keep more and more of them.

dom0 serves a domU's ring in its own loop; every reply and watch event that does
not fit the response ring waits in dom0's memory. A guest that keeps writing
requests and never reads used to make dom0 queue a reply for each (265 MB from
3 MB of READs). Now, while the ``outstanding`` quota of replies waits, the guest's
next requests stay in its own ring unread; watch events are dropped once the
backlog is past ``WATCH_EVENT_BACKLOG``. Nothing acknowledged is lost: once the
guest reads, every request it made is answered, in order.
"""

from __future__ import annotations

import pytest

from dom0 import xenstore_service
from dom0.xenstore_service import XenstoreService
from xenlike.public.xs_wire import MessageReader, XenstoreInterface, join_strings, pack_msg
from xenlike.public.xs_wire import XsdSockmsgType as T

GUEST, PORT = 1, 5


class _Loop:
    def notify(self, port: int) -> None:
        pass

    def set_handler(self, port: int, handler) -> None:
        pass


@pytest.fixture
def served():
    service = XenstoreService(_Loop())
    daemon = service.daemon
    dom0 = daemon.connect(0)
    home = f"/local/domain/{GUEST}"
    daemon.handle(dom0, T.MKDIR, 1, 0, join_strings([home]))
    daemon.handle(dom0, T.SET_PERMS, 1, 0, join_strings([home, f"n{GUEST}"]))
    page = memoryview(bytearray(4096))
    ring = service.connect_domain(GUEST, XenstoreInterface(page), PORT, f"d{GUEST}")
    yield service, ring, XenstoreInterface(page)
    service.release_domain(GUEST)


def _put(guest: XenstoreInterface, message: bytes) -> bool:
    """Write one whole request into the guest's request ring if it fits now."""
    if guest.req.space() < len(message):
        return False
    assert guest.req.write(message) == len(message)
    return True


def _replies(guest: XenstoreInterface, reader: MessageReader) -> list:
    return reader.feed(guest.rsp.read())


def test_requests_wait_in_the_guest_s_ring_while_its_replies_wait_in_dom0(served):
    service, ring, guest = served
    assert _put(guest, pack_msg(T.WRITE, 0, 0, b"v\0" + b"x" * 900))  # a node of its own: 900-byte replies
    ring.on_event(PORT)
    reader = MessageReader()
    assert [m.req_id for m in _replies(guest, reader)] == [0]

    sent = 0
    for _ in range(2000):  # far more READs than dom0 will hold replies for; the guest never reads
        while _put(guest, pack_msg(T.READ, sent + 1, 0, b"v\0")):
            sent += 1
        ring.on_event(PORT)
    outstanding = service.daemon.quotas.for_domain(GUEST).outstanding
    ring_requests = guest.req.size // len(pack_msg(T.READ, 1, 0, b"v\0"))
    assert ring.outstanding() <= outstanding + ring_requests  # one ring's worth past the quota at most
    assert ring.channel.pending_out() < 256 << 10
    assert guest.req.available() > 0  # the rest waits in the guest's own ring

    answered: list[int] = []
    for _ in range(10_000):
        answered += [m.req_id for m in _replies(guest, reader)]
        ring.on_event(PORT)  # the guest's notification: it took replies
        if len(answered) == sent:
            break
    assert answered == list(range(1, sent + 1))
    assert not ring.broken


def test_watch_events_past_the_backlog_are_dropped_and_counted(served, monkeypatch):
    service, ring, guest = served
    monkeypatch.setattr(xenstore_service, "WATCH_EVENT_BACKLOG", 16 << 10)
    reader = MessageReader()
    assert _put(guest, pack_msg(T.WATCH, 1, 0, b"w\0" + b"t" * 900 + b"\0"))
    ring.on_event(PORT)
    assert T.WATCH in [m.type for m in _replies(guest, reader)]
    dom0 = service.daemon.connect(0)
    path = f"/local/domain/{GUEST}/w"
    for i in range(200):  # dom0 writes where the guest watches; the guest reads nothing
        service.route(service.daemon.handle(dom0, T.WRITE, 100 + i, 0, path.encode() + b"\0" + b"%d" % i))
    assert ring.events_dropped > 0
    assert ring.channel.pending_out() <= (16 << 10) + 1000  # the backlog, plus the event that crossed it


def test_requests_an_injected_delay_holds_count_against_the_quota(served):
    """While an admin's xs-delay holds a guest's requests, they are replies to come: the ring is not read past them."""
    from dom0.faults import XenstoreRule

    service, ring, guest = served
    service.faults.rules.append(XenstoreRule(1, "xs-delay", f"/local/domain/{GUEST}", delay_ms=60_000))
    service.faults.poll = lambda ready, timeout, done: None  # dom0's loop would release them in a minute
    read = pack_msg(T.READ, 1, 0, b"v\0")
    for _ in range(500):
        while _put(guest, read):
            pass
        guest.rsp.read()  # the guest takes whatever comes
        ring.on_event(PORT)
    outstanding = service.daemon.quotas.for_domain(GUEST).outstanding
    assert len(ring._held.queue) <= outstanding + guest.req.size // len(read)
