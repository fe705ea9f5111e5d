"""netfront against netback, both data paths real, in one process: TCP and UDP between two namespaces.

The guest's ``eth0`` and dom0's ``vif5.0`` are TAPs in namespaces of their own
(``tests/unit/netif_support.py``); every frame between them crosses the tx or rx
ring in granted pages, as it does between a domU and dom0.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from domu.netfront.netfront import BackendFeatures
from xenlike.kernel import netdev, trace
from xenlike.kernel.trace import TraceBuffer
from xenlike.public.trace import Event, TraceClass, unpack_record

from .netif_support import BACK_PORT, LoopThread, Vif, require_tap, serve_step

PORT = 5001
FRONT_DOMID = 5  # netif_support's guest
TIMEOUT = 30.0


@pytest.fixture
def vif_factory():
    require_tap()
    made: list[Vif] = []

    def make(**kwargs) -> Vif:
        vif = Vif(**kwargs)
        made.append(vif)
        return vif

    yield make
    for vif in made:
        vif.close()


def _listen(vif: Vif, kind: int = socket.SOCK_STREAM) -> socket.socket:
    server = vif.dom0_ns.socket(socket.AF_INET, kind)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("10.99.0.1", PORT))
    if kind == socket.SOCK_STREAM:
        server.listen(1)
    server.settimeout(TIMEOUT)
    return server


def _stream(vif: Vif, nbytes: int, upload: bool) -> tuple[str, str]:
    """``nbytes`` from the guest to dom0 (``upload``) or back over TCP; the digests both ends saw."""
    data = hashlib.shake_256(b"xenlike").digest(1 << 16) * (nbytes >> 16)
    server = _listen(vif)
    result: dict[str, str] = {}

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            if upload:
                digest = hashlib.sha256()
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)
                result["got"] = digest.hexdigest()
            else:
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = vif.guest_ns.socket()
    try:
        client.settimeout(TIMEOUT)
        client.connect(("10.99.0.1", PORT))
        if upload:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            client.recv(1)
        else:
            digest = hashlib.sha256()
            while chunk := client.recv(1 << 20):
                digest.update(chunk)
            result["got"] = digest.hexdigest()
    finally:
        client.close()
        thread.join(TIMEOUT)
        server.close()
    vif.check()
    return hashlib.sha256(data).hexdigest(), result.get("got", "")


def test_tcp_from_the_guest_crosses_in_64k_segments(vif_factory) -> None:
    vif = vif_factory()
    sent, got = _stream(vif, 16 << 20, upload=True)
    assert got == sent
    back = vif.back.stats
    assert back["tx_errors"] == back["tx_dropped"] == 0
    assert back["tx_bytes"] >= 16 << 20
    # GSO: the guest's TCP handed over segments far above the MTU, each one packet on the ring.
    assert back["tx_bytes"] / back["tx_packets"] > 3 * 1514
    assert vif.front.stats["tx_packets"] == back["tx_packets"]


def test_tcp_to_the_guest_crosses_in_64k_segments(vif_factory) -> None:
    vif = vif_factory()
    sent, got = _stream(vif, 16 << 20, upload=False)
    assert got == sent
    back = vif.back.stats
    assert back["rx_dropped"] == back["rx_errors"] == 0
    assert back["rx_bytes"] / back["rx_packets"] > 3 * 1514
    assert vif.front.stats["rx_packets"] == back["rx_packets"]
    assert vif.front.stats["rx_errors"] == 0


def test_without_gso_or_csum_offload_frames_cross_one_mtu_at_a_time(vif_factory) -> None:
    vif = vif_factory(features=BackendFeatures(), front_sg=False, front_gso=False, front_csum=False)
    for upload in (True, False):
        sent, got = _stream(vif, 2 << 20, upload)
        assert got == sent
    back = vif.back.stats
    assert back["tx_bytes"] / back["tx_packets"] <= 1514
    assert back["rx_bytes"] / back["rx_packets"] <= 1514


def test_udp_both_ways(vif_factory) -> None:
    vif = vif_factory()
    server = _listen(vif, socket.SOCK_DGRAM)
    client = vif.guest_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.settimeout(TIMEOUT)
        for size in (0, 1, 1472, 8000, 60000):
            payload = bytes([size % 251]) * size
            client.sendto(payload, ("10.99.0.1", PORT))
            got, peer = server.recvfrom(65536)
            assert got == payload
            server.sendto(payload[::-1], peer)
            assert client.recv(65536) == payload[::-1]
    finally:
        client.close()
        server.close()
    vif.check()


def test_frames_reach_the_guest_after_netback_unmaps_its_rx_grants(vif_factory) -> None:
    """The readv vector netback keeps for the posted pages is made again once their mappings change."""
    vif = vif_factory()
    for namespace in (vif.guest_ns, vif.dom0_ns):  # no IPv6 chatter: the next frame to the guest is the test's
        with netdev.in_netns(namespace.fd), open("/proc/sys/net/ipv6/conf/all/disable_ipv6", "w") as knob:
            knob.write("1")
    server = _listen(vif, socket.SOCK_DGRAM)
    client = vif.guest_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.settimeout(5.0)
        client.sendto(b"hello", ("10.99.0.1", PORT))
        _, peer = server.recvfrom(65536)
        server.sendto(b"before", peer)
        assert client.recv(65536) == b"before"
        vif.back_thread.stop()  # the worker's thread is the only one that may touch its grants
        maps, dropped = vif.back.rx_grants.maps, vif.back.stats["rx_dropped"]
        vif.back.rx_grants.unmap_all()  # as a full persistent-grant cache does
        vif.back_thread = LoopThread("netback", serve_step(vif.back, vif.back_loop, BACK_PORT))
        vif._closers.append(vif.back_thread.stop)
        for n in range(3):
            server.sendto(b"after %d" % n, peer)
            assert client.recv(65536) == b"after %d" % n
        assert vif.back.rx_grants.maps > maps  # mapped again, not read into the emptied slots
        assert vif.back.stats["rx_dropped"] == dropped
    finally:
        client.close()
        server.close()
    vif.check()


def test_each_packet_is_an_io_trace_record_at_both_ends_only_while_io_is_traced(vif_factory) -> None:
    vif = vif_factory()
    server = _listen(vif, socket.SOCK_DGRAM)
    client = vif.guest_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = TraceBuffer.create("test-net", FRONT_DOMID, 1 << 16, 0)
    reader = TraceBuffer(fd)
    try:
        trace.attach(os.dup(fd), 0)
        client.settimeout(TIMEOUT)

        def round_trip(payload: bytes) -> None:
            client.sendto(payload, ("10.99.0.1", PORT))
            got, peer = server.recvfrom(65536)
            server.sendto(got, peer)
            assert client.recv(65536) == payload

        round_trip(b"u" * 100)  # the same size as the traced one: neither end may record it
        time.sleep(0.2)  # the loops are past the untraced packet's trace points
        reader.set_mask(int(TraceClass.IO))
        round_trip(b"x" * 100)
        time.sleep(0.2)
        reader.set_mask(0)
        records, lost, why = reader.read()
    finally:
        trace.detach()
        reader.close()
        os.close(fd)
        client.close()
        server.close()
    assert (lost, why) == (0, None)
    seen = []
    for data in records:
        event, _ns, domid, _vcpu, fields = unpack_record(data)
        assert event == Event.IO_REQUEST and fields["dur"] >= 0
        seen.append(("back" if "vif" in fields else "front", fields["op"], fields["bytes"], domid))
    frame = 14 + 20 + 8 + 100  # Ethernet, IPv4, UDP, payload (the guest's IPv6 neighbour discovery may cross too)
    assert sorted(record for record in seen if record[2] == frame) == [
        ("back", "net-rx", frame, FRONT_DOMID),  # netback names the guest whose vif it serves
        ("back", "net-tx", frame, FRONT_DOMID),
        ("front", "net-rx", frame, 0),
        ("front", "net-tx", frame, 0),
    ]
    vif.check()


def test_rate_limits_what_the_guest_sends(vif_factory) -> None:
    # 1 MiB/s in 10 ms intervals: 2 MiB take about 1.9 s beyond the first burst of credit.
    vif = vif_factory(rate=(10_486, 10_000))
    nbytes = 2 << 20
    start = time.monotonic()
    sent, got = _stream(vif, nbytes, upload=True)
    elapsed = time.monotonic() - start
    assert got == sent
    assert elapsed >= (nbytes - 131072) / (1 << 20) * 0.9, f"{nbytes} bytes at 1 MiB/s took only {elapsed:.2f}s"


def test_jumbo_frames_span_pages_both_ways(vif_factory) -> None:
    # MTU 9000: a datagram of 8000 bytes is one frame of three pages, not GSO, on a vif that may do GSO
    # (so netback reads it into the pages of requests 0, 2, 3 and moves it into 0, 1, 2).
    vif = vif_factory(mtu=9000)
    server = _listen(vif, socket.SOCK_DGRAM)
    client = vif.guest_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.settimeout(TIMEOUT)
        for size in (4050, 4100, 8000, 8900):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            client.sendto(payload, ("10.99.0.1", PORT))
            got, peer = server.recvfrom(65536)
            assert got == payload
            server.sendto(payload[::-1], peer)
            assert client.recv(65536) == payload[::-1]
    finally:
        client.close()
        server.close()
    vif.check()
    assert vif.back.stats["rx_dropped"] == vif.front.stats["rx_errors"] == 0
    assert vif.back.stats["rx_bytes"] > 8000 * 2


def test_a_device_deleted_under_netfront_stops_that_interface_only(vif_factory) -> None:
    from xenlike.kernel import netdev
    from xenlike.kernel.rtnetlink import Rtnetlink

    vif = vif_factory()
    with netdev.in_netns(vif.guest_ns.fd), Rtnetlink() as rt:
        rt.delete_link(rt.link_index("eth0"))  # what the platform does when dom0 unplugs the vif
    deadline = time.monotonic() + TIMEOUT
    while vif.front.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not vif.front.running
    vif.check()  # the guest's loop thread carries on


def _link_local(vif: Vif, ns, name: str) -> str:
    """The EUI-64 link-local address the kernel gave ``name`` (from its MAC)."""
    import fcntl
    import struct

    probe = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        raw = fcntl.ioctl(probe.fileno(), 0x8927, struct.pack("256s", name.encode()))  # SIOCGIFHWADDR
    finally:
        probe.close()
    mac = bytearray(raw[18:24])
    mac[0] ^= 0x02
    eui = bytes(mac[:3]) + b"\xff\xfe" + bytes(mac[3:])
    return "fe80::" + ":".join(f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2))


def test_tcp_over_ipv6_crosses_in_64k_segments_both_ways(vif_factory) -> None:
    vif = vif_factory()
    server_address = _link_local(vif, vif.dom0_ns, "vif5.0")
    server = vif.dom0_ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _until_not_tentative(lambda: server.bind((server_address, PORT, 0, _index(vif.dom0_ns, "vif5.0"))))
    server.listen(1)
    server.settimeout(TIMEOUT)
    data = hashlib.shake_256(b"v6").digest(1 << 16) * 64  # 4 MiB
    echoed = hashlib.sha256()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            while chunk := conn.recv(1 << 20):
                conn.sendall(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = vif.guest_ns.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        client.settimeout(TIMEOUT)
        _until_not_tentative(lambda: client.connect((server_address, PORT, 0, _index(vif.guest_ns, "eth0"))))
        sender = threading.Thread(target=lambda: (client.sendall(data), client.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        while chunk := client.recv(1 << 20):
            echoed.update(chunk)
        sender.join(TIMEOUT)
    finally:
        client.close()
        thread.join(TIMEOUT)
        server.close()
    vif.check()
    assert echoed.hexdigest() == hashlib.sha256(data).hexdigest()
    back = vif.back.stats
    assert back["tx_bytes"] / back["tx_packets"] > 3 * 1514 and back["rx_bytes"] / back["rx_packets"] > 3 * 1514
    assert back["tx_errors"] == back["tx_dropped"] == back["rx_dropped"] == vif.front.stats["rx_errors"] == 0


def _until_not_tentative(step) -> None:
    """Run ``step`` until the link-local addresses it needs are usable (duplicate address detection is done)."""
    import errno

    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            step()
            return
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _index(ns, name: str) -> int:
    from xenlike.kernel import netdev

    with netdev.in_netns(ns.fd):
        return socket.if_nametoindex(name)
