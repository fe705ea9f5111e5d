"""netback against a hostile front end: arbitrary tx packets through a real ring, onto a real TAP.

The back end's data path (``dom0.netback.netback.NetifQueue``) is driven in-process
by hand: the front end's memory, grant table and rings are real, grant maps go
through the hypervisor's own ``GrantMapper`` checks, and what netback accepts is
written to a real TAP in a namespace of the test's own. Every packet must be
answered slot by slot: its requests OKAY only when the packet is valid by
netif.h's rules, all NETIF_RSP_ERROR otherwise, and NETIF_RSP_NULL for every
extra-info slot; netback must go on serving, that vif and every other.
"""

from __future__ import annotations

import select
import time
import socket
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dom0.netback.netback import NetifQueue
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.kernel.events import EventLoop
from xenlike.kernel.skb import HeaderError, parse_headers
from xenlike.public.netif import (
    NETIF_RSP_ERROR,
    NETIF_RSP_NULL,
    NETIF_RSP_OKAY,
    NETIF_RX_PROTOCOL,
    NETIF_TX_PROTOCOL,
    NETTXF_csum_blank,
    NETTXF_data_validated,
    NETTXF_extra_info,
    NETTXF_more_data,
    TX_REQUEST,
    XEN_NETIF_EXTRA_FLAG_MORE,
    XEN_NETIF_EXTRA_TYPE_GSO,
    EXTRA_INFO,
)
from xenlike.public.ring import RING_IDX_MASK, FrontRing, RingError
from xenlike.public.xen import PAGE_SIZE

from .netif_support import FrontKernel, HypervisorGrants, Namespace, require_tap

MTU = 1500
PORT = 5002
DATA_PAGES = 24


def udp_frame(dst: str, payload: bytes) -> bytes:
    """A broadcast Ethernet frame carrying a UDP datagram to ``dst``:PORT, with a correct IPv4 header checksum."""
    udp = struct.pack("!HHHH", 4000, PORT, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                               socket.inet_aton("10.99.0.9"), socket.inet_aton(dst)))
    words = struct.unpack("!10H", ip)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return b"\xff" * 6 + bytes.fromhex("00163e000005") + b"\x08\x00" + bytes(ip) + udp


class Front:
    """A front end played by hand: its rings, and pages granted read-only to dom0 holding a UDP frame."""

    def __init__(self, domid: int, ns: Namespace, tap_name: str, address: str) -> None:
        self.kernel = FrontKernel(domid, nr_frames=256)
        grants = self.kernel.grant_table
        self.tx_shared, rx_shared = self.kernel.shared_ring(), self.kernel.shared_ring()
        self.tx = FrontRing(self.tx_shared.view, NETIF_TX_PROTOCOL)
        self.rx = FrontRing(rx_shared.view, NETIF_RX_PROTOCOL)  # no rx requests: netback never reads the TAP
        self.dst = address.split("/")[0]
        self.template = udp_frame(self.dst, bytes(range(256)) * 16)
        self.first_data = self.kernel.pages.alloc(DATA_PAGES)
        self.pages: dict[int, bytes] = {}
        for i in range(DATA_PAGES - 1):
            content = self.template[:PAGE_SIZE] if i % 2 == 0 else bytes([i]) * PAGE_SIZE
            self.kernel.write(self.first_data + i, content)
            self.pages[grants.grant_access(0, self.first_data + i, readonly=True)] = content
        self.good = list(self.pages)
        self.valid_pfn = self.first_data + DATA_PAGES - 1  # what send_valid writes into, not in the pool
        self.valid_gref = grants.grant_access(0, self.valid_pfn, readonly=True)
        self.foreign = grants.grant_access(7, self.first_data)  # granted, but to another domain
        revoked = grants.grant_access(0, self.first_data)
        grants.end_access(revoked)  # (nothing is granted after it: the ref stays free)
        self.bad = [self.foreign, revoked, 1000, 5000, 0xFFFFFFFF]
        self.tap = ns.tap(tap_name, address, MTU)
        self.loop = EventLoop(f"test netback d{domid}")
        self.mapper = GrantMapper({domid: grants}.__getitem__)
        self.back = NetifQueue(
            f"d{domid} {tap_name}", domid, HypervisorGrants(self.mapper), self.kernel.memory.fd, self.loop,
            self.tap, self.tx_shared.grefs[0], rx_shared.grefs[0], mtu=MTU,
        )
        self.next_id = 0

    def ids(self, count: int) -> list[int]:
        ids = [(self.next_id + k) & 0xFFFF for k in range(count)]
        self.next_id += count
        return ids

    def submit(self, slots: list[bytes]) -> list[tuple[int, int]]:
        """Put the slots on the ring, let netback serve them, return every response (id, status)."""
        self.tx.put_requests(b"".join(slots))
        self.tx.push_requests()
        self.back.process()
        data, count = self.tx.get_responses()
        assert count == len(slots), f"{len(slots)} slots got {count} responses"
        return list(NETIF_TX_PROTOCOL.unpack_responses(data))

    def send_valid(self, payload: bytes) -> list[tuple[int, int]]:
        """One well-formed single-slot packet carrying a datagram to this vif's address."""
        frame = udp_frame(self.dst, payload)
        self.kernel.write(self.valid_pfn, frame)
        (req_id,) = self.ids(1)
        return self.submit([TX_REQUEST.pack(self.valid_gref, 0, NETTXF_data_validated, req_id, len(frame))])

    def close(self) -> None:
        try:
            self.back.close()
        finally:
            self.tx.release()
            self.rx.release()
            self.loop.close()
            self.kernel.close()


