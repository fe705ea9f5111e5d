"""TAP devices, network namespaces and the rtnetlink client, in namespaces these tests make (root only)."""

from __future__ import annotations

import ipaddress
import os
import select
import socket

import pytest

from dom0.netback.bridge import BRIDGE_NF_SYSCTLS, DOM0_ADDRESS, BackendNetwork, default_address, guest_address
from xenlike.kernel import netdev
from xenlike.kernel.rtnetlink import Rtnetlink, RtnetlinkError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making TAP devices and namespaces needs root")


def test_a_new_namespace_has_only_lo_and_the_caller_stays_home():
    home = os.stat("/proc/thread-self/ns/net").st_ino
    fd = netdev.new_netns()
    try:
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
        with netdev.in_netns(fd), Rtnetlink() as rt:
            assert os.stat("/proc/thread-self/ns/net").st_ino != home
            assert list(rt.link_names().values()) == ["lo"]
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
    finally:
        os.close(fd)


def test_a_tap_carries_a_frame_with_its_vnet_header_and_goes_with_its_fd():
    fd = netdev.new_netns()
    try:
        with netdev.in_netns(fd):
            tap, name = netdev.open_tap("xltest0")
            rt = Rtnetlink()
        index = rt.link_index(name)
        rt.set_link(index, mac=bytes.fromhex("00163e000001"), mtu=1400)
        rt.set_link(index, up=True)
        rt.add_address(index, ipaddress.IPv4Interface("10.99.0.1/24"))
        with netdev.in_netns(fd):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"x" * 100, ("10.99.0.2", 9))  # on-link: the kernel asks for 10.99.0.2 by ARP, through the TAP
        ethernet = b""
        while ethernet[12:14] != b"\x08\x06":  # ARP (IPv6's own frames may come first)
            assert select.select([tap], [], [], 5)[0], "no ARP request came out of the TAP"
            frame = os.read(tap, 65536)
            _flags, gso_type, *_ = netdev.VIRTIO_NET_HDR.unpack_from(frame)
            assert gso_type == netdev.VIRTIO_NET_HDR_GSO_NONE
            ethernet = frame[netdev.VIRTIO_NET_HDR.size :]
        assert ethernet[6:12] == bytes.fromhex("00163e000001")
        sender.close()
        os.close(tap)
        with pytest.raises(RtnetlinkError) as gone:
            rt.link_index(name)
        assert gone.value.errno == 19
        rt.close()
    finally:
        os.close(fd)


def test_a_tap_name_too_long_is_refused_by_name():
    with pytest.raises(netdev.NetdevError, match="1 to 15 bytes"):
        netdev.open_tap("x" * 16)


def test_the_back_end_network_has_xenbr0_with_dom0s_address_and_joins_vifs_to_bridges():
    network = BackendNetwork.create()
    try:
        tap = network.open_vif("vif9.0", "xenbr0", 1500)
        other = network.open_vif("vif9.1", "xenbr7", 9000)
        names = network.rt.link_names()
        assert {"lo", "xenbr0", "vif9.0", "xenbr7", "vif9.1"} <= set(names.values())
        assert "xenbr0" not in [name for _index, name in socket.if_nameindex()]  # not in the host's namespace
        with netdev.in_netns(network.netns):
            switches = [open(path).read().strip() for path in BRIDGE_NF_SYSCTLS if os.path.exists(path)]
        assert set(switches) <= {"0"}  # bridged frames skip netfilter there (where br_netfilter is built in)
        os.close(tap)
        os.close(other)
    finally:
        network.close()


def test_addresses_come_from_ip_or_the_domains_default():
    assert default_address(1) == ipaddress.IPv4Interface("10.88.0.2/16")
    assert guest_address(5, 0, None) == (default_address(5), str(DOM0_ADDRESS.ip))
    assert guest_address(5, 1, None) == (None, None)
    assert guest_address(5, 1, "10.88.7.7") == (ipaddress.IPv4Interface("10.88.7.7/16"), str(DOM0_ADDRESS.ip))
    assert guest_address(5, 0, "192.168.3.4") == (ipaddress.IPv4Interface("192.168.3.4/24"), None)
    assert guest_address(5, 0, "fe80::1 192.168.3.4/28") == (ipaddress.IPv4Interface("192.168.3.4/28"), None)


def test_a_veth_pair_joins_two_namespaces():
    left, right = netdev.new_netns(), netdev.new_netns()
    try:
        with netdev.in_netns(left):
            rt_left = Rtnetlink()
        with netdev.in_netns(right):
            rt_right = Rtnetlink()
        rt_left.add_veth("xlv0", "xlv1", peer_netns=right)
        assert "xlv0" in rt_left.link_names().values() and "xlv1" not in rt_left.link_names().values()
        assert "xlv1" in rt_right.link_names().values()
        for rt, name, ip in ((rt_left, "xlv0", "10.99.1.1/24"), (rt_right, "xlv1", "10.99.1.2/24")):
            index = rt.link_index(name)
            rt.add_address(index, ipaddress.IPv4Interface(ip))
            rt.set_link(index, up=True)
        with netdev.in_netns(right):
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("10.99.1.2", 9999))
        with netdev.in_netns(left):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.sendto(b"across", ("10.99.1.2", 9999))
        server.settimeout(5)
        assert server.recv(16) == b"across"
        for sock in (server, client):
            sock.close()
        rt_left.close()
        rt_right.close()
    finally:
        os.close(left)
        os.close(right)
