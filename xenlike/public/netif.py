"""The network-device protocol (``xen/include/public/io/netif.h``): one definition for both ends.

A vif has, per queue, two rings, each one page of its own granted by the front end:

- **tx** (guest to dom0): ``netif_tx_request`` (12 bytes) / ``netif_tx_response`` (4 bytes),
  256 slots a page;
- **rx** (dom0 to guest): ``netif_rx_request`` (8 bytes) / ``netif_rx_response`` (8 bytes),
  256 slots a page.

The wire format of a packet (netif.h, "This is the 'wire' format for packets")::

    tx:  request 1: netif_tx_request   NETTXF_* (any flags), size = the WHOLE packet's size
        [request 2: netif_extra_info   (only if request 1 has NETTXF_extra_info)]
        [request 3: netif_extra_info   (only if request 2 has XEN_NETIF_EXTRA_FLAG_MORE)]
        ...
         request N: netif_tx_request   NETTXF_more_data on every request but the last;
                                      size = this fragment's size
    rx:  response 1: netif_rx_response NETRXF_* (any flags), status = this slot's bytes
        [response 2: netif_extra_info  (only if response 1 has NETRXF_extra_info)]
         ...
         response N: netif_rx_response NETRXF_more_data on every response but the last

The first tx request's data is therefore ``size`` minus the sizes of the later
fragments. Each tx request is answered by one ``netif_tx_response`` with its
``id``; an extra-info slot gets ``NETIF_RSP_NULL``. A back end must accept a
packet of up to :data:`XEN_NETIF_NR_SLOTS_MIN` data slots (extra info not counted); a packet is at most
:data:`XEN_NETIF_MAX_TX_SIZE` bytes (``size`` is 16 bits). An rx response lands
in the same ring slot as the request whose page it filled (Linux's netfront
finds the page by the slot's index), so an extra-info response sits in the slot
of a request whose page is not used and goes back to the front end's pool.

``NETTXF_csum_blank``/``NETRXF_csum_blank``: the TCP or UDP checksum is still to
be finished (a partial checksum, ``CHECKSUM_PARTIAL``); ``data_validated``: the
checksum need not be checked. A GSO extra says the packet is one large TCP
segment that the receiver (or its stack) must still cut into ``gso.size``-byte
segments.

Notifications (netif.h): after enqueuing any message, each end notifies only if
the ring's event index asks for it (``req_event``, ``rsp_event``). A front end
that notifies after posting rx requests advertises ``feature-rx-notify``;
without it the back end must assume it will not be kicked for them.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from xenlike.public.ring import RingProtocol, ring_size
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "DEVICE_TYPE",
    "NETTXF_csum_blank",
    "NETTXF_data_validated",
    "NETTXF_more_data",
    "NETTXF_extra_info",
    "NETRXF_data_validated",
    "NETRXF_csum_blank",
    "NETRXF_more_data",
    "NETRXF_extra_info",
    "NETRXF_gso_prefix",
    "NETIF_RSP_DROPPED",
    "NETIF_RSP_ERROR",
    "NETIF_RSP_OKAY",
    "NETIF_RSP_NULL",
    "XEN_NETIF_EXTRA_TYPE_NONE",
    "XEN_NETIF_EXTRA_TYPE_GSO",
    "XEN_NETIF_EXTRA_TYPE_MCAST_ADD",
    "XEN_NETIF_EXTRA_TYPE_MCAST_DEL",
    "XEN_NETIF_EXTRA_TYPE_HASH",
    "XEN_NETIF_EXTRA_TYPE_MAX",
    "XEN_NETIF_EXTRA_FLAG_MORE",
    "XEN_NETIF_GSO_TYPE_NONE",
    "XEN_NETIF_GSO_TYPE_TCPV4",
    "XEN_NETIF_GSO_TYPE_TCPV6",
    "XEN_NETIF_NR_SLOTS_MIN",
    "XEN_NETIF_MAX_TX_SIZE",
    "ETH_HLEN",
    "VLAN_HLEN",
    "MAX_GSO_FRAME",
    "MAX_GSO_RX_SLOTS",
    "DEFAULT_MTU",
    "TX_REQUEST",
    "TX_RESPONSE",
    "RX_REQUEST",
    "RX_RESPONSE",
    "EXTRA_INFO",
    "NETIF_TX_PROTOCOL",
    "NETIF_RX_PROTOCOL",
    "NET_TX_RING_SIZE",
    "NET_RX_RING_SIZE",
    "ExtraInfo",
    "pack_gso_extra",
    "unpack_extra",
    "TX_RING_REF",
    "RX_RING_REF",
    "EVENT_CHANNEL",
    "EVENT_CHANNEL_TX",
    "EVENT_CHANNEL_RX",
    "REQUEST_RX_COPY",
    "FEATURE_RX_NOTIFY",
    "FEATURE_SG",
    "FEATURE_GSO_TCPV4",
    "FEATURE_GSO_TCPV6",
    "FEATURE_NO_CSUM_OFFLOAD",
    "FEATURE_IPV6_CSUM_OFFLOAD",
    "FEATURE_RX_COPY",
    "FEATURE_RX_FLIP",
    "FEATURE_SPLIT_EVENT_CHANNELS",
    "MULTI_QUEUE_MAX_QUEUES",
    "MULTI_QUEUE_NUM_QUEUES",
    "MAC",
    "BRIDGE",
    "IP",
    "RATE",
    "MTU",
    "HANDLE",
    "SCRIPT",
    "VIFNAME",
    "TYPE",
    "HOTPLUG_STATUS",
    "DEFAULT_BRIDGE",
    "DEFAULT_CREDIT_USEC",
]

# ---------------------------------------------------------------------------------------
# Flags and statuses
# ---------------------------------------------------------------------------------------
# netif_tx_request.flags
NETTXF_csum_blank = 1 << 0  # the protocol checksum is still to be finished (partial)
NETTXF_data_validated = 1 << 1  # the checksum need not be checked
NETTXF_more_data = 1 << 2  # another fragment of this packet follows
NETTXF_extra_info = 1 << 3  # a netif_extra_info follows in the next slot

# netif_rx_response.flags
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4  # the GSO prefix scheme (not used here: extra info instead)

# netif_tx_response.status, netif_rx_response.status (rx: > 0 is the slot's byte count)
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1  # the response of an extra-info slot

# netif_extra_info.type and .flags
XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0  # another extra-info slot follows

# netif_extra_info.u.gso.type
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

XEN_NETIF_NR_SLOTS_MIN = 18  # data slots (extra info not counted) of one packet every back end must accept
XEN_NETIF_MAX_TX_SIZE = 0xFFFF  # netif_tx_request.size is 16 bits

ETH_HLEN = 14  # an Ethernet header (if_ether.h)
VLAN_HLEN = 4  # an 802.1Q tag on top of it
DEFAULT_MTU = 1500  # the mtu when the toolstack wrote none
MAX_GSO_FRAME = XEN_NETIF_MAX_TX_SIZE + ETH_HLEN + VLAN_HLEN  # a 64 KiB IP packet and its link header
# The rx slots a largest GSO frame takes: its pages, and request 1's for the GSO extra info.
MAX_GSO_RX_SLOTS = -(-MAX_GSO_FRAME // PAGE_SIZE) + 1

# ---------------------------------------------------------------------------------------
# Layouts (little-endian, packed as the C structs are: no field needs padding)
# ---------------------------------------------------------------------------------------
# struct netif_tx_request: gref, offset, flags, id, size
TX_REQUEST = struct.Struct("<IHHHH")
# struct netif_tx_response: id, status
TX_RESPONSE = struct.Struct("<Hh")
# struct netif_rx_request: id, pad, gref
RX_REQUEST = struct.Struct("<H2xI")
# struct netif_rx_response: id, offset, flags, status
RX_RESPONSE = struct.Struct("<HHHh")
# struct netif_extra_info with its gso member: type, flags, gso.size, gso.type, gso.pad, gso.features.
# It overlays a tx request slot (12 bytes) or an rx response slot (8 bytes).
EXTRA_INFO = struct.Struct("<BBHBBH")
assert (TX_REQUEST.size, TX_RESPONSE.size, RX_REQUEST.size, RX_RESPONSE.size, EXTRA_INFO.size) == (12, 4, 8, 8, 8)

NETIF_TX_PROTOCOL = RingProtocol("netif_tx", TX_REQUEST, TX_RESPONSE)
NETIF_RX_PROTOCOL = RingProtocol("netif_rx", RX_REQUEST, RX_RESPONSE)
NET_TX_RING_SIZE = ring_size(PAGE_SIZE, NETIF_TX_PROTOCOL.entry_size)  # __CONST_RING_SIZE(xen_netif_tx, 4096)
NET_RX_RING_SIZE = ring_size(PAGE_SIZE, NETIF_RX_PROTOCOL.entry_size)  # __CONST_RING_SIZE(xen_netif_rx, 4096)


class ExtraInfo(NamedTuple):
    """``struct netif_extra_info``, decoded as its GSO member (the other members are not used here)."""

    type: int
    flags: int
    gso_size: int
    gso_type: int
    gso_pad: int
    gso_features: int


def pack_gso_extra(gso_size: int, gso_type: int, more: bool = False) -> bytes:
    """A GSO extra-info slot's first 8 bytes: segments of ``gso_size`` bytes, ``XEN_NETIF_GSO_TYPE_*``."""
    flags = XEN_NETIF_EXTRA_FLAG_MORE if more else 0
    return EXTRA_INFO.pack(XEN_NETIF_EXTRA_TYPE_GSO, flags, gso_size, gso_type, 0, 0)