@pytest.fixture
def rig():
    require_tap()
    ns = Namespace()
    fronts: list[Front] = []
    try:
        fronts.append(Front(5, ns, "vif5.0", "10.99.0.1/24"))
        fronts.append(Front(6, ns, "vif6.0", "10.99.1.1/24"))
        sink = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("0.0.0.0", PORT))
        yield fronts[0], fronts[1], sink
        sink.close()
    finally:
        for front in fronts:
            front.close()
        ns.close()


def received(sink: socket.socket, timeout: float = 5.0) -> bytes:
    ready, _, _ = select.select([sink], [], [], timeout)
    assert ready, "the datagram did not arrive"
    return sink.recv(65536)


# -- the hostile packets ------------------------------------------------------------------------------

grant_kinds = st.sampled_from(["good"] * 8 + ["bad"])
offsets = st.one_of(st.just(0), st.just(0), st.integers(0, 64), st.integers(PAGE_SIZE - 64, PAGE_SIZE + 8))
sizes = st.one_of(st.integers(0, 1600), st.integers(PAGE_SIZE - 64, PAGE_SIZE + 8), st.integers(0, 0xFFFF))
fragments = st.lists(st.tuples(grant_kinds, st.integers(0, 30), offsets, sizes), min_size=1, max_size=21)
extras = st.lists(
    st.tuples(st.sampled_from([XEN_NETIF_EXTRA_TYPE_GSO] * 4 + [0, 2, 3, 4, 5, 200]), st.integers(0, 3),
              st.one_of(st.just(0), st.integers(1, 0xFFFF))),
    max_size=3,
)
packets = st.tuples(fragments, extras, st.booleans(), st.booleans(), st.one_of(st.none(), st.integers(0, 0xFFFF)))


