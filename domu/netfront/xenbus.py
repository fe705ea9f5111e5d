"""netfront's xenbus driver (Linux ``drivers/net/xen-netfront.c``: ``netfront_probe``,
``talk_to_netback``, ``setup_netfront``, ``xennet_connect``, ``netback_changed``,
``xennet_remove``).

The front-end bus (``domu.xenbus_frontend``) finds the devices and runs the
states; this driver says what a vif is:

- probe: the guest's ``eth<devid>``, a TAP device in the guest's own network
  namespace that the platform made and configured (MAC, address, route) and
  hands over with the ``netif_tap`` hypercall;
- connect (``talk_to_netback``): refuse a back end without ``feature-rx-copy``,
  read its ``feature-sg``, ``feature-gso-tcpv4``/``-tcpv6`` and
  ``feature-ipv6-csum-offload``, grant the tx and rx rings, allocate the event
  channel, make the :class:`~domu.netfront.netfront.NetfrontQueue` (which fills
  the rx ring) and publish ``tx-ring-ref``, ``rx-ring-ref``, ``event-channel``,
  ``request-rx-copy`` and the front end's ``feature-*`` (the keys of
  ``xenlike.public.netif``);
- connected (``xennet_connect``): the queue starts and the interface is in
  :attr:`NetfrontDriver.interfaces` (what the workload sees as ``ctx.net``);
- closing: I/O stops and the interface leaves ``ctx.net``; remove: the pools'
  and rings' grants are given back and the TAP is closed (``eth<devid>`` goes).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from xenlike.public import netif

from ..xenbus_frontend import FrontDevice, FrontendError, SharedRing, XenbusFrontend
from .netfront import BackendFeatures, NetfrontQueue

__all__ = ["NetfrontDriver", "NetInterface"]

log = logging.getLogger("domu.netfront")


@dataclass
class NetInterface:
    """A vif as the workload sees it (``ctx.net["eth0"]``): its name, addresses, MTU and counters."""

    name: str  # "eth0"
    mac: str
    ip: str | None
    mtu: int
    devid: int
    queue: NetfrontQueue | None = field(default=None, repr=False)

    @property
    def stats(self) -> dict[str, int]:
        """``tx_packets``, ``tx_bytes``, ``rx_packets``, ``rx_bytes``, ``*_dropped``, ``*_errors`` (a copy)."""
        return dict(self.queue.stats) if self.queue is not None else {}


@dataclass(eq=False)
class _Vif:
    """One vif's state in its driver (``struct netfront_info``): ``dev.drvdata``."""

    interface: NetInterface
    tap: int
    tx_ring: SharedRing | None = None
    rx_ring: SharedRing | None = None
    port: int | None = None
    queue: NetfrontQueue | None = None

    def on_event(self, port: int) -> None:
        queue = self.queue
        if queue is not None:
            queue.on_event(port)


class NetfrontDriver:
    """The vif front-end driver (``netfront_driver``); ``dev.drvdata`` is the device's :class:`_Vif`."""

    devicetype = netif.DEVICE_TYPE

    def __init__(self) -> None:
        self.interfaces: dict[str, NetInterface] = {}  # what ctx.net holds, by name: the connected ones
        self._lock = threading.Lock()

    def probe(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        result, fds = bus.kernel.hypercall.call("netif_tap", devid=dev.devid)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise FrontendError(f"netif_tap gave {len(fds)} file descriptors for vif {dev.devid}, not one")
        if not isinstance(result, dict) or not result.get("name"):
            os.close(fds[0])
            raise FrontendError(f"netif_tap named no device for vif {dev.devid}")
        interface = NetInterface(
            name=str(result["name"]),
            mac=str(result.get("mac", "")),
            ip=result.get("ip"),
            mtu=int(result.get("mtu", netif.DEFAULT_MTU)),
            devid=dev.devid,
        )
        dev.drvdata = _Vif(interface, fds[0])

    def connect(self, bus: XenbusFrontend, dev: FrontDevice) -> dict[str, str]:
        vif: _Vif = dev.drvdata
        if bus.read_otherend(dev, netif.FEATURE_RX_COPY) != "1":
            raise FrontendError(f"the back end does not copy into rx pages ({netif.FEATURE_RX_COPY} is not 1)")

        def feature(key: str) -> bool:
            return bus.read_otherend(dev, key) == "1"

        features = BackendFeatures(
            sg=feature(netif.FEATURE_SG),
            gso_tcpv4=feature(netif.FEATURE_GSO_TCPV4),
            gso_tcpv6=feature(netif.FEATURE_GSO_TCPV6),
            ipv6_csum=feature(netif.FEATURE_IPV6_CSUM_OFFLOAD),
        )
        vif.tx_ring = bus.setup_ring(dev, 1)
        vif.rx_ring = bus.setup_ring(dev, 1)
        vif.port = bus.alloc_evtchn(dev, vif.on_event)
        vif.queue = NetfrontQueue(
            bus.kernel,
            dev.otherend_id,
            vif.tap,
            vif.tx_ring,
            vif.rx_ring,
            vif.port,
            features,
            name=vif.interface.name,
            mtu=vif.interface.mtu,
            owner=dev.nodename,
        )
        vif.interface.queue = vif.queue
        return {
            netif.TX_RING_REF: str(vif.tx_ring.grefs[0]),
            netif.RX_RING_REF: str(vif.rx_ring.grefs[0]),
            netif.EVENT_CHANNEL: str(vif.port),
            netif.REQUEST_RX_COPY: "1",
            netif.FEATURE_RX_NOTIFY: "1",
            netif.FEATURE_SG: "1",
            netif.FEATURE_GSO_TCPV4: "1",
            netif.FEATURE_GSO_TCPV6: "1",
            netif.FEATURE_IPV6_CSUM_OFFLOAD: "1",
            netif.FEATURE_NO_CSUM_OFFLOAD: "0",
        }

    def connected(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        vif: _Vif = dev.drvdata
        if vif.queue is None:
            raise FrontendError(f"vif {dev.devid} connected before its rings were set up")
        vif.queue.start()
        with self._lock:
            self.interfaces[vif.interface.name] = vif.interface
        # The guest's log lines carry its domain already (the kernel's logging format).
        log.info("%s: up, %s, mtu %d", vif.interface.name, vif.interface.mac, vif.interface.mtu)

    def closing(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        vif: _Vif = dev.drvdata
        if vif.queue is not None:
            vif.queue.stop()
        with self._lock:
            if self.interfaces.get(vif.interface.name) is vif.interface:
                del self.interfaces[vif.interface.name]

    def suspend(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        """For a suspend (``netfront_suspend``): no new frames, and every one on the tx ring answered.

        Only the vif's MAC and address come back with the guest: its TCP/IP stack is
        Linux's, outside the guest's memory, so connections open at the suspend do not.
        """
        vif: _Vif = dev.drvdata
        if vif.queue is not None:
            vif.queue.quiesce(bus.timeout)

    def resume(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        """The suspend was cancelled or the image saved with the guest kept running: frames flow again."""
        vif: _Vif = dev.drvdata
        if vif.queue is not None:
            vif.queue.unquiesce()

    def remove(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        vif: _Vif = dev.drvdata
        queue, vif.queue = vif.queue, None
        if queue is not None:
            queue.close()  # the pools' grants, and the TAP
        else:
            os.close(vif.tap)
        if vif.port is not None:
            bus.free_evtchn(dev, vif.port)
        for ring in (vif.tx_ring, vif.rx_ring):
            if ring is not None:
                bus.teardown_ring(dev, ring)
        dev.drvdata = None
        log.info("%s: detached", vif.interface.name)
