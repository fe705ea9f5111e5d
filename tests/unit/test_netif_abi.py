"""netif.h's layouts, flags and ring sizes, as ``xen/include/public/io/netif.h`` has them."""

from __future__ import annotations

from xenlike.public import netif
from xenlike.public.netif import (
    EXTRA_INFO,
    NET_RX_RING_SIZE,
    NET_TX_RING_SIZE,
    NETIF_RX_PROTOCOL,
    NETIF_TX_PROTOCOL,
    RX_REQUEST,
    RX_RESPONSE,
    TX_REQUEST,
    TX_RESPONSE,
    pack_gso_extra,
    unpack_extra,
)


def test_struct_sizes_are_netif_h_s() -> None:
    assert (TX_REQUEST.size, TX_RESPONSE.size, RX_REQUEST.size, RX_RESPONSE.size, EXTRA_INFO.size) == (12, 4, 8, 8, 8)
    assert NETIF_TX_PROTOCOL.entry_size == 12 and NETIF_RX_PROTOCOL.entry_size == 8


def test_field_offsets_are_netif_h_s() -> None:
    # struct netif_tx_request { grant_ref_t gref; uint16_t offset, flags, id, size; }
    raw = TX_REQUEST.pack(0x11223344, 0x5566, 0x7788, 0x99AA, 0xBBCC)
    assert raw == bytes.fromhex("44332211" "6655" "8877" "aa99" "ccbb")
    # struct netif_rx_request { uint16_t id; uint16_t pad; grant_ref_t gref; }
    assert RX_REQUEST.pack(0x0102, 0x03040506) == bytes.fromhex("0201" "0000" "06050403")
    # struct netif_rx_response { uint16_t id, offset, flags; int16_t status; }
    assert RX_RESPONSE.pack(1, 2, 3, -1) == bytes.fromhex("0100" "0200" "0300" "ffff")
    # struct netif_tx_response { uint16_t id; int16_t status; }
    assert TX_RESPONSE.pack(7, -2) == bytes.fromhex("0700" "feff")
    # struct netif_extra_info { uint8_t type, flags; union { struct { uint16_t size; uint8_t type, pad; uint16_t features; } gso; } }
    assert pack_gso_extra(1448, netif.XEN_NETIF_GSO_TYPE_TCPV6, more=True) == bytes.fromhex("01" "01" "a805" "02" "00" "0000")


def test_one_page_rings_hold_256_slots() -> None:
    assert NET_TX_RING_SIZE == 256 and NET_RX_RING_SIZE == 256


def test_flags_statuses_and_limits() -> None:
    assert (netif.NETTXF_csum_blank, netif.NETTXF_data_validated, netif.NETTXF_more_data, netif.NETTXF_extra_info) == (
        1, 2, 4, 8)
    assert (netif.NETRXF_data_validated, netif.NETRXF_csum_blank, netif.NETRXF_more_data, netif.NETRXF_extra_info,
            netif.NETRXF_gso_prefix) == (1, 2, 4, 8, 16)
    assert (netif.NETIF_RSP_DROPPED, netif.NETIF_RSP_ERROR, netif.NETIF_RSP_OKAY, netif.NETIF_RSP_NULL) == (-2, -1, 0, 1)
    assert (netif.XEN_NETIF_EXTRA_TYPE_NONE, netif.XEN_NETIF_EXTRA_TYPE_GSO, netif.XEN_NETIF_EXTRA_TYPE_HASH) == (0, 1, 4)
    assert (netif.XEN_NETIF_GSO_TYPE_TCPV4, netif.XEN_NETIF_GSO_TYPE_TCPV6) == (1, 2)
    assert netif.XEN_NETIF_NR_SLOTS_MIN == 18 and netif.XEN_NETIF_MAX_TX_SIZE == 0xFFFF
    assert netif.DEVICE_TYPE == "vif"


def test_extra_info_round_trips() -> None:
    info = unpack_extra(pack_gso_extra(9000, netif.XEN_NETIF_GSO_TYPE_TCPV4) + bytes(4))
    assert (info.type, info.flags, info.gso_size, info.gso_type, info.gso_features) == (1, 0, 9000, 1, 0)


def test_xenstore_keys_are_xens() -> None:
    assert (netif.TX_RING_REF, netif.RX_RING_REF, netif.EVENT_CHANNEL, netif.REQUEST_RX_COPY) == (
        "tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy")
    assert (netif.FEATURE_RX_COPY, netif.FEATURE_RX_FLIP, netif.FEATURE_NO_CSUM_OFFLOAD) == (
        "feature-rx-copy", "feature-rx-flip", "feature-no-csum-offload")
    assert (netif.MAC, netif.BRIDGE, netif.RATE, netif.VIFNAME, netif.DEFAULT_BRIDGE) == (
        "mac", "bridge", "rate", "vifname", "xenbr0")