def expected_ok(front: Front, frags, extra_list, csum_blank: bool, total: int, grefs: list[int]) -> bool:
    """The model: netif.h's rules (and netback's own: one GSO extra only, within the MTU)."""
    if len(frags) > 18:  # data slots; the extras (at most 3 here) are not counted
        return False
    gso = False
    for kind, gso_type, gso_size in extra_list:
        if kind != XEN_NETIF_EXTRA_TYPE_GSO or gso or gso_type not in (1, 2) or gso_size == 0:
            return False
        gso = True
    rest = sum(size for _k, _g, _o, size in frags[1:])
    if total < 14 or rest > total:
        return False
    lengths = [total - rest] + [size for _k, _g, _o, size in frags[1:]]
    if any(offset + length > PAGE_SIZE for (_k, _g, offset, _s), length in zip(frags, lengths)):
        return False
    if not gso and total > MTU + 18:
        return False
    if any(g not in front.pages for g in grefs):
        return False
    frame = b"".join(front.pages[g][o : o + n] for g, (_k, _i, o, _s), n in zip(grefs, frags, lengths))
    if gso:
        return False  # the frames here are UDP: GSO of them is refused (and without csum_blank too)
    if csum_blank:
        try:
            parse_headers(frame[:138])
        except HeaderError:
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packet=packets)
@example(packet=([("good", 0, 0, 42)], [], True, False, None))  # the smallest valid csum_blank packet
@example(packet=([("bad", 0, 0, 42)], [], False, False, None))  # a bad grant
@example(packet=([("good", 0, 0, 100)] * 19, [], False, False, None))  # 19 data slots
@example(packet=([("good", 0, 0, 80)] * 18, [], False, False, None))  # 18: the most a back end must take
@example(packet=([("good", 0, 0, 100), ("good", 2, 0, 200)], [], False, False, 150))  # fragments beyond the size
@example(packet=([("good", 0, 4000, 200)], [], False, False, None))  # across the page's end
@example(packet=([("good", 0, 0, 200)], [(XEN_NETIF_EXTRA_TYPE_GSO, 1, 0)], True, False, None))  # GSO size 0
@example(packet=([("good", 0, 0, 200)], [(200, 1, 1448)], False, False, None))  # an unknown extra type
def test_every_packet_is_answered_with_the_right_status(rig, packet) -> None:
    front, _other, _sink = rig
    frags, extra_list, csum_blank, validated, total_override = packet
    grefs = [
        (front.good[index % len(front.good)] if kind == "good" else front.bad[index % len(front.bad)])
        for kind, index, _o, _s in frags
    ]
    total = sum(size for *_x, size in frags) if total_override is None else total_override
    total &= 0xFFFF
    ids = front.ids(len(frags))
    flags = (NETTXF_csum_blank if csum_blank else 0) | (NETTXF_data_validated if validated else 0)
    slots = []
    for n, ((_kind, _i, offset, size), gref, req_id) in enumerate(zip(frags, grefs, ids)):
        more = NETTXF_more_data if n < len(frags) - 1 else 0
        if n == 0:
            slot_flags = flags | more | (NETTXF_extra_info if extra_list else 0)
            slots.append(TX_REQUEST.pack(gref, offset & 0xFFFF, slot_flags, req_id, total))
            for e, (kind, gso_type, gso_size) in enumerate(extra_list):
                more_extra = XEN_NETIF_EXTRA_FLAG_MORE if e < len(extra_list) - 1 else 0
                slots.append(EXTRA_INFO.pack(kind, more_extra, gso_size, gso_type, 0, 0) + bytes(4))
        else:
            slots.append(TX_REQUEST.pack(gref, offset & 0xFFFF, more, req_id, size & 0xFFFF))
    responses = front.submit(slots)
    ok = expected_ok(front, frags, extra_list, csum_blank, total, grefs)
    status = NETIF_RSP_OKAY if ok else NETIF_RSP_ERROR
    want = [(ids[0], status)] + [(0, NETIF_RSP_NULL)] * len(extra_list) + [(i, status) for i in ids[1:]]
    assert responses == want
    # Whatever came before, a valid packet is still served.
    assert front.send_valid(b"still here") == [(front.next_id - 1, NETIF_RSP_OKAY)]


