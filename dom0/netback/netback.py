"""The network back end's data path (Linux ``drivers/net/xen-netback/netback.c`` and ``rx.c``).

One :class:`NetifQueue` serves one vif's tx and rx rings in a worker process of
its own (``dom0/backend_worker.py``), between the rings and the vif's TAP
device ``vif<domid>.<devid>`` on its bridge (10-byte ``virtio_net_hdr`` first,
``xenlike.kernel.netdev``):

- **tx** (guest to dom0, ``xenvif_tx_action``): requests are copied off the
  ring once and parsed into packets (first request, extra info, fragments;
  ``xenlike.public.netif``), every field checked against netif.h's rules; the
  granted pages are mapped through :class:`~dom0.grant_cache.PersistentGrants`
  (netfront reuses a fixed pool of pages granted once, so each maps once); the
  first bytes of headers are copied into dom0's own memory (as
  ``XEN_NETBACK_TX_COPY_LEN``, XSA-423) and parsed there, and the packet goes to
  the TAP with one ``writev``: the vnet header, the private copy of the headers,
  then the rest straight from the mapped pages. ``csum_blank`` becomes
  ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` with ``csum_start``/``csum_offset`` from
  :mod:`xenlike.kernel.skb`; GSO extra info becomes ``gso_type``/``gso_size``/
  ``hdr_len``. A packet that breaks a rule gets ``NETIF_RSP_ERROR`` on each of
  its requests and ``NETIF_RSP_NULL`` on each extra-info slot, and nothing else
  happens; an index more than a ring ahead is a :class:`~xenlike.public.ring.RingError`,
  which disconnects the vif (as blkback). ``rate`` is a credit of bytes per
  interval, replenished as ``tx_add_credit`` does; a packet beyond the credit
  waits for the next interval on a timer.
- **rx** (dom0 to guest, ``xenvif_rx_action``): netback copies into pages the
  front end posted (``request-rx-copy``), here with one ``readv`` from the TAP
  straight into the mapped rx pages. The TAP is watched only while enough
  requests are posted for a largest frame. A response lands in the slot of the
  request whose page it filled (Linux's netfront finds the page by the slot), so
  a frame that may be GSO is read into the pages of requests 0, 2, 3, ...:
  request 1's slot then carries the GSO extra info, and a frame that turns out
  not to be GSO has its later pieces moved down one page. Frames the front end
  cannot take (GSO it did not ask for, larger than its MTU, more than one page
  without ``feature-sg``) are dropped and counted.

Each batch of responses is pushed once, with at most one notification (the
worker's loop kicks the front end when :meth:`NetifQueue.process` says so).
While packets keep coming (two batches less than :data:`POLL_NS`, 1 ms, apart)
the worker looks for more without sleeping for that long after the last one, as
NAPI polls before it re-enables the interrupt; a vif idle for longer never
polls, and the CPU is yielded between looks. Each packet is an ``IO`` trace
record (``net-tx``: taken off the ring to written to the TAP; ``net-rx``: read
from the TAP to its responses pushed; ``dur`` the latency), written only while
the class is traced.
Counters are the guest's view, as xentop's NETTX/NETRX: ``tx_*`` is what the
guest sent, ``rx_*`` what it received.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenlike.kernel import trace
from xenlike.kernel.hypercall import HypercallClient
from xenlike.kernel.memory import ForeignMapping
from xenlike.kernel.netdev import (
    VIRTIO_NET_HDR,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
)
from xenlike.kernel.skb import MAX_HEADER_LEN, HeaderError, checksum_setup, gso_header_length
from xenlike.public.netif import (
    ETH_HLEN,
    MAX_GSO_FRAME,
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETIF_RX_PROTOCOL,
    NETIF_TX_PROTOCOL,
    RX_RESPONSE,
    TX_REQUEST,
    VLAN_HLEN,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_NR_SLOTS_MIN,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    pack_gso_extra,
    unpack_extra,
)
from xenlike.public.ring import BackRing, RingError
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import PAGE_SIZE

from ..grant_cache import GrantRefused, PersistentGrants, map_frames

if TYPE_CHECKING:
    from xenlike.kernel.events import EventLoop

    from ..backend_worker import WorkerContext

__all__ = ["NetifQueue", "PacketError", "netif_data_path", "MAX_PERSISTENT_GRANTS", "RX_BATCH"]

log = logging.getLogger("dom0.netback")

MAX_PERSISTENT_GRANTS = 1024  # per ring: netfront's pool is a ring's worth (256) of pages
TX_COPY_LEN = MAX_HEADER_LEN  # header bytes copied into dom0's memory before they are parsed
MAX_BURST = 131072  # tx_add_credit: a burst big enough for a 64 KiB packet, whatever the rate
RX_BATCH = 64  # frames read from the TAP before the responses are pushed
TX_BATCH = 256  # requests taken off the ring before the responses are pushed
# How long a worker looks for more before it sleeps, while packets come closer together than this
# (blkback's POLL_S): a TCP stream's next segment or ACK, and a request/response loop's next request
# (a guest-to-guest UDP round trip takes 0.2-0.5 ms), come sooner. On a VM a sleeping worker's CPU
# halts, and waking it costs 25-70 us a hop; a vif idle for longer never polls.
POLL_NS = 1_000_000

_IO = TraceClass.IO.value

_GSO_TO_VIRTIO = {
    XEN_NETIF_GSO_TYPE_TCPV4: VIRTIO_NET_HDR_GSO_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6: VIRTIO_NET_HDR_GSO_TCPV6,
}
_VIRTIO_TO_GSO = {v: k for k, v in _GSO_TO_VIRTIO.items()}


class PacketError(Exception):
    """A tx packet refused (``NETIF_RSP_ERROR``); ``malformed`` when the front end broke netif.h's rules."""

    def __init__(self, message: str, malformed: bool = True) -> None:
        super().__init__(message)
        self.malformed = malformed


