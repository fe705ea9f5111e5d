"""Where a frame's protocol headers are: what Linux's ``skb_checksum_setup`` and GSO header parsing find.

netif carries a partial checksum as one bit (``NETTXF_csum_blank``,
``NETRXF_csum_blank``) and a large TCP segment as its segment size (GSO extra
info); a TAP's ``struct virtio_net_hdr`` wants the byte positions instead:
``csum_start`` (where the TCP or UDP header starts), ``csum_offset`` (where its
checksum field is, from there) and ``hdr_len`` (the bytes of headers every
segment repeats). Both ends of a vif compute them from the frame's own headers,
as Linux's netback and netfront do with ``skb_checksum_setup``
(``net/core/skbuff.c``): Ethernet II (with at most one 802.1Q tag), IPv4 with
its options (not a fragment) or IPv6 without extension headers, then TCP or UDP.

Everything else is refused with :class:`HeaderError`, naming what was found:
the frame comes from a guest, and a back end never guesses.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

__all__ = [
    "ETH_P_IP",
    "ETH_P_IPV6",
    "ETH_P_8021Q",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "MAX_HEADER_LEN",
    "HeaderError",
    "L4Headers",
    "parse_headers",
    "checksum_setup",
    "gso_header_length",
]

Frame: TypeAlias = bytes | bytearray | memoryview  # a frame, or its first bytes

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x86DD, 0x8100
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV6_HLEN = 40
UDP_HLEN = 8
TCP_MIN_HLEN = 20
TCP_CSUM_OFFSET = 16  # offsetof(struct tcphdr, check)
UDP_CSUM_OFFSET = 6  # offsetof(struct udphdr, check)
IP_MF, IP_OFFSET = 0x2000, 0x1FFF
# The longest header chain parsed here: Ethernet + tag, IPv4 with 40 bytes of options, TCP with 40.
MAX_HEADER_LEN = ETH_HLEN + VLAN_HLEN + 60 + 60


class HeaderError(ValueError):
    """The frame's headers cannot be parsed for a checksum or segmentation; the message says why."""


class L4Headers(NamedTuple):
    """Where a frame's headers are (byte offsets from the start of the Ethernet header)."""

    ip_version: int  # 4 or 6
    l3_offset: int  # the IP header
    l4_offset: int  # the TCP or UDP header: csum_start
    protocol: int  # IPPROTO_TCP or IPPROTO_UDP
    header_len: int  # the end of the TCP or UDP header: a GSO frame's hdr_len

    @property
    def csum_offset(self) -> int:
        """Where the checksum field is, from ``l4_offset``."""
        return TCP_CSUM_OFFSET if self.protocol == IPPROTO_TCP else UDP_CSUM_OFFSET


def _need(frame: Frame, end: int, what: str) -> None:
    if len(frame) < end:
        raise HeaderError(f"{what} ends at byte {end}, past the {len(frame)} bytes of headers")


def parse_headers(frame: Frame) -> L4Headers:
    """Find the IP and TCP/UDP headers of an Ethernet frame (or its first bytes); HeaderError if they are not there."""
    _need(frame, ETH_HLEN, "the Ethernet header")
    ethertype = int.from_bytes(frame[12:14], "big")
    l3 = ETH_HLEN
    if ethertype == ETH_P_8021Q:
        _need(frame, ETH_HLEN + VLAN_HLEN, "the 802.1Q tag")
        ethertype = int.from_bytes(frame[16:18], "big")
        l3 += VLAN_HLEN
    if ethertype == ETH_P_IP:
        version, l4, protocol = 4, *_ipv4(frame, l3)
    elif ethertype == ETH_P_IPV6:
        version, l4, protocol = 6, *_ipv6(frame, l3)
    else:
        raise HeaderError(f"ethertype {ethertype:#06x} is neither IPv4 nor IPv6")
    if protocol == IPPROTO_TCP:
        _need(frame, l4 + TCP_MIN_HLEN, "the TCP header")
        doff = (frame[l4 + 12] >> 4) * 4
        if doff < TCP_MIN_HLEN:
            raise HeaderError(f"TCP data offset {doff} is below {TCP_MIN_HLEN}")
        _need(frame, l4 + doff, "the TCP options")
        return L4Headers(version, l3, l4, protocol, l4 + doff)
    _need(frame, l4 + UDP_HLEN, "the UDP header")
    return L4Headers(version, l3, l4, protocol, l4 + UDP_HLEN)


def _ipv4(frame: Frame, l3: int) -> tuple[int, int]:
    _need(frame, l3 + 20, "the IPv4 header")
    version, ihl = frame[l3] >> 4, (frame[l3] & 0xF) * 4
    if version != 4:
        raise HeaderError(f"IP version {version} under ethertype IPv4")
    if ihl < 20:
        raise HeaderError(f"IPv4 header length {ihl} is below 20")
    _need(frame, l3 + ihl, "the IPv4 options")
    if int.from_bytes(frame[l3 + 6 : l3 + 8], "big") & (IP_MF | IP_OFFSET):
        raise HeaderError("an IPv4 fragment has no TCP or UDP checksum of its own")
    return l3 + ihl, _transport(frame[l3 + 9])


def _ipv6(frame: Frame, l3: int) -> tuple[int, int]:
    _need(frame, l3 + IPV6_HLEN, "the IPv6 header")
    if frame[l3] >> 4 != 6:
        raise HeaderError(f"IP version {frame[l3] >> 4} under ethertype IPv6")
    return l3 + IPV6_HLEN, _transport(frame[l3 + 6])


def _transport(protocol: int) -> int:
    if protocol not in (IPPROTO_TCP, IPPROTO_UDP):
        raise HeaderError(f"IP protocol {protocol} is neither TCP nor UDP (extension headers are not followed)")
    return protocol


def checksum_setup(frame: Frame) -> tuple[int, int]:
    """``(csum_start, csum_offset)`` of a frame whose TCP or UDP checksum is partial (``skb_checksum_setup``)."""
    headers = parse_headers(frame)
    return headers.l4_offset, headers.csum_offset


def gso_header_length(frame: Frame, ip_version: int) -> L4Headers:
    """The headers of a TCP segment to be cut up (GSO over IPv4 or IPv6); HeaderError unless it is one.

    ``header_len`` of the result is virtio's ``hdr_len``; ``l4_offset`` and
    ``csum_offset`` its partial checksum.
    """
    headers = parse_headers(frame)
    if headers.protocol != IPPROTO_TCP:
        raise HeaderError("GSO of a UDP frame: only TCP segments are cut up here")
    if headers.ip_version != ip_version:
        raise HeaderError(f"GSO type TCPv{ip_version} on an IPv{headers.ip_version} frame")
    return headers