def unpack_extra(slot: bytes | memoryview) -> ExtraInfo:
    """Decode the extra info in the first 8 bytes of a (private copy of a) slot."""
    return ExtraInfo(*EXTRA_INFO.unpack_from(slot))


# ---------------------------------------------------------------------------------------
# Feature and parameter negotiation (netif.h's "Feature and Parameter Negotiation")
#
# Each end publishes nodes in its own device directory; a missing node means its
# default. ``device/vif/<devid>`` is the front end's, ``backend/vif/<domid>/<devid>``
# the back end's (see xenlike.public.xenbus for the paths).
#
# Written by the toolstack (libxl_nic.c) in the back end's directory:
#   mac            the guest's MAC, "00:16:3e:xx:xx:xx"                   default: derived
#   bridge         the dom0 bridge the vif joins                           default "xenbr0"
#   ip             the guest's address(es), space-separated                default: none
#   rate           "bytes,usecs": a credit of bytes per interval           default: unlimited
#   mtu            the vif's MTU                                           default 1500
#   handle         the devid                                               (required)
#   script         the hotplug script (vif-bridge)                         default "vif-bridge"
#   vifname        the dom0 device's name                                  default "vif<domid>.<devid>"
#   type           "vif" (PV only)                                         default "vif"
#   hotplug-status "connected" once the vif is on its bridge
# and in the front end's directory: handle, mac, mtu (read-only for the guest).
#
# Back end (netback, at probe, before InitWait):
#   feature-sg                 0/1 default 0  packets of more than one slot are accepted
#   feature-gso-tcpv4          0/1 default 0  tx GSO extra info for TCP over IPv4
#   feature-gso-tcpv6          0/1 default 0  ... and over IPv6
#   feature-ipv6-csum-offload  0/1 default 0  csum_blank on IPv6 packets
#   feature-rx-copy            0/1 default 0  the back end copies into rx pages (mandatory here: 1)
#   feature-rx-flip            0/1 default 1  page flipping (never here: 0)
#   feature-split-event-channels  0/1 default 0  (0 here: one event channel)
#   multi-queue-max-queues     N   default 1  (1 here)
#
# Front end (netfront, before Initialised):
#   tx-ring-ref, rx-ring-ref   the grants of the two one-page rings
#   event-channel              the front end's unbound port (or event-channel-tx and
#                              event-channel-rx with split event channels)
#   request-rx-copy            must be 1: netback refuses a front end without it (EOPNOTSUPP)
#   feature-rx-notify          0/1 default 0  the front end kicks after posting rx requests
#   feature-sg                 0/1 default 0  rx packets may span slots
#   feature-gso-tcpv4          0/1 default 0  rx GSO extra info (TCP/IPv4) is accepted
#   feature-gso-tcpv6          0/1 default 0  ... TCP/IPv6
#   feature-no-csum-offload    0/1 default 0  1: rx packets must carry complete checksums
#   feature-ipv6-csum-offload  0/1 default 0  rx csum_blank on IPv6 packets is accepted
#   multi-queue-num-queues     N   default 1
#
# The handshake (every split device's, xenlike.public.xenbus)::
#
#   front end                                back end
#   Initialising                             Initialising
#                                            probe: feature-*; InitWait
#   read feature-*; grant both rings, fill
#   rx with granted pages, alloc the port;
#   tx-ring-ref, rx-ring-ref, event-channel,
#   request-rx-copy, feature-*; Initialised
#                                            connect: map both rings, bind, open the
#                                            vif's TAP on its bridge, start the worker;
#                                            Connected
#   Connected: the interface is up
#   Closing / Closed  ---------------------> Closing: stop the worker; Closed
#   end access to the rings and pools
# ---------------------------------------------------------------------------------------
DEVICE_TYPE = "vif"  # the xenbus device type: backend/vif, device/vif

