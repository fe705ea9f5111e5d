"""xenstored's transports in dom0: each domU's xenstore ring, and dom0's own clients.

:class:`XenstoreService` wraps the transport-independent :class:`Xenstored`
daemon. A domU reaches it through its ``xenstore_domain_interface`` page and an
event channel (``INTRODUCE domid gfn evtchn``); a :class:`RingConnection` reads
requests off that page, hands each to the daemon, and writes replies and watch
events back, keeping what does not fit until the guest makes room. The
toolstack and the xenstore CLI verbs use in-process connections.

A guest that breaks the framing (a header announcing more than 4096 bytes, ring
indices that cannot be right) loses its connection, as C xenstored ignores it:
its watches and transactions are dropped, the ring is served no more, and, as
xenstored offers the connection error feature (docs/misc/xenstore-ring.txt), the
page's ``error`` field says why (``XENSTORE_ERROR_RINGIDX`` or ``_PROTO``) and the
event channel tells the guest. Nobody else is affected.

A guest that does not take its replies off the ring cannot make dom0 keep more and
more of them: while ``outstanding`` replies (C xenstored's quota, 20) wait for room,
its next requests are left in its ring unread, and while more than
:data:`WATCH_EVENT_BACKLOG` bytes wait, watch events for it are dropped and counted
(oxenstored's ``quota-maxwatchevents``), so what others write cannot fill dom0's
memory either.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from xenlike.kernel.byte_channel import ByteChannel
from xenlike.kernel.events import EventLoop
from xenlike.public.ring import RingError
from xenlike.public.xs_wire import (
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XENSTORE_SERVER_FEATURE_ERROR,
    MessageReader,
    XenstoreInterface,
    XsMessage,
    XsWireError,
    describe_ring_error,
    error_payload,
    pack_msg,
)
from xenlike.public.xs_wire import XsdSockmsgType as XS

from .faults import HeldRequests, XenstoreFaults, traced
from .faults import now as fault_clock
from .xenstored import LIBRARY_FEATURES, Connection, Delivery, Xenstored

__all__ = ["XenstoreService", "RingConnection", "TRANSPORT_FEATURES"]

log = logging.getLogger("dom0.xenstored")

#: Bytes of replies and events waiting for a guest beyond which its watch events are dropped
#: (C xenstored's soft memory quota per domain).
WATCH_EVENT_BACKLOG = 2 << 20

#: The ``server_features`` a ring connection offers: the daemon's, and the error indicator it sets.
TRANSPORT_FEATURES = LIBRARY_FEATURES | XENSTORE_SERVER_FEATURE_ERROR


class RingConnection:
    """One domU's xenstore ring, served by dom0.

    A :class:`~xenlike.kernel.byte_channel.ByteChannel` over the page (dom0
    consumes ``req`` and produces ``rsp``) moves the bytes; this class frames
    them. Everything runs in dom0's loop thread: requests are handled as they
    come off the ring, and the replies and watch events they cause go out with
    one notification when the upcall ends.
    """

    def __init__(
        self, service: XenstoreService, conn: Connection, interface: XenstoreInterface, port: int, label: str
    ) -> None:
        self.service = service
        self.conn = conn
        self.interface = interface
        self.port = port
        self.label = label
        self._reader = MessageReader()
        self._held = HeldRequests()  # requests an injected xs-delay holds back, in order
        self._dropped = False
        self._written = 0  # bytes handed to the channel so far
        self._ends: deque[int] = deque()  # where each message not yet in the ring ends, in those bytes
        self.events_dropped = 0  # watch events not sent: too much waited for the guest already
        self.channel = ByteChannel(
            interface.rsp,
            interface.req,
            lambda: service.loop.notify(port),
            self._on_requests,
            may_read=self._may_read,
        )

    @property
    def broken(self) -> bool:
        """The connection was dropped (a framing or ring error) or closed."""
        return self.channel.closed

    def on_event(self, port: int) -> None:
        """The guest produced requests or consumed replies."""
        try:
            self.channel.on_event()
        except (XsWireError, RingError) as exc:
            self._drop(exc)

    def _on_requests(self, data: bytes) -> None:
        for message in self._reader.feed(data):
            if self.service.faults.rules or self._held.queue:
                self._faulted(message)
            else:
                self._handle(message)

    def _handle(self, message: XsMessage) -> None:
        deliveries = self.service.daemon.handle(self.conn, message.type, message.req_id, message.tx_id, message.payload)
        self.service.route(deliveries)

    # -- injected faults (dom0/faults.py: xs-refuse, xs-delay) ---------------------------

    def _faulted(self, message: XsMessage) -> None:
        rule = self.service.faults.match(self.conn.domid, message.payload)
        delay = rule.delay_ms / 1000 if rule is not None and rule.kind == "xs-delay" else 0.0
        if not delay and not self._held.queue:
            self._serve(message)
            return
        if delay:
            traced("xs-delay", conn=self.conn.domid, path=rule.path if rule else "", delay_ms=int(delay * 1000))
        self._held.hold(message, fault_clock() + delay)
        self._schedule()

    def _serve(self, message: XsMessage) -> None:
        """Handle a request now, unless an xs-refuse rule answers it with its errno."""
        rule = self.service.faults.match(self.conn.domid, message.payload)
        if rule is None or rule.kind != "xs-refuse":
            self._handle(message)
            return
        traced("xs-refuse", conn=self.conn.domid, path=rule.path, errno=rule.errno_name)
        self.service.route(
            [Delivery(self.conn, XS.ERROR, message.req_id, message.tx_id, error_payload(rule.errno_name))]
        )

    def _schedule(self) -> None:
        due, poll = self._held.next_due(), self.service.faults.poll
        if due is None:
            return
        if poll is None:
            self._release()  # nobody to wait with: served now rather than never
            return
        poll(lambda: fault_clock() >= due, max(0.0, due - fault_clock()) + 0.01, lambda ok: self._release())

    def _release(self) -> None:
        if self.broken:
            self._held.queue.clear()
            return
        for message in self._held.due(fault_clock()):
            self._serve(message)
        if self._held.queue:
            self._schedule()

    def send(self, delivery: Delivery) -> None:
        """A reply or watch event for the guest; what does not fit waits for room (see the module)."""
        if delivery.msg_type == XS.WATCH_EVENT and self.channel.pending_out() > WATCH_EVENT_BACKLOG:
            self.events_dropped += 1
            if self.events_dropped == 1 or self.events_dropped % 1000 == 0:
                log.warning(
                    "%s: %d watch event(s) dropped: %d bytes already wait for the guest to read them",
                    self.label,
                    self.events_dropped,
                    self.channel.pending_out(),
                )
            return
        try:
            self._written += self.channel.write(
                pack_msg(delivery.msg_type, delivery.req_id, delivery.tx_id, delivery.payload)
            )
        except RingError as exc:
            self._drop(exc)
            return
        self._ends.append(self._written)

    def outstanding(self) -> int:
        """Messages for the guest not yet (wholly) in its ring."""
        in_ring = self._written - self.channel.pending_out()
        ends = self._ends
        while ends and ends[0] <= in_ring:
            ends.popleft()
        return len(ends)

    def _may_read(self) -> bool:
        """Whether to take the guest's next requests: not while its ``outstanding`` quota of replies waits.

        Requests an injected xs-delay holds count as waiting replies: they will be.
        """
        waiting = self.outstanding() + len(self._held.queue)
        return waiting < self.service.daemon.quotas.for_domain(self.conn.domid).outstanding

    def _drop(self, exc: Exception) -> None:
        """Stop serving the ring for good (core.c ``ignore_connection``), and say why in the page if offered."""
        if self._dropped:
            return
        self._dropped = True
        self.channel.close()
        self._held.queue.clear()
        self.service.daemon.reset_connection(self.conn)  # its watches and transactions go
        code = XENSTORE_ERROR_RINGIDX if isinstance(exc, RingError) else XENSTORE_ERROR_PROTO
        offered = self.service.daemon.domain_features(self.conn.domid) & XENSTORE_SERVER_FEATURE_ERROR
        if offered:
            self.interface.set_error(code)
            self.service.loop.notify(self.port)
        log.warning(
            "%s: xenstore connection dropped: %s: %s; its watches and transactions are gone%s",
            self.label,
            describe_ring_error(code),
            exc,
            ", and the ring page says so" if offered else "",
        )

    def close(self) -> None:
        self.channel.close()
        self.interface.release()


class XenstoreService:
    """The xenstore daemon with its ring connections."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.daemon = Xenstored(sink=self._sink, server_features=TRANSPORT_FEATURES)
        self.faults = XenstoreFaults()  # xs-refuse / xs-delay rules (xenlike inject)
        self._rings: dict[int, RingConnection] = {}  # by connection id
        self._by_domid: dict[int, RingConnection] = {}

    def connect_domain(self, domid: int, interface: XenstoreInterface, port: int, label: str) -> RingConnection:
        """INTRODUCE: serve ``domid`` on its ring page and dom0's ``port``."""
        conn = self.daemon.introduce_domain(domid)
        interface.publish_server_features(self.daemon.domain_features(domid))
        ring = RingConnection(self, conn, interface, port, label)
        self._rings[conn.id] = ring
        self._by_domid[domid] = ring
        self.loop.set_handler(port, ring.on_event)
        return ring

    def release_domain(self, domid: int) -> None:
        """RELEASE: stop serving ``domid`` (fires ``@releaseDomain``)."""
        ring = self._by_domid.pop(domid, None)
        if ring is not None:
            self._rings.pop(ring.conn.id, None)
            ring.close()
        if self.daemon.is_domain_introduced(domid):
            self.daemon.release_domain(domid)

    def route(self, deliveries: list[Delivery]) -> None:
        """Send each delivery to its connection's transport."""
        self.daemon.deliver(deliveries)

    def _sink(self, delivery: Delivery) -> None:
        ring = self._rings.get(delivery.conn.id)
        if ring is not None:
            ring.send(delivery)

    def local_client(self, receiver: Callable[[Delivery], None] | None = None) -> Connection:
        """A privileged in-process connection (watch events go to ``receiver``)."""
        return self.daemon.connect(0, True, receiver=receiver)
