"""A small rtnetlink client: what ``ip link``, ``ip addr`` and ``ip route`` do for a vif.

The vif's hotplug steps (Xen's ``vif-bridge``: join the bridge, set the MTU,
bring the device up) and the guest's interface set-up (address, default route)
are a handful of netlink requests (``rtnetlink(7)``,
``include/uapi/linux/rtnetlink.h``, ``if_link.h``, ``if_addr.h``); each is sent
with ``NLM_F_ACK`` and its answer checked, so a failure names the request and
the errno. A socket acts on the network namespace it was created in, whichever
namespace its user runs in later.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

__all__ = ["Rtnetlink", "RtnetlinkError"]

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE = 20, 24
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 10, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_NET_NS_FD = 28
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")


class RtnetlinkError(OSError):
    """The kernel refused a request; the message says which."""


def _attr(kind: int, payload: bytes) -> bytes:
    data = _RTATTR.pack(_RTATTR.size + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


class Rtnetlink:
    """One route-netlink socket, bound to the network namespace of the thread that made it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        """Send one message; returns its sequence number."""
        self._seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, self._seq, 0)
        self.sock.send(header + body)
        return self._seq

    def _answers(self, seq: int, what: str) -> Iterator[tuple[int, bytes]]:
        """The kernel's answers to message ``seq``, (type, payload) each, for as long as the caller reads."""
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise RtnetlinkError(71, f"{what}: a malformed answer")  # EPROTO
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if got_seq == seq:
                    yield kind, payload

    def _request(self, what: str, msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request and collect its answers up to the ack; raise on an error answer."""
        seq = self._send(msg_type, NLM_F_ACK | flags, body)
        answers: list[tuple[int, bytes]] = []
        for kind, payload in self._answers(seq, what):
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", payload)
                if error:
                    raise RtnetlinkError(-error, f"{what}: {os.strerror(-error)}")
                return answers
            answers.append((kind, payload))
        raise RtnetlinkError(71, f"{what}: no acknowledgement")

    def link_index(self, name: str) -> int:
        """The ifindex of ``name`` (``ip link show NAME``); RtnetlinkError ENODEV if it does not exist."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
        for kind, payload in self._request(f"ip link show {name}", RTM_GETLINK, 0, body):
            if kind == RTM_NEWLINK:
                return _IFINFOMSG.unpack_from(payload)[2]
        raise RtnetlinkError(19, f"ip link show {name}: no such device")

    def has_link(self, name: str) -> bool:
        try:
            self.link_index(name)
        except RtnetlinkError as exc:
            if exc.errno == 19:
                return False
            raise
        return True

    def add_bridge(self, name: str) -> int:
        """``ip link add NAME type bridge``; returns its ifindex."""
        body = (
            _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + _attr(IFLA_IFNAME, name.encode() + b"\0")
            + _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"bridge"))
        )
        self._request(f"ip link add {name} type bridge", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
        return self.link_index(name)

    def add_veth(self, name: str, peer: str, *, peer_netns: int | None = None) -> None:
        """``ip link add NAME type veth peer name PEER [netns FD]``: a pair, its peer moved to ``peer_netns``."""
        peer_attrs = _attr(IFLA_IFNAME, peer.encode() + b"\0")
        if peer_netns is not None:
            peer_attrs += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns))
        peer_info = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs
        kind = _attr(IFLA_INFO_KIND, b"veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        body = (
            _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + _attr(IFLA_IFNAME, name.encode() + b"\0")
            + _attr(IFLA_LINKINFO, kind)
        )
        self._request(f"ip link add {name} type veth peer name {peer}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_link(
        self,
        index: int,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        mac: bytes | None = None,
        master: int | None = None,
    ) -> None:
        """``ip link set``: state, MTU, MAC address and bridge (``master``), in one request."""
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        attrs = b""
        if mtu is not None:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        if mac is not None:
            attrs += _attr(IFLA_ADDRESS, mac)
        if master is not None:
            attrs += _attr(IFLA_MASTER, struct.pack("=I", master))
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
        self._request(f"ip link set {index}", RTM_NEWLINK, 0, body)

    def delete_link(self, index: int) -> None:
        """``ip link del``."""
        self._request(f"ip link del {index}", RTM_DELLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))

    def add_address(self, index: int, interface: ipaddress.IPv4Interface) -> None:
        """``ip addr add ADDR/PREFIX dev INDEX``."""
        packed = interface.ip.packed
        body = _IFADDRMSG.pack(socket.AF_INET, interface.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self._request(f"ip addr add {interface} dev {index}", RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_default_route(self, gateway: ipaddress.IPv4Address, index: int) -> None:
        """``ip route add default via GATEWAY dev INDEX``."""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        body += _attr(RTA_GATEWAY, gateway.packed) + _attr(RTA_OIF, struct.pack("=I", index))
        self._request(f"ip route add default via {gateway}", RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def link_names(self) -> dict[int, str]:
        """Every link of the namespace, ``ip link`` (index → name)."""
        from_kernel = self._dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        names: dict[int, str] = {}
        for payload in from_kernel:
            index = _IFINFOMSG.unpack_from(payload)[2]
            attrs = _attrs(payload[_IFINFOMSG.size :])
            names[index] = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
        return names

    def _dump(self, msg_type: int, body: bytes) -> list[bytes]:
        """A dump request (``NLM_F_DUMP``): every answer's payload up to ``NLMSG_DONE``."""
        what = f"dump {msg_type}"
        payloads: list[bytes] = []
        for kind, payload in self._answers(self._send(msg_type, NLM_F_DUMP, body), what):
            if kind == NLMSG_DONE:
                return payloads
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", payload)
                raise RtnetlinkError(-error, f"{what}: {os.strerror(-error)}")
            payloads.append(payload)
        raise RtnetlinkError(71, f"{what}: no end of the dump")
