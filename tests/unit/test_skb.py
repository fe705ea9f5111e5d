"""Header parsing for partial checksums and GSO (``xenlike.kernel.skb``), against frames built field by field."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlike.kernel.skb import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    HeaderError,
    checksum_setup,
    gso_header_length,
    parse_headers,
)

MACS = bytes.fromhex("00163e000001" "00163e000002")


def ethernet(ethertype: int, vlan: bool = False) -> bytes:
    if vlan:
        return MACS + struct.pack("!HHH", 0x8100, 5, ethertype)
    return MACS + struct.pack("!H", ethertype)


def ipv4(protocol: int, options: int = 0, frag: int = 0) -> bytes:
    ihl = 5 + options
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 1, frag, 64, protocol, 0, b"\x0a" * 4, b"\x0b" * 4) + bytes(
        4 * options
    )


def ipv6(next_header: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, 0, next_header, 64, bytes(16), bytes(16))


def tcp(options: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", 1, 2, 0, 0, (5 + options) << 4, 0x18, 65535, 0, 0) + bytes(4 * options)


def udp() -> bytes:
    return struct.pack("!HHHH", 1, 2, 8, 0)


frames = st.builds(
    lambda v6, vlan, is_tcp, ip_opts, tcp_opts, payload: (v6, vlan, is_tcp, ip_opts, tcp_opts, payload),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 10),
    st.integers(0, 10),
    st.binary(max_size=64),
)


@given(frames)
def test_offsets_are_where_the_headers_are(spec) -> None:
    v6, vlan, is_tcp, ip_opts, tcp_opts, payload = spec
    protocol = IPPROTO_TCP if is_tcp else IPPROTO_UDP
    l2 = ethernet(0x86DD if v6 else 0x0800, vlan)
    l3 = ipv6(protocol) if v6 else ipv4(protocol, ip_opts)
    l4 = tcp(tcp_opts) if is_tcp else udp()
    frame = l2 + l3 + l4 + payload
    headers = parse_headers(frame)
    assert headers.ip_version == (6 if v6 else 4)
    assert headers.l3_offset == len(l2)
    assert headers.l4_offset == len(l2) + len(l3)
    assert headers.header_len == len(l2) + len(l3) + len(l4)
    assert checksum_setup(frame) == (len(l2) + len(l3), 16 if is_tcp else 6)
    if is_tcp:
        assert gso_header_length(frame, headers.ip_version).header_len == len(l2) + len(l3) + len(l4)
        with pytest.raises(HeaderError, match="GSO type TCPv"):
            gso_header_length(frame, 10 - headers.ip_version)
    else:
        with pytest.raises(HeaderError, match="UDP"):
            gso_header_length(frame, headers.ip_version)
    # Every truncation inside the headers is refused, never read past.
    for cut in range(headers.header_len):
        with pytest.raises(HeaderError):
            parse_headers(frame[:cut])


@given(st.binary(max_size=200))
def test_garbage_is_parsed_or_refused_within_its_bytes(data: bytes) -> None:
    try:
        headers = parse_headers(data)
    except HeaderError:
        return
    assert headers.l3_offset < headers.l4_offset < headers.header_len <= len(data)
    assert headers.protocol in (IPPROTO_TCP, IPPROTO_UDP)


def test_refusals_name_what_was_found() -> None:
    with pytest.raises(HeaderError, match="ethertype 0x0806"):
        parse_headers(ethernet(0x0806) + bytes(28))
    with pytest.raises(HeaderError, match="fragment"):
        parse_headers(ethernet(0x0800) + ipv4(IPPROTO_UDP, frag=0x2000) + udp())
    with pytest.raises(HeaderError, match="fragment"):
        parse_headers(ethernet(0x0800) + ipv4(IPPROTO_UDP, frag=5) + udp())
    with pytest.raises(HeaderError, match="IP protocol 1 "):
        parse_headers(ethernet(0x0800) + ipv4(1) + bytes(8))
    with pytest.raises(HeaderError, match="extension headers"):
        parse_headers(ethernet(0x86DD) + ipv6(0) + bytes(8))  # a hop-by-hop header
    with pytest.raises(HeaderError, match="IPv4 header length 16"):
        parse_headers(ethernet(0x0800) + bytes([0x44]) + ipv4(IPPROTO_UDP)[1:] + udp())
    with pytest.raises(HeaderError, match="TCP data offset 16"):
        parse_headers(ethernet(0x0800) + ipv4(IPPROTO_TCP) + tcp()[:12] + bytes([0x40]) + tcp()[13:])
    with pytest.raises(HeaderError, match="IP version 6 under ethertype IPv4"):
        parse_headers(ethernet(0x0800) + ipv6(IPPROTO_UDP) + udp())