# Front end → back end
TX_RING_REF, RX_RING_REF = "tx-ring-ref", "rx-ring-ref"
EVENT_CHANNEL, EVENT_CHANNEL_TX, EVENT_CHANNEL_RX = "event-channel", "event-channel-tx", "event-channel-rx"
REQUEST_RX_COPY, FEATURE_RX_NOTIFY = "request-rx-copy", "feature-rx-notify"
FEATURE_NO_CSUM_OFFLOAD = "feature-no-csum-offload"
MULTI_QUEUE_NUM_QUEUES = "multi-queue-num-queues"
# Both ends
FEATURE_SG, FEATURE_GSO_TCPV4, FEATURE_GSO_TCPV6 = "feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6"
FEATURE_IPV6_CSUM_OFFLOAD = "feature-ipv6-csum-offload"
# Back end → front end
FEATURE_RX_COPY, FEATURE_RX_FLIP = "feature-rx-copy", "feature-rx-flip"
FEATURE_SPLIT_EVENT_CHANNELS = "feature-split-event-channels"
MULTI_QUEUE_MAX_QUEUES = "multi-queue-max-queues"
# Toolstack → back end (and mac, mtu, handle → front end)
MAC, BRIDGE, IP, RATE, MTU, HANDLE = "mac", "bridge", "ip", "rate", "mtu", "handle"
SCRIPT, VIFNAME, TYPE, HOTPLUG_STATUS = "script", "vifname", "type", "hotplug-status"

DEFAULT_BRIDGE = "xenbr0"
DEFAULT_CREDIT_USEC = 50_000  # libxl's interval when rate= gives none (50 ms)