@dataclass(slots=True)
class _TxPacket:
    """One packet's slots as copied off the ring: its requests (gref, offset, flags, id, size) and extras."""

    requests: list[tuple[int, int, int, int, int]]
    extras: list[bytes]  # private copies of the extra-info slots
    slots: int  # ring slots it spans, extras included


# -- the credit timer ------------------------------------------------------------------------

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK, _TFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _CreditTimer:
    """netback's ``credit_timeout`` as a ``timerfd`` on the worker's loop: wakes the queue when credit returns."""

    def __init__(self, loop: EventLoop, on_expiry: Callable[[], None]) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self.armed = False
        self._loop = loop
        self._on_expiry = on_expiry
        loop.add_reader(fd, self._expired)

    def arm(self, delay_s: float) -> None:
        """Fire once, ``delay_s`` from now (at least a microsecond)."""
        delay_ns = max(1000, int(delay_s * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(delay_ns // 1_000_000_000, delay_ns % 1_000_000_000))
        if _libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        self.armed = True

    def _expired(self, fd: int) -> None:
        try:
            os.read(fd, 8)
        except BlockingIOError:
            return
        self.armed = False
        self._on_expiry()

    def close(self) -> None:
        self._loop.remove_reader(self.fd)
        os.close(self.fd)


class Credit:
    """``credit_bytes`` every ``credit_usec`` (netback's ``tx_credit_exceeded`` and ``tx_add_credit``)."""

    def __init__(self, credit_bytes: int, credit_usec: int, now_us: int) -> None:
        if credit_bytes <= 0 or credit_usec <= 0:
            raise ValueError(f"rate {credit_bytes} bytes per {credit_usec} us: both must be positive")
        self.credit_bytes = credit_bytes
        self.credit_usec = credit_usec
        self.remaining = credit_bytes
        self.window_start = now_us

    def take(self, size: int, now_us: int) -> int:
        """Spend ``size`` bytes; 0 if they were there, else the microseconds until the next interval."""
        next_credit = self.window_start + self.credit_usec
        if now_us >= next_credit:
            self.window_start = now_us
            # A burst big enough for the largest packet, so that no rate holds the queue for ever.
            self.remaining = min(self.remaining + self.credit_bytes, max(MAX_BURST, self.credit_bytes))
            next_credit = now_us + self.credit_usec
        if size > self.remaining:
            return next_credit - now_us
        self.remaining -= size
        return 0


@dataclass
class NetifQueue:
    """One vif's tx and rx rings and its TAP (Linux's ``struct xenvif_queue``)."""

    label: str  # "d3 (web) vif/0", for logs
    frontend: int
    hypercall: HypercallClient
    memory_fd: int  # the front end's memory, which dom0 may map
    loop: EventLoop  # the worker's: the TAP and the credit timer are watched on it
    tap: int  # vif<domid>.<devid>: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, on its bridge, up
    tx_ring_ref: int
    rx_ring_ref: int
    sg: bool = False  # the front end's feature-sg: rx frames may span slots
    gso_tcpv4: bool = False  # its feature-gso-tcpv4: rx GSO extra info for TCP/IPv4
    gso_tcpv6: bool = False
    csum: bool = True  # it takes csum_blank (no feature-no-csum-offload)
    rate: tuple[int, int] | None = None  # (bytes, usecs)
    mtu: int = 1500
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "tx_packets": 0,
            "tx_bytes": 0,
            "tx_dropped": 0,
            "tx_errors": 0,
            "rx_packets": 0,
            "rx_bytes": 0,
            "rx_dropped": 0,
            "rx_errors": 0,
            "maps": 0,
        }
    )

    def __post_init__(self) -> None:
        self._handles: list[int] = []
        self._mappings: list[ForeignMapping] = []
        self.tx = BackRing(self._map_ring(self.tx_ring_ref), NETIF_TX_PROTOCOL)
        self.rx = BackRing(self._map_ring(self.rx_ring_ref), NETIF_RX_PROTOCOL)
        self.tx_grants = PersistentGrants(self.hypercall, self.frontend, self.memory_fd, MAX_PERSISTENT_GRANTS)
        self.rx_grants = PersistentGrants(self.hypercall, self.frontend, self.memory_fd, MAX_PERSISTENT_GRANTS)
        os.set_blocking(self.tap, False)
        # Slots copied off the ring (as requests; an extra-info slot is packed back), not yet a whole packet.
        self._tx_backlog: list[tuple[int, int, int, int, int]] = []
        self._rx_posted: list[tuple[int, int]] = []  # (id, gref) of rx requests not answered yet
        self._rx_gso = self.sg and (self.gso_tcpv4 or self.gso_tcpv6)
        if self._rx_gso:
            self._rx_data_pages = -(-MAX_GSO_FRAME // PAGE_SIZE)
        elif self.sg:
            self._rx_data_pages = -(-(self.mtu + ETH_HLEN + VLAN_HLEN) // PAGE_SIZE)
        else:
            self._rx_data_pages = 1
        # A GSO frame's extra info takes request 1's slot: its data goes to requests 0, 2, 3, ...
        self._rx_slots = self._rx_data_pages + (1 if self._rx_gso else 0)
        self._rx_data_slots = [0, *range(2, self._rx_slots)] if self._rx_gso else list(range(self._rx_slots))
        self._rx_front_gso = {XEN_NETIF_GSO_TYPE_TCPV4: self.gso_tcpv4, XEN_NETIF_GSO_TYPE_TCPV6: self.gso_tcpv6}
        self._rx_hdr = bytearray(VIRTIO_NET_HDR.size)
        self._rx_overflow = bytearray(64)  # anything read here was more than the posted pages hold
        self._tap_watched = False
        self._tap_ready = False  # the TAP was readable when the loop last looked
        self._tap_poll = select.poll()
        self._tap_poll.register(self.tap, select.POLLIN)
        # The readv vector into the first posted requests' pages, and the (grant mappings'
        # generation, posted head) it was made for: _rx_head counts the removals from the head.
        self._rx_head = 0
        self._rx_vector_key = self._rx_vector_refused = (-1, -1)
        self._rx_vector: list[bytearray | memoryview] = []
        self._rx_by_request: list[memoryview] = []
        self._rx_traced: list[tuple[int, int, int, int]] | None = None  # frames of this batch, while IO is traced
        self._last_packet = 0  # time.monotonic_ns() when the last batch of packets was served, either way
        self._packet_gap = POLL_NS  # the time between the last two batches
        # One view per page slot of the rx arena, made once (slots stay where they are).
        self._rx_pages = [
            self.rx_grants.view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(MAX_PERSISTENT_GRANTS)
        ]
        self._warnings = 0
        now = _now_us()
        self.credit = Credit(*self.rate, now) if self.rate else None
        self._credit_wait = False
        self._timer = _CreditTimer(self.loop, self._credit_returned) if self.credit else None

    def _map_ring(self, ref: int) -> memoryview:
        frames, handles = map_frames(self.hypercall, self.frontend, [ref], writable=True)
        self._handles += handles
        mapping = ForeignMapping(self.memory_fd, frames)
        self._mappings.append(mapping)
        return mapping.view

    # -- serving ------------------------------------------------------------------------

    def process(self) -> bool:
        """Serve both rings; True if responses were pushed and the front end must be kicked.

        Raises RingError if the front end broke the ring protocol.
        """
        notify = False
        if not self._credit_wait:
            notify = self._tx_action()
        return self._rx_action() or notify

    def final_check(self) -> bool:
        """Re-arm the event indices we wait on; True if work came meanwhile (``RING_FINAL_CHECK_FOR_REQUESTS``).

        While traffic keeps coming (a packet within the last :data:`POLL_NS`), the
        loop is looked at without sleeping until the window closes, as NAPI polls
        before it re-enables the interrupt: a frame that follows soon costs no
        wake-up. An idle vif sleeps at once. The next rx frame's ``readv`` vector
        is made here first, off the path between a frame and its push.
        """
        self._prepare_rx_vector()
        more = False
        if not self._credit_wait:
            more = self.tx.final_check_for_requests()
        if not self._tap_watched:  # waiting for the front end to post rx pages
            more = self.rx.final_check_for_requests() or more
        return more or self._poll_briefly()

    def _poll_briefly(self) -> bool:
        """Look at the loop without sleeping until :data:`POLL_NS` after the last packet; True if something came.

        Only while packets come closer together than that (a stream, not a lone
        request), and giving the CPU to whatever else is runnable between looks.
        """
        if self._packet_gap >= POLL_NS:
            return False
        deadline = self._last_packet + POLL_NS
        loop = self.loop
        while time.monotonic_ns() < deadline:
            if loop.poll(0):
                return True
            os.sched_yield()
        return False

    def _served(self) -> None:
        """A packet went through (either way): the poll window opens again."""
        now = time.monotonic_ns()
        self._packet_gap, self._last_packet = now - self._last_packet, now

    # -- tx: guest to dom0 (xenvif_tx_build_gops, xenvif_tx_submit) ------------------------

    def _tx_action(self) -> bool:
        data, count = self.tx.get_requests(TX_BATCH)
        self._tx_backlog += NETIF_TX_PROTOCOL.unpack_requests(data)
        traced = trace.on(_IO)
        decoded = time.monotonic_ns() if traced else 0
        responses = bytearray()
        while self._tx_backlog:
            packet = self._next_packet()
            if packet is None:
                break
            if self.credit is not None and self._over_credit(packet.requests[0][4]):
                break
            status = self._transmit(packet)
            del self._tx_backlog[: packet.slots]
            responses += _tx_responses(packet, status)
            if traced:
                self._trace("net-tx", decoded, packet.requests[0][3], packet.requests[0][4], packet.slots, status)
        if not responses:
            return False
        self._served()
        self.tx.put_responses(responses)
        return self.tx.push_responses()

    def _next_packet(self) -> _TxPacket | None:
        """The packet at the head of the backlog, or None while its last slot is not on the ring yet."""
        backlog = self._tx_backlog
        first = backlog[0]
        pos, extras = 1, []
        more_extra = first[2] & NETTXF_extra_info
        while more_extra:
            if pos >= len(backlog):
                self._check_incomplete(pos)
                return None
            extra = TX_REQUEST.pack(*backlog[pos])
            extras.append(extra)
            more_extra = extra[1] & XEN_NETIF_EXTRA_FLAG_MORE
            pos += 1
        requests = [first]
        more = first[2] & NETTXF_more_data
        while more:
            if pos >= len(backlog):
                self._check_incomplete(pos)
                return None
            request = backlog[pos]
            requests.append(request)
            more = request[2] & NETTXF_more_data
            pos += 1
        return _TxPacket(requests, extras, pos)

    def _check_incomplete(self, slots: int) -> None:
        """A packet still waiting for slots is fine, unless it already fills the ring (RingError)."""
        if slots >= self.tx.nr_ents:
            raise RingError(f"{self.label}: a tx packet fills all {slots} slots of the ring without its last fragment")

    def _over_credit(self, size: int) -> bool:
        assert self.credit is not None and self._timer is not None
        wait_us = self.credit.take(size, _now_us())
        if not wait_us:
            return False
        self._credit_wait = True
        self._timer.arm(wait_us / 1e6)
        return True

    def _credit_returned(self) -> None:
        self._credit_wait = False  # the worker's loop calls process() next

    def _transmit(self, packet: _TxPacket) -> int:
        """Check one packet and write it to the TAP; its status."""
        try:
            size = self._send(packet)
        except PacketError as exc:
            self.stats["tx_errors" if exc.malformed else "tx_dropped"] += 1
            self._warn(f"tx packet {packet.requests[0][3]} dropped: {exc}")
            return NETIF_RSP_ERROR
        finally:
            self.stats["maps"] = self.tx_grants.maps + self.rx_grants.maps
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += size
        return NETIF_RSP_OKAY

    def _send(self, packet: _TxPacket) -> int:
        requests = packet.requests
        if len(requests) > XEN_NETIF_NR_SLOTS_MIN:
            raise PacketError(f"{len(requests)} data slots, more than the {XEN_NETIF_NR_SLOTS_MIN} a packet may take")
        if len(packet.extras) >= XEN_NETIF_EXTRA_TYPE_MAX:
            raise PacketError(f"{len(packet.extras)} extra-info slots: each type at most once")
        gso = self._gso_extra(packet.extras)
        total = requests[0][4]
        if total < ETH_HLEN:
            raise PacketError(f"size {total} is shorter than an Ethernet header")
        rest = sum(r[4] for r in requests[1:])
        if rest > total:
            raise PacketError(f"the fragments after the first hold {rest} bytes, more than the packet's {total}")
        lengths = [total - rest, *(r[4] for r in requests[1:])]
        for (gref, offset, _flags, _id, _size), length in zip(requests, lengths):
            if offset + length > PAGE_SIZE:
                raise PacketError(f"{length} bytes at offset {offset} of grant {gref} run past its page")
        if gso is None and total > self.mtu + ETH_HLEN + VLAN_HLEN:
            raise PacketError(f"{total} bytes exceed the vif's MTU {self.mtu}", malformed=False)
        head, vectors = self._gather(requests, lengths)
        header = self._vnet_header(requests[0][2], gso, head)
        try:
            os.writev(self.tap, [header, head, *vectors])
        except OSError as exc:
            raise PacketError(f"the TAP refused it: {exc.strerror}", malformed=False) from None
        return total

    def _gso_extra(self, extras: list[bytes]) -> tuple[int, int] | None:
        """(XEN_NETIF_GSO_TYPE_*, gso size) from the packet's extra info, None without a GSO extra."""
        gso: tuple[int, int] | None = None
        for raw in extras:
            info = unpack_extra(raw)
            if info.type != XEN_NETIF_EXTRA_TYPE_GSO:
                raise PacketError(
                    f"extra info of type {info.type}: this back end takes only GSO ({XEN_NETIF_EXTRA_TYPE_GSO})"
                )
            if gso is not None:
                raise PacketError("a second GSO extra info")
            if info.gso_type not in _GSO_TO_VIRTIO:
                raise PacketError(f"GSO type {info.gso_type} is neither TCPv4 nor TCPv6")
            if info.gso_size == 0:
                raise PacketError("GSO size 0")
            gso = (info.gso_type, info.gso_size)
        return gso

    def _gather(
        self, requests: list[tuple[int, int, int, int, int]], lengths: list[int]
    ) -> tuple[bytes, list[memoryview]]:
        """Map the packet's grants; its first header bytes copied out, and the rest as views of the pages."""
        try:
            self.tx_grants.ensure_mapped([r[0] for r in requests], writable=False)
        except GrantRefused as exc:
            raise PacketError(str(exc)) from None
        view, slot_of = self.tx_grants.view, self.tx_grants.slot_of
        # Fragments in adjacent arena slots that run into each other are one vector.
        spans: list[list[int]] = []
        for (gref, offset, _flags, _id, _size), length in zip(requests, lengths):
            if length:
                start = slot_of[gref] * PAGE_SIZE + offset
                if spans and spans[-1][1] == start:
                    spans[-1][1] = start + length
                else:
                    spans.append([start, start + length])
        # dom0's own copy of the headers: what is parsed is what is sent.
        head = bytearray()
        vectors: list[memoryview] = []
        for start, end in spans:
            take = min(end - start, TX_COPY_LEN - len(head))
            if take > 0:
                head += view[start : start + take]
                start += take
            if start < end:
                vectors.append(view[start:end])
        return bytes(head), vectors

    @staticmethod
    def _vnet_header(flags: int, gso: tuple[int, int] | None, head: bytes) -> bytes:
        """The ``virtio_net_hdr`` for the TAP: NETTXF_* and GSO extra info as positions in the frame."""
        try:
            if gso is not None:
                if not flags & NETTXF_csum_blank:
                    raise PacketError("a GSO packet without csum_blank")
                gso_type, gso_size = gso
                headers = gso_header_length(head, 4 if gso_type == XEN_NETIF_GSO_TYPE_TCPV4 else 6)
                return VIRTIO_NET_HDR.pack(
                    VIRTIO_NET_HDR_F_NEEDS_CSUM,
                    _GSO_TO_VIRTIO[gso_type],
                    headers.header_len,
                    gso_size,
                    headers.l4_offset,
                    headers.csum_offset,
                )
            if flags & NETTXF_csum_blank:
                csum_start, csum_offset = checksum_setup(head)
                return VIRTIO_NET_HDR.pack(
                    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, csum_start, csum_offset
                )
        except HeaderError as exc:
            raise PacketError(f"its headers: {exc}", malformed=False) from None
        validated = VIRTIO_NET_HDR_F_DATA_VALID if flags & NETTXF_data_validated else 0
        return VIRTIO_NET_HDR.pack(validated, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)

    # -- rx: dom0 to guest (xenvif_rx_action) ---------------------------------------------

    def _rx_action(self) -> bool:
        data, count = self.rx.get_requests()
        if count:
            self._rx_posted += NETIF_RX_PROTOCOL.unpack_requests(data)
        responses = bytearray()
        traced: list[tuple[int, int, int, int]] | None = [] if trace.on(_IO) else None
        self._rx_traced = traced
        for _ in range(RX_BATCH):
            if not self._tap_ready or len(self._rx_posted) < self._rx_slots:
                break
            if not self._receive(responses):
                self._tap_ready = False  # drained: the loop says when there is more
                break
            # Asked of the TAP, not found by a read: a read needs the vector of the next
            # requests' pages, whose making (_map_rx_vector) waits for final_check, after the push.
            self._tap_ready = bool(self._tap_poll.poll(0))
        self._watch_tap(len(self._rx_posted) >= self._rx_slots)
        if not responses:
            return False
        self._served()
        self.rx.put_responses(responses)
        notify = self.rx.push_responses()
        if traced:
            for decoded, req_id, length, slots in traced:
                self._trace("net-rx", decoded, req_id, length, slots, NETIF_RSP_OKAY)
        return notify

    def _watch_tap(self, watch: bool) -> None:
        """Watch the TAP only while a largest frame fits in what the front end posted."""
        if watch and not self._tap_watched:
            self.loop.add_reader(self.tap, self._readable)
        elif not watch and self._tap_watched:
            self.loop.remove_reader(self.tap)
        self._tap_watched = watch

    def _readable(self, fd: int) -> None:
        """The TAP has a frame: the worker's loop calls process() after every poll."""
        self._tap_ready = True

    def _receive(self, responses: bytearray) -> bool:
        """Read one frame from the TAP into the posted pages and answer for it; False if there was none."""
        posted = self._rx_posted
        if self._rx_vector_key != (self.rx_grants.generation, self._rx_head):
            try:
                self._map_rx_vector()
            except GrantRefused as exc:
                self._refuse_posted(responses, exc)
                return True
        by_request = self._rx_by_request
        try:
            got = os.readv(self.tap, self._rx_vector)
        except BlockingIOError:
            return False
        decoded = time.monotonic_ns() if self._rx_traced is not None else 0
        length = got - VIRTIO_NET_HDR.size
        reason = self._rx_refusal(length, self._rx_data_pages * PAGE_SIZE)
        if reason is not None:
            self.stats["rx_dropped"] += 1
            log.debug("%s: rx frame of %d bytes dropped: %s", self.label, length, reason)
            return True
        vflags, vgso, _hdr_len, gso_size, _start, _offset = VIRTIO_NET_HDR.unpack(self._rx_hdr)
        nr_pieces = -(-length // PAGE_SIZE)
        gso = _VIRTIO_TO_GSO.get(vgso)
        slots = self._rx_data_slots[:nr_pieces] if gso else list(range(nr_pieces))
        if not gso and self._rx_gso:
            for piece in range(1, nr_pieces):  # not GSO after all: each piece moves down to its request's page
                by_request[piece][:] = by_request[piece + 1]
        flags = 0
        if vflags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            flags = NETRXF_csum_blank | NETRXF_data_validated
        elif vflags & VIRTIO_NET_HDR_F_DATA_VALID:
            flags = NETRXF_data_validated
        # One response per piece: the first with the frame's flags (and its GSO extra info after
        # it), whole pages with more_data, the last with what is left.
        pack, last = RX_RESPONSE.pack, nr_pieces - 1
        first_flags = flags | (NETRXF_extra_info if gso else 0) | (NETRXF_more_data if last else 0)
        responses += pack(posted[slots[0]][0], 0, first_flags, min(PAGE_SIZE, length))
        if gso:
            responses += pack_gso_extra(gso_size, gso)
        if last:
            responses += b"".join([pack(posted[slot][0], 0, NETRXF_more_data, PAGE_SIZE) for slot in slots[1:last]])
            responses += pack(posted[slots[last]][0], 0, 0, length - last * PAGE_SIZE)
        taken = max(slots[-1], 1 if gso else 0) + 1  # a GSO frame's extra info took request 1's slot
        if self._rx_traced is not None:
            self._rx_traced.append((decoded, posted[0][0], length, taken))
        del posted[:taken]
        self._rx_head += 1
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += length
        return True

    def _prepare_rx_vector(self) -> None:
        """Make the next frame's ``readv`` vector now, while no frame waits for it (a refusal waits for the read)."""
        key = (self.rx_grants.generation, self._rx_head)
        if len(self._rx_posted) < self._rx_slots or key in (self._rx_vector_key, self._rx_vector_refused):
            return
        try:
            self._map_rx_vector()
        except GrantRefused:
            self._rx_vector_refused = key  # not asked again: _receive refuses the requests when a frame comes

    def _map_rx_vector(self) -> None:
        """Map the pages of the first posted requests and make the ``readv`` vector a frame is read with.

        It holds while neither the posted requests' head nor the grant mappings change,
        so a look at an empty TAP costs one ``readv``. The key must include the mappings:
        tun answers a read into an emptied slot with the frame's length, its bytes lost.
        Raises GrantRefused.
        """
        posted = self._rx_posted
        grefs = [posted[i][1] for i in range(self._rx_slots)]  # request 1's too: a frame may not be GSO
        try:
            self.rx_grants.ensure_mapped(grefs, writable=True)
        finally:
            self.stats["maps"] = self.tx_grants.maps + self.rx_grants.maps
        slot_of, rx_pages = self.rx_grants.slot_of, self._rx_pages
        self._rx_by_request = [rx_pages[slot_of[g]] for g in grefs]
        pages = [self._rx_by_request[i] for i in self._rx_data_slots]
        self._rx_vector = [self._rx_hdr, *pages, self._rx_overflow]
        self._rx_vector_key = (self.rx_grants.generation, self._rx_head)

    def _rx_refusal(self, length: int, capacity: int) -> str | None:
        """Why the frame just read cannot go to this front end, or None."""
        vflags, vgso = self._rx_hdr[0], self._rx_hdr[1]
        if length < ETH_HLEN:
            return "shorter than an Ethernet header"
        if length > capacity:
            return f"more than the {capacity} bytes of the posted pages"
        if vgso != VIRTIO_NET_HDR_GSO_NONE:
            gso = _VIRTIO_TO_GSO.get(vgso)
            if gso is None or not self._rx_front_gso[gso] or not self.sg:
                return f"GSO type {vgso:#x}, which the front end did not ask for"
        elif length > self.mtu + ETH_HLEN + VLAN_HLEN:
            return f"larger than the vif's MTU {self.mtu}"
        if vflags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not self.csum:
            return "a partial checksum, and the front end takes only complete ones"
        return None

    def _refuse_posted(self, responses: bytearray, exc: GrantRefused) -> None:
        """A posted page cannot be mapped: every request up to it is answered with an error (dropped, empty)."""
        bad = next(i for i, (_id, gref) in enumerate(self._rx_posted) if gref == exc.gref)
        for req_id, _gref in self._rx_posted[: bad + 1]:
            responses += RX_RESPONSE.pack(req_id, 0, 0, NETIF_RSP_ERROR)
        del self._rx_posted[: bad + 1]
        self._rx_head += 1
        self.stats["rx_errors"] += 1
        self._warn(f"rx request refused: {exc}")

    # -- the rest -----------------------------------------------------------------------

    def _trace(self, op: str, decoded: int, req_id: int, length: int, slots: int, status: int) -> None:
        """One IO record: a packet from decoded (off the ring, or out of the TAP) to answered, its latency ``dur``."""
        fields = {"op": op, "vif": self.label, "id": req_id, "bytes": length, "slots": slots, "status": status}
        fields["dur"] = time.monotonic_ns() - decoded
        trace.emit_at(Event.IO_REQUEST, decoded, fields, domid=self.frontend)

    def _warn(self, message: str) -> None:
        """A front end's mistake, logged without letting it flood dom0's log."""
        self._warnings += 1
        if self._warnings <= 20 or self._warnings % 1000 == 0:
            log.warning("%s: %s (%d so far)", self.label, message, self._warnings)

    def close(self) -> None:
        """Unmap every grant (both rings included): after this the front end may revoke them."""
        self._watch_tap(False)
        if self._timer is not None:
            self._timer.close()
        for page in self._rx_pages:
            page.release()
        self.tx_grants.close()
        self.rx_grants.close()
        self.tx.release()
        self.rx.release()
        for mapping in self._mappings:
            mapping.close()
        self.hypercall.call("grant_unmap", handles=self._handles)
        os.close(self.tap)


def _tx_responses(packet: _TxPacket, status: int) -> bytes:
    """One response per slot, in slot order: the requests' with ``status``, NETIF_RSP_NULL for the extras."""
    pack = NETIF_TX_PROTOCOL.response_slot.pack
    out = [pack(packet.requests[0][3], status)]
    out += [pack(0, NETIF_RSP_NULL)] * len(packet.extras)
    out += [pack(request[3], status) for request in packet.requests[1:]]
    return b"".join(out)


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def netif_data_path(ctx: WorkerContext) -> NetifQueue:
    """Build a vif's data path in its worker (what ``xenvif_connect_data`` does)."""
    params = ctx.params
    rate = params.get("rate")
    queue = NetifQueue(
        ctx.label,
        ctx.frontend_id,
        ctx.hypercall,
        ctx.memory_fd,
        ctx.loop,
        ctx.fds["tap"],
        int(params["tx_ring_ref"]),
        int(params["rx_ring_ref"]),
        sg=bool(params.get("sg")),
        gso_tcpv4=bool(params.get("gso_tcpv4")),
        gso_tcpv6=bool(params.get("gso_tcpv6")),
        csum=bool(params.get("csum", True)),
        rate=(int(rate[0]), int(rate[1])) if rate else None,
        mtu=int(params.get("mtu", 1500)),
    )
    log.info("%s: connected (mtu %d%s)", ctx.label, queue.mtu, f", rate {rate[0]} B per {rate[1]} us" if rate else "")
    return queue