def test_a_valid_packet_reaches_the_stack_after_hostile_ones(rig) -> None:
    front, _other, sink = rig
    bad = front.bad[0]
    (req_id,) = front.ids(1)
    assert front.submit([TX_REQUEST.pack(bad, 0, 0, req_id, 60)]) == [(req_id, NETIF_RSP_ERROR)]
    assert front.send_valid(b"hello dom0")[0][1] == NETIF_RSP_OKAY
    assert received(sink).endswith(b"hello dom0")
    stats = front.back.stats
    assert (stats["tx_errors"], stats["tx_packets"]) == (1, 1)


@pytest.mark.parametrize("ring", ["tx", "rx"])
def test_a_ring_index_out_of_range_disconnects_only_that_vif(rig, ring) -> None:
    front, other, sink = rig
    hostile = getattr(front, ring)
    hostile.req_prod_pvt = (hostile.req_prod_pvt + hostile.nr_ents + 1) & RING_IDX_MASK
    hostile.push_requests()
    with pytest.raises(RingError, match="more than 256 ahead"):
        front.back.process()
    assert other.send_valid(b"other vif")[0][1] == NETIF_RSP_OKAY
    assert received(sink).endswith(b"other vif")


def test_a_packet_that_never_ends_disconnects_only_that_vif(rig) -> None:
    front, other, sink = rig
    ids = front.ids(front.tx.nr_ents)
    front.tx.put_requests(b"".join(TX_REQUEST.pack(front.good[0], 0, NETTXF_more_data, i, 100) for i in ids))
    front.tx.push_requests()
    with pytest.raises(RingError, match="without its last fragment"):
        front.back.process()
    assert other.send_valid(b"still serving")[0][1] == NETIF_RSP_OKAY
    assert received(sink).endswith(b"still serving")


def test_an_incomplete_packet_waits_for_its_last_slot(rig) -> None:
    front, _other, sink = rig
    frame = udp_frame(front.dst, b"in two parts")
    front.kernel.write(front.valid_pfn, frame)
    gref = front.valid_gref
    first, second = front.ids(2)
    front.tx.put_request(gref, 0, NETTXF_more_data, first, len(frame))
    front.tx.push_requests()
    assert not front.back.process()
    assert front.tx.get_responses() == (b"", 0)
    front.tx.put_request(gref, 20, 0, second, len(frame) - 20)
    front.tx.push_requests()
    front.back.process()
    data, count = front.tx.get_responses()
    assert list(NETIF_TX_PROTOCOL.unpack_responses(data)) == [(first, NETIF_RSP_OKAY), (second, NETIF_RSP_OKAY)]
    assert received(sink).endswith(b"in two parts")


def test_rx_requests_naming_bad_grants_are_answered_with_an_error(rig) -> None:
    from xenlike.public.netif import RX_RESPONSE

    front, _other, sink = rig
    writable_pfn = front.kernel.pages.alloc(1)
    good = front.kernel.grant_table.grant_access(0, writable_pfn)
    readonly = front.good[0]  # netback must write into an rx page: a read-only grant will not do
    for req_id, gref in enumerate([5000, readonly, good], start=1):
        front.rx.put_request(req_id, gref)
    front.rx.push_requests()
    answered: list[tuple[int, int, int, int]] = []
    deadline = time.monotonic() + 10
    while len(answered) < 3 and time.monotonic() < deadline:
        sink.sendto(b"who has", ("10.99.0.9", PORT))  # an ARP request for it goes out on vif5.0
        front.back.process()
        front.back.loop.poll(0.05)
        front.back.process()
        data, count = front.rx.get_responses()
        answered += [RX_RESPONSE.unpack_from(data, k * RX_RESPONSE.size) for k in range(count)]
    assert [(r[0], r[3]) for r in answered[:2]] == [(1, NETIF_RSP_ERROR), (2, NETIF_RSP_ERROR)]
    req_id, offset, _flags, status = answered[2]
    assert (req_id, offset) == (3, 0) and status >= 42  # a frame, copied into the good page
    assert front.back.stats["rx_errors"] == 2 and front.back.stats["rx_packets"] == 1
