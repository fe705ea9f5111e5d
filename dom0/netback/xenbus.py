"""netback's xenbus driver (Linux ``drivers/net/xen-netback/xenbus.c``).

The bus (``dom0.xenbus_backend``) watches, probes and runs the states; this
driver says what a vif is:

- probe (``netback_probe``): read what the toolstack wrote (``bridge``, ``mtu``,
  ``rate``, ``vifname``, ``mac``, ``ip``; ``xenlike.public.netif``) and publish
  the back end's features: ``feature-sg``, ``feature-gso-tcpv4``/``-tcpv6``,
  ``feature-ipv6-csum-offload``, ``feature-rx-copy`` = 1, ``feature-rx-flip`` = 0,
  no split event channels, one queue;
- connect (``connect`` / ``connect_data_rings`` / ``read_xenbus_vif_flags``):
  read ``tx-ring-ref``, ``rx-ring-ref``, ``event-channel`` and
  ``request-rx-copy`` (a front end without it is refused with EOPNOTSUPP, as
  Linux netback does) and the front end's ``feature-*``; open the vif's TAP
  ``vif<domid>.<devid>`` on its bridge (the ``network`` the driver was given),
  set the TAP's offloads to what the front end takes, bind the event channel and
  start the vif's worker over :func:`~dom0.netback.netback.netif_data_path`;
- disconnect: the worker is gone, and its TAP with it (the device goes with
  its last fd, and leaves its bridge);
- remove: nothing more is held.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Protocol

from xenlike.kernel.netdev import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, set_offload
from xenlike.public import netif

from ..backend_worker import WorkerSpec
from ..xenbus_backend import BackendError, XenbusBackend, XenbusDevice
from .netback import netif_data_path

__all__ = ["NetbackDriver", "Network", "VifConfig", "parse_rate", "MIN_MTU", "MAX_MTU"]

log = logging.getLogger("dom0.netback")

MIN_MTU = 68  # IPv4's minimum (RFC 791)
MAX_MTU = 65535 - netif.ETH_HLEN - netif.VLAN_HLEN  # a frame's size fits netif_tx_request.size


class Network(Protocol):
    """Where vifs are plugged in (dom0's back-end namespace and its bridges)."""

    def open_vif(self, name: str, bridge: str, mtu: int) -> int:
        """Create TAP ``name`` on ``bridge`` with ``mtu``, up; returns its fd (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)."""
        ...


@dataclass
class VifConfig:
    """What the toolstack wrote in the back end's directory, checked (``dev.drvdata``)."""

    vifname: str
    bridge: str
    mtu: int
    rate: tuple[int, int] | None  # (bytes, usecs)
    mac: str | None
    ip: str | None


def parse_rate(text: str) -> tuple[int, int]:
    """The ``rate`` node, ``"bytes,usecs"`` (``xen_net_read_rate``); ValueError naming what is wrong."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f'rate {text!r} is not "bytes,usecs"')
    credit_bytes, credit_usec = int(parts[0]), int(parts[1])
    if credit_bytes == 0 or credit_usec == 0:
        raise ValueError(f"rate {text!r}: both the bytes and the interval must be positive")
    return credit_bytes, credit_usec


class NetbackDriver:
    """The vif back-end driver (``netback_driver``); ``dev.drvdata`` is the device's :class:`VifConfig`."""

    devicetype = netif.DEVICE_TYPE

    def __init__(self, network: Network) -> None:
        self.network = network

    def probe(self, bus: XenbusBackend, dev: XenbusDevice) -> dict[str, str]:
        dev.drvdata = self._config(bus, dev)
        log.info("%s: %s on %s, mtu %d", dev.label, dev.drvdata.vifname, dev.drvdata.bridge, dev.drvdata.mtu)
        return {
            netif.FEATURE_SG: "1",
            netif.FEATURE_GSO_TCPV4: "1",
            netif.FEATURE_GSO_TCPV6: "1",
            netif.FEATURE_IPV6_CSUM_OFFLOAD: "1",
            netif.FEATURE_RX_COPY: "1",
            netif.FEATURE_RX_FLIP: "0",
            netif.FEATURE_SPLIT_EVENT_CHANNELS: "0",
            netif.MULTI_QUEUE_MAX_QUEUES: "1",
        }

    @staticmethod
    def _config(bus: XenbusBackend, dev: XenbusDevice) -> VifConfig:
        def node(key: str) -> str | None:
            return bus.read(dev.nodename, key)

        mtu_text = node(netif.MTU) or str(netif.DEFAULT_MTU)
        if not mtu_text.isdigit() or not MIN_MTU <= int(mtu_text) <= MAX_MTU:
            raise BackendError(f"mtu {mtu_text!r} is not a number in {MIN_MTU}..{MAX_MTU}")
        rate_text = node(netif.RATE)
        try:
            rate = parse_rate(rate_text) if rate_text else None
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        return VifConfig(
            vifname=node(netif.VIFNAME) or f"vif{dev.frontend_id}.{dev.devid}",
            bridge=node(netif.BRIDGE) or netif.DEFAULT_BRIDGE,
            mtu=int(mtu_text),
            rate=rate,
            mac=node(netif.MAC),
            ip=node(netif.IP),
        )

    def connect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        if bus.read_otherend(dev, netif.REQUEST_RX_COPY, "0") != "1":
            raise OSError(errno.EOPNOTSUPP, f"the front end did not publish {netif.REQUEST_RX_COPY} = 1")
        if bus.read_otherend_int(dev, netif.MULTI_QUEUE_NUM_QUEUES, 1) != 1:
            raise BackendError(f"{netif.MULTI_QUEUE_NUM_QUEUES} above this back end's {netif.MULTI_QUEUE_MAX_QUEUES} 1")
        (tx_ref,) = bus.read_ring_refs(dev, 0, prefix="tx-")
        (rx_ref,) = bus.read_ring_refs(dev, 0, prefix="rx-")
        remote_port = bus.read_otherend_int(dev, netif.EVENT_CHANNEL)

        def feature(key: str) -> bool:
            return bus.read_otherend(dev, key) == "1"

        sg = feature(netif.FEATURE_SG)
        csum = not feature(netif.FEATURE_NO_CSUM_OFFLOAD)
        gso4 = sg and csum and feature(netif.FEATURE_GSO_TCPV4)
        gso6 = sg and csum and feature(netif.FEATURE_GSO_TCPV6)
        config: VifConfig = dev.drvdata
        tap = self.network.open_vif(config.vifname, config.bridge, config.mtu)
        try:
            # What netback reads from the TAP goes to the front end: offload only what it takes.
            set_offload(tap, (TUN_F_CSUM if csum else 0) | (TUN_F_TSO4 if gso4 else 0) | (TUN_F_TSO6 if gso6 else 0))
            port, port_fds = bus.bind_evtchn(dev, remote_port)
        except BaseException:
            os.close(tap)
            raise
        bus.start_worker(
            dev,
            WorkerSpec(
                label=f"d{dev.frontend_id} ({dev.name}) {config.vifname}",
                process_name=f"xl-net-{dev.frontend_id}-{dev.devid}",
                frontend_id=dev.frontend_id,
                data_path=netif_data_path,
                ports=[(port, port_fds)],
                fds={"tap": tap},
                params={
                    "tx_ring_ref": tx_ref,
                    "rx_ring_ref": rx_ref,
                    "sg": sg,
                    "gso_tcpv4": gso4,
                    "gso_tcpv6": gso6,
                    "csum": csum,
                    "rate": list(config.rate) if config.rate else None,
                    "mtu": config.mtu,
                },
            ),
        )

    def disconnect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        """The worker closed the TAP: the vif left its bridge; a front end may connect again."""

    def remove(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        dev.drvdata = None
