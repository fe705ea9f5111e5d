"""The guest's network front end, its data path (Linux ``drivers/net/xen-netfront.c``).

A :class:`NetfrontQueue` moves frames between the guest's ``eth<devid>`` (a TAP
device in the guest's own network namespace, 10-byte ``virtio_net_hdr`` first)
and the vif's two rings (``xenlike.public.netif``):

- **tx** (``xennet_start_xmit``): a frame the guest's stack sends is read from
  the TAP with one ``readv`` straight into free pages of a pool granted to the
  back end once, read-only (persistent grants: netback maps each page once),
  and goes on the tx ring as one packet of several slots: the first request
  carries the whole size and the checksum flags (``NEEDS_CSUM`` becomes
  ``NETTXF_csum_blank | NETTXF_data_validated``), a GSO frame's extra info
  follows it, then one request per further page. A page is free again when its
  response comes back. The TAP is read only while a largest frame fits in the
  free pages and slots.
- **rx** (``xennet_alloc_rx_buffers``, ``xennet_poll``): the rx ring is kept
  full of requests for the pages of a second pool, granted writable once; the
  back end copies frames into them. The request in ring slot ``i`` always names
  page ``i mod pool size`` and a response lands in its request's slot, so a page
  is posted again as soon as the frame it held has been written to the TAP. A
  response's ``csum_blank`` becomes ``NEEDS_CSUM`` (the positions found by
  :mod:`xenlike.kernel.skb`), GSO extra info a GSO header, and the frame goes
  to the TAP with one ``writev`` of the header and the page pieces.

The TAP's offloads (``TUNSETOFFLOAD``) are what the back end takes: partial
checksums with ``feature-ipv6-csum-offload`` (netback finishes them, IPv4 and
IPv6 alike), TCP segmentation with ``feature-sg`` and ``feature-gso-tcpv4``/``-tcpv6``,
so the guest's TCP hands over 64 KiB segments that cross as one packet.

Everything runs on the guest kernel's event-loop thread (the TAP's reader and
the event channel's handler); :meth:`NetfrontQueue.start` and
:meth:`NetfrontQueue.stop` come from the xenbus handshake thread and take the
same lock. The back end is not trusted either: every response is checked, and
one that cannot be right drops its frame and is counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenlike.kernel import trace
from xenlike.kernel.netdev import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    VIRTIO_NET_HDR,
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    set_offload,
)
from xenlike.kernel.skb import MAX_HEADER_LEN, HeaderError, checksum_setup, gso_header_length
from xenlike.public.netif import (
    ETH_HLEN,
    EXTRA_INFO,
    MAX_GSO_FRAME,
    MAX_GSO_RX_SLOTS,
    NET_RX_RING_SIZE,
    NET_TX_RING_SIZE,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETIF_RX_PROTOCOL,
    NETIF_TX_PROTOCOL,
    RX_RESPONSE,
    VLAN_HLEN,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    pack_gso_extra,
)
from xenlike.public.ring import FrontRing, RingError
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import PAGE_SIZE

if TYPE_CHECKING:
    from ..guest_kernel import GuestKernel
    from ..xenbus_frontend import SharedRing

__all__ = ["BackendFeatures", "NetfrontQueue", "MIN_POOL_PAGES"]

log = logging.getLogger("domu.netfront")

MIN_POOL_PAGES = 32  # a pool holds at least one largest frame (17 pages) and its slots
TX_BATCH = 64  # frames read from the TAP before the requests are pushed
RX_REFILL_BATCH = 32  # rx pages posted again together

_VIRTIO_TO_GSO = {
    VIRTIO_NET_HDR_GSO_TCPV4: XEN_NETIF_GSO_TYPE_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6: XEN_NETIF_GSO_TYPE_TCPV6,
}
_GSO_TO_VIRTIO = {v: k for k, v in _VIRTIO_TO_GSO.items()}
_TX_REQUEST_SLOT = NETIF_TX_PROTOCOL.request_slot
_EXTRA_PAD = bytes(NETIF_TX_PROTOCOL.entry_size - EXTRA_INFO.size)
_IO = TraceClass.IO.value
_rx_response = RX_RESPONSE.unpack_from  # (id, offset, flags, status) of a private copy of a slot


@dataclass(frozen=True)
class BackendFeatures:
    """What the back end published at probe (netif.h's back-end ``feature-*`` keys)."""

    sg: bool = False
    gso_tcpv4: bool = False
    gso_tcpv6: bool = False
    ipv6_csum: bool = False  # feature-ipv6-csum-offload: csum_blank is finished for IPv4 and IPv6

    def tap_offload(self) -> int:
        """The ``TUN_F_*`` the guest's stack may use on the TAP: what the back end finishes for it."""
        if not self.ipv6_csum:
            return 0  # the stack computes every checksum (TSO needs partial checksums)
        flags = TUN_F_CSUM
        if self.sg and self.gso_tcpv4:
            flags |= TUN_F_TSO4
        if self.sg and self.gso_tcpv6:
            flags |= TUN_F_TSO6
        return flags


class _Pool:
    """Pages of the guest granted to the back end once, kept for the life of the vif."""

    def __init__(self, kernel: GuestKernel, backend_id: int, nr_pages: int, readonly: bool, owner: str) -> None:
        self.kernel = kernel
        self.nr_pages = nr_pages
        self.first_pfn = kernel.pages.alloc(nr_pages, owner=owner)  # the device's: a save does not carry them
        self.view = kernel.memory.frames(self.first_pfn, nr_pages)
        self.grefs = [
            kernel.grant_table.grant_access(backend_id, self.first_pfn + i, readonly) for i in range(nr_pages)
        ]
        self.pages = [self.view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(nr_pages)]

    def close(self) -> bool:
        """End access to every page; the frames go back only if the back end let go of all of them."""
        ended = True
        for gref in self.grefs:
            try:
                self.kernel.grant_table.end_access(gref)
            except Exception as exc:  # GrantError: the back end still maps it
                log.warning("grant %d: %s; its page stays out of use", gref, exc)
                ended = False
        for page in self.pages:
            page.release()
        self.view.release()
        if ended:
            self.kernel.pages.free(self.first_pfn)
        return ended


def _pool_pages(free_frames: int, ring_size: int) -> int:
    """A ring's worth of pages, fewer (a power of two) in a small guest: at most an eighth of its free memory."""
    pages = ring_size
    while pages > MIN_POOL_PAGES and pages * 8 > free_frames:
        pages //= 2
    return pages


class NetfrontQueue:
    """One vif's rings, pools and TAP in the guest (Linux's ``struct netfront_queue``)."""

    def __init__(
        self,
        kernel: GuestKernel,
        backend_id: int,
        tap: int,
        tx_ring: SharedRing,
        rx_ring: SharedRing,
        port: int,
        features: BackendFeatures,
        *,
        name: str = "eth0",
        mtu: int = 1500,
        owner: str = "",
    ) -> None:
        self.kernel = kernel
        self.backend_id = backend_id
        self.tap = tap
        self.port = port
        self.features = features
        self.name = name
        self.mtu = mtu
        self.running = False
        self.suspended = False  # quiesced for a suspend: the TAP is not read
        self.closed = False  # close() let go of the rings and the TAP (a detach, from the handshake thread)
        self._ended = True  # what close() found: every pool page's access ended
        self.stats = {
            "tx_packets": 0,
            "tx_bytes": 0,
            "tx_dropped": 0,
            "tx_errors": 0,
            "rx_packets": 0,
            "rx_bytes": 0,
            "rx_dropped": 0,
            "rx_errors": 0,
        }
        self._lock = threading.Lock()
        self.tx = FrontRing(tx_ring.view, NETIF_TX_PROTOCOL)
        self.rx = FrontRing(rx_ring.view, NETIF_RX_PROTOCOL)
        offload = features.tap_offload()
        set_offload(tap, offload)
        os.set_blocking(tap, False)
        tso = offload & (TUN_F_TSO4 | TUN_F_TSO6)
        self._tx_frame_pages = -(-(MAX_GSO_FRAME if tso else mtu + ETH_HLEN + VLAN_HLEN) // PAGE_SIZE)
        free = kernel.pages.free_frames
        self._txp = _Pool(kernel, backend_id, _pool_pages(free, NET_TX_RING_SIZE), readonly=True, owner=owner)
        try:
            self._rxp = _Pool(kernel, backend_id, _pool_pages(free, NET_RX_RING_SIZE), readonly=False, owner=owner)
        except BaseException:
            self._txp.close()
            raise
        self._tx_free = list(reversed(range(self._txp.nr_pages)))  # page indices, which are also request ids
        self._tx_busy: set[int] = set()  # ids (pages) on the ring
        self._tx_first: set[int] = set()  # ids that start a packet (their response is the packet's)
        self._tx_traced: dict[int, tuple[int, int, int]] = {}  # while IO is traced: id -> (read, bytes, slots)
        self._tx_hdr = bytearray(VIRTIO_NET_HDR.size)
        self._tx_overflow = bytearray(64)
        self._tap_watched = False
        self._rx_mask = self._rxp.nr_pages - 1
        # Ring slot i always asks for page i mod the pool's size: every request there will ever be,
        # laid out twice over so that a run of them that wraps is one slice.
        self._rx_request_size = NETIF_RX_PROTOCOL.entry_size
        requests = NETIF_RX_PROTOCOL.pack_requests(enumerate(self._rxp.grefs))
        self._rx_requests = memoryview(requests + requests)
        self._rx_slots: list[bytes] = []  # responses of a packet whose last slot has not come yet
        self._rx_extra = 0  # the packet's next slot is extra info (the last one had a MORE flag)
        self._rx_more = 0  # data slots of the packet are still to come (more_data)
        self._rx_done = 0  # ring index after the last slot whose page may be posted again
        # Pages are posted again in runs of this many (fewer than all, so a largest frame always has
        # pages posted): a small frame then costs no post, push or notify of its own.
        self._rx_refill = max(1, min(RX_REFILL_BATCH, self._rxp.nr_pages - MAX_GSO_RX_SLOTS))
        self._fill_rx()

    # -- the handshake's side ------------------------------------------------------------

    def start(self) -> None:
        """The back end is Connected: read the TAP, take responses (from the handshake thread)."""
        with self._lock:
            self.running = True
            self._watch_tap(True)
        self.kernel.loop.notify(self.port)  # whatever was posted meanwhile

    def stop(self) -> None:
        """Stop I/O: the TAP is no longer read and responses are no longer taken."""
        with self._lock:
            self.running = False
            self._watch_tap(False)

    def quiesce(self, timeout: float) -> None:
        """For a suspend: read no more frames from the TAP, and wait until the back end answered every tx request.

        TimeoutError (and the TAP is read again) if it has not within ``timeout``
        seconds. Frames that reach the guest meanwhile are still delivered. A
        queue closed meanwhile (the vif was detached) has nothing left in flight.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.closed:
                return
            self.suspended = True
            self._watch_tap(False)
        while True:
            with self._lock:
                if self.closed:
                    return
                self._take_tx_responses()
                if not self._tx_busy:
                    return
            if time.monotonic() > deadline:
                self.unquiesce()
                raise TimeoutError(f"{self.name}: tx requests still in flight after {timeout:g}s")
            time.sleep(0.002)  # the back end is not asked to notify for tx responses (see _tx_completions)

    def unquiesce(self) -> None:
        """After a suspend that did not happen (or a ``save -c``): the TAP is read again."""
        with self._lock:
            self.suspended = False
            if self.closed:
                return
            if self.running:
                self._watch_tap(self._tx_room())
        self.kernel.loop.notify(self.port)

    def close(self) -> bool:
        """End access to the pools (after :meth:`stop`, once the back end is Closed) and close the TAP.

        Returns False when the back end still maps a page (it then stays out of use).
        Safe against a :meth:`quiesce` in the suspend thread: it sees ``closed``
        under the lock and stops looking at the rings.
        """
        with self._lock:
            if self.closed:
                return self._ended
            self.running = False
            self._watch_tap(False)
            self.closed = True
            self.tx.release()
            self.rx.release()
            ended = self._txp.close()
            self._ended = self._rxp.close() and ended
            os.close(self.tap)
        return self._ended

    # -- the event loop -------------------------------------------------------------------

    def on_event(self, port: int) -> None:
        """The back end kicked: take tx and rx responses (``xennet_tx_buf_gc``, ``xennet_poll``)."""
        with self._lock:
            if not self.running:
                return
            try:
                self._rx_frames()  # first: a frame waiting for the guest is the latency that counts
                self._tx_completions()
            except RingError as exc:
                self.stats["rx_errors"] += 1
                self._halt(f"the back end broke the ring protocol: {exc}")

    def _halt(self, why: str) -> None:
        """Stop this interface's I/O for good (``_lock`` held): the rest of the guest carries on."""
        log.error("%s: %s; the interface stops", self.name, why)
        self.running = False
        self._watch_tap(False)

    def _watch_tap(self, watch: bool) -> None:
        if watch and not self._tap_watched:
            self.kernel.loop.add_reader(self.tap, self._on_tap)
        elif not watch and self._tap_watched:
            self.kernel.loop.remove_reader(self.tap)
        self._tap_watched = watch

    # -- tx: guest to back end --------------------------------------------------------------

    def _tx_room(self) -> bool:
        pages = self._tx_frame_pages
        return len(self._tx_free) >= pages and self.tx.free_requests() >= pages + 1

    def _on_tap(self, fd: int) -> None:
        with self._lock:
            if not self.running:
                return
            try:
                # Each frame is pushed as it is put on the ring (xennet_start_xmit): the back
                # end starts on it while the TAP is read again, and a lone frame does not
                # wait for the read that finds the TAP empty, nor for the answered pages'
                # return (xennet_tx_buf_gc), which comes after the push unless pages ran out.
                for _ in range(TX_BATCH):
                    if not self._tx_room():
                        self._take_tx_responses()
                        if not self._tx_room():
                            break
                    if not self._send_one():
                        break
                    if self.tx.push_requests():
                        self.kernel.loop.notify(self.port)
            except OSError as exc:  # the device was deleted under us (the vif was unplugged)
                self._halt(f"reading {self.name}: {exc.strerror or exc}")
                return
            self._tx_completions()
            if not self._tx_room():
                self._watch_tap(False)
                self._tx_completions()  # asks the back end to kick when pages come back

    def _send_one(self) -> bool:
        """Read one frame from the TAP onto the tx ring; False if there was none."""
        ids = self._tx_free[-self._tx_frame_pages :][::-1]
        pages = self._txp.pages
        try:
            got = os.readv(self.tap, [self._tx_hdr, *[pages[i] for i in ids], self._tx_overflow])
        except BlockingIOError:
            return False
        read = time.monotonic_ns() if trace.mask[0] & _IO else 0
        length = got - VIRTIO_NET_HDR.size
        vflags, vgso, _hdr_len, gso_size, _start, _offset = VIRTIO_NET_HDR.unpack(self._tx_hdr)
        gso = _VIRTIO_TO_GSO.get(vgso)
        if length < ETH_HLEN or length > len(ids) * PAGE_SIZE or (vgso != VIRTIO_NET_HDR_GSO_NONE and gso is None):
            self.stats["tx_dropped"] += 1
            return True
        nr_pieces = -(-length // PAGE_SIZE)
        used = ids[:nr_pieces]
        del self._tx_free[-nr_pieces:]
        self._tx_busy.update(used)
        flags = 0
        if vflags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            flags = NETTXF_csum_blank | NETTXF_data_validated
        elif vflags & VIRTIO_NET_HDR_F_DATA_VALID:
            flags = NETTXF_data_validated
        # The first request carries the whole size and the flags (its GSO extra info follows it),
        # then one per further page: whole pages with more_data, the last with what is left.
        grefs, pack, last = self._txp.grefs, _TX_REQUEST_SLOT.pack, nr_pieces - 1
        first_flags = flags | (NETTXF_more_data if last else 0) | (NETTXF_extra_info if gso else 0)
        slots = [pack(grefs[used[0]], 0, first_flags, used[0], length)]
        if gso:
            slots.append(pack_gso_extra(gso_size, gso) + _EXTRA_PAD)
        if last:
            slots += [pack(grefs[i], 0, NETTXF_more_data, i, PAGE_SIZE) for i in used[1:last]]
            slots.append(pack(grefs[used[last]], 0, 0, used[last], length - last * PAGE_SIZE))
        self.tx.put_requests(b"".join(slots))
        self._tx_first.add(used[0])
        if read:
            self._tx_traced[used[0]] = (read, length, len(slots))
        self.stats["tx_packets"] += 1
        self.stats["tx_bytes"] += length
        return True

    def _take_tx_responses(self) -> int:
        """Take the tx responses there are: their pages go back to the pool. How many slots were taken."""
        data, count = self.tx.get_responses()
        busy, free, first = self._tx_busy, self._tx_free, self._tx_first
        for req_id, status in NETIF_TX_PROTOCOL.unpack_responses(data):
            if status == NETIF_RSP_NULL or req_id not in busy:
                continue  # an extra-info slot's, or an id not in flight (the back end's mistake)
            busy.discard(req_id)
            free.append(req_id)
            if req_id in first:
                first.discard(req_id)
                if status != NETIF_RSP_OKAY:
                    self.stats["tx_errors"] += 1
                if self._tx_traced:
                    self._trace_tx(req_id, status)
        return count

    def _trace_tx(self, req_id: int, status: int) -> None:
        """A tx packet's IO record: from its frame read off the TAP to its response taken."""
        started = self._tx_traced.pop(req_id, None)
        if started is not None and trace.mask[0] & _IO:
            read, length, slots = started
            fields = {"op": "net-tx", "dev": self.name, "id": req_id, "bytes": length, "slots": slots}
            fields.update(status=status, dur=time.monotonic_ns() - read)
            trace.emit_at(Event.IO_REQUEST, read, fields)

    def _tx_completions(self) -> None:
        """Give back the pages of answered requests (``xennet_tx_buf_gc``).

        They are taken whenever the loop runs for the TAP or the event channel; the
        back end is asked to notify (``rsp_event`` re-armed) only while the TAP
        waits for pages or slots, so a packet sent costs no notification back.
        """
        while True:
            if self._take_tx_responses():
                continue
            if self._tap_watched or not self.running or self.suspended:
                return
            if self._tx_room():
                self._watch_tap(True)
                return
            if not self.tx.final_check_for_responses():
                return  # re-armed: the back end kicks with the next response

    # -- rx: back end to guest -------------------------------------------------------------

    def _fill_rx(self) -> None:
        """Post a request for every page not holding a frame (``xennet_alloc_rx_buffers``), once enough are."""
        ring, mask = self.rx, self._rx_mask
        count = self._rxp.nr_pages - ((ring.req_prod_pvt - self._rx_done) & 0xFFFFFFFF)
        if count < self._rx_refill:
            return
        start = (ring.req_prod_pvt & mask) * self._rx_request_size
        ring.put_requests(self._rx_requests[start : start + count * self._rx_request_size])
        if ring.push_requests():
            self.kernel.loop.notify(self.port)

    def _rx_frames(self) -> None:
        """Write every complete frame the back end answered to the TAP, then post the pages again."""
        while True:
            data, count = self.rx.get_responses()
            slot = NETIF_RX_PROTOCOL.entry_size
            traced = trace.on(_IO)
            for k in range(count):
                if self._rx_slot(data[k * slot : (k + 1) * slot]):
                    taken = time.monotonic_ns() if traced else 0
                    length = self._rx_packet(self._rx_slots)
                    if traced:
                        self._trace_rx(taken, length)
                    self._rx_done = (self._rx_done + len(self._rx_slots)) & 0xFFFFFFFF
                    self._rx_slots = []
            if len(self._rx_slots) >= self._rxp.nr_pages:  # every page in one packet that never ends
                self.stats["rx_errors"] += 1
                self._rx_done = (self._rx_done + len(self._rx_slots)) & 0xFFFFFFFF
                self._rx_slots = []
            self._fill_rx()
            if not count and not self.rx.final_check_for_responses():
                break

    def _trace_rx(self, taken: int, length: int) -> None:
        """An rx packet's IO record: from its last response taken to its frame on the TAP (0 bytes: dropped)."""
        first = _rx_response(self._rx_slots[0])
        fields = {"op": "net-rx", "dev": self.name, "id": first[0], "bytes": length, "slots": len(self._rx_slots)}
        fields["dur"] = time.monotonic_ns() - taken
        trace.emit_at(Event.IO_REQUEST, taken, fields)

    def _rx_slot(self, raw: bytes) -> bool:
        """Add one response to the packet being gathered; True if it ends the packet.

        A packet ends with a slot that has no more_data once its extra-info slots
        (while each has XEN_NETIF_EXTRA_FLAG_MORE) are in; each slot is looked at once.
        """
        slots = self._rx_slots
        if not slots:
            flags = _rx_response(raw)[2]
            self._rx_extra, self._rx_more = flags & NETRXF_extra_info, flags & NETRXF_more_data
        elif self._rx_extra:
            self._rx_extra = raw[1] & XEN_NETIF_EXTRA_FLAG_MORE
        else:
            self._rx_more = _rx_response(raw)[2] & NETRXF_more_data
        slots.append(raw)
        return not (self._rx_extra or self._rx_more)

    def _rx_packet(self, slots: list[bytes]) -> int:
        """One packet's responses, from ring index ``_rx_done``: its frame goes to the TAP; its length (0: dropped)."""
        first_index = self._rx_done
        _id, _offset, flags, _status = _rx_response(slots[0])
        gso: tuple[int, int] | None = None
        pieces: list[memoryview] = []
        pos, length = 1, 0
        try:
            if flags & NETRXF_extra_info:
                while True:
                    info = EXTRA_INFO.unpack_from(slots[pos])
                    pos += 1
                    if info[0] == XEN_NETIF_EXTRA_TYPE_GSO:
                        gso = self._check_gso(info[2], info[3])
                    if not info[1] & XEN_NETIF_EXTRA_FLAG_MORE:
                        break
            for index, raw in enumerate(slots):
                if 0 < index < pos:
                    continue  # an extra-info slot: its page held nothing
                _rid, offset, _rflags, status = _rx_response(raw)
                if status < 0 or offset + status > PAGE_SIZE:
                    raise ValueError(f"response status {status} at offset {offset}")
                page = self._rxp.pages[(first_index + index) & self._rx_mask]
                pieces.append(page[offset : offset + status])
                length += status
            if length < ETH_HLEN:
                raise ValueError(f"a frame of {length} bytes")
            header = self._rx_vnet_header(flags, gso, pieces)
        except (ValueError, HeaderError) as exc:
            self.stats["rx_errors"] += 1
            log.debug("%s: rx frame dropped: %s", self.name, exc)
            return 0
        try:
            os.writev(self.tap, [header, *pieces])
        except OSError as exc:
            self.stats["rx_dropped"] += 1
            log.debug("%s: the TAP refused an rx frame: %s", self.name, exc)
            return 0
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += length
        return length

    @staticmethod
    def _check_gso(size: int, gso_type: int) -> tuple[int, int]:
        if gso_type not in _GSO_TO_VIRTIO or size == 0:
            raise ValueError(f"GSO extra info of type {gso_type}, size {size}")
        return gso_type, size

    @staticmethod
    def _rx_vnet_header(flags: int, gso: tuple[int, int] | None, pieces: list[memoryview]) -> bytes:
        """The ``virtio_net_hdr`` of an rx frame: NETRXF_* and GSO extra info as positions in the frame."""
        if gso is None and not flags & NETRXF_csum_blank:
            valid = VIRTIO_NET_HDR_F_DATA_VALID if flags & NETRXF_data_validated else 0
            return VIRTIO_NET_HDR.pack(valid, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)
        head = bytearray()
        for piece in pieces:
            head += piece[: MAX_HEADER_LEN - len(head)]
            if len(head) >= MAX_HEADER_LEN:
                break
        if gso is None:
            start, offset = checksum_setup(head)
            return VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, 0, 0, start, offset)
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
