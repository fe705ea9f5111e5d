"""dom0's back-end network: a namespace of its own, its bridges, and each vif's TAP on one (Xen's ``vif-bridge``).

In Xen, netback registers ``vif<domid>.<devid>`` in dom0 and the hotplug script
``vif-bridge`` joins it to the vif's bridge (``xenbr0`` unless ``bridge=``),
sets its MTU and brings it up. xenlike's dom0 keeps those devices out of the
host's own network: at start it makes a network namespace for its back ends (a
driver domain's), with ``xenbr0`` and dom0's address on it, and every vif's TAP
is made and joined there. Nothing connects that namespace to the host's: no
uplink, no route out. The host reaches a guest only through a forward on
127.0.0.1 (``dom0.netback.forward``).

Addresses: a vif without ``ip=`` gets one from :data:`SUBNET` by its domain's
id (:func:`default_address`), and dom0 is :data:`DOM0_ADDRESS` on ``xenbr0``,
the guests' default gateway. Other bridges are made on first use, without an
address of dom0's. br_netfilter, where the kernel has it, is switched off in
that namespace: it has no rule to apply, and each bridged frame would pay for
its hooks.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket

from xenlike.kernel import netdev
from xenlike.kernel.rtnetlink import Rtnetlink

__all__ = [
    "BRIDGE_NF_SYSCTLS",
    "BackendNetwork",
    "DEFAULT_BRIDGE",
    "DOM0_ADDRESS",
    "SUBNET",
    "default_address",
    "guest_address",
    "network_support",
]

log = logging.getLogger("dom0.netback")

DEFAULT_BRIDGE = "xenbr0"  # xl.conf's vif.default.bridge
SUBNET = ipaddress.IPv4Network("10.88.0.0/16")  # private, and never routed anywhere: there is no uplink
DOM0_ADDRESS = ipaddress.IPv4Interface("10.88.0.1/16")
# br_netfilter's per-namespace switches, on in a new namespace: each bridged frame would go
# through the IP and ARP hooks, for a namespace that has no rule to apply.
BRIDGE_NF_SYSCTLS = [f"/proc/sys/net/bridge/bridge-nf-call-{table}" for table in ("iptables", "ip6tables", "arptables")]


def default_address(domid: int) -> ipaddress.IPv4Interface:
    """A domain's address when its first vif has no ``ip=``: dom0 is .0.1, domain N is the (N+1)th host."""
    return ipaddress.IPv4Interface(f"{SUBNET.network_address + 1 + domid}/{SUBNET.prefixlen}")


def guest_address(domid: int, devid: int, ip: str | None) -> tuple[ipaddress.IPv4Interface | None, str | None]:
    """A vif's address and gateway.

    The address is ``ip=``'s first IPv4 address (with :data:`SUBNET`'s prefix inside it, /24
    outside, unless it says its own), else the domain's default for devid 0 and none for the
    others; the gateway is dom0's address when the vif's network is dom0's.
    """
    address: ipaddress.IPv4Interface | None = None
    if ip:
        first = next((a for a in ip.split() if ipaddress.ip_interface(a).version == 4), None)
        if first is not None:
            if "/" not in first:
                first += f"/{SUBNET.prefixlen}" if ipaddress.IPv4Address(first) in SUBNET else "/24"
            address = ipaddress.IPv4Interface(first)
    elif devid == 0:
        address = default_address(domid)
    gateway = str(DOM0_ADDRESS.ip) if address is not None and address.network == SUBNET else None
    return address, gateway


@functools.cache
def network_support() -> str | None:
    """None if this host can give guests vifs, else what it lacks, in one phrase (checked once)."""
    return netdev.probe()


def _no_bridge_filtering() -> None:
    """Switch br_netfilter off in the calling thread's namespace, where it is built in; a host without it has none."""
    for path in BRIDGE_NF_SYSCTLS:
        try:
            with open(path, "w") as sysctl:
                sysctl.write("0")
        except FileNotFoundError:
            return  # no br_netfilter: bridged frames meet no hook
        except OSError as exc:
            log.warning("d0 (Domain-0): %s stays on (%s): bridged frames go through netfilter", path, exc.strerror)


class BackendNetwork:
    """dom0's back-end namespace: the bridges and the vifs' TAPs in it."""

    def __init__(self, netns: int, rt: Rtnetlink) -> None:
        self.netns = netns
        self.rt = rt  # made in the namespace: it acts there from any thread
        self.bridges: dict[str, int] = {}

    @classmethod
    def create(cls) -> BackendNetwork:
        """The namespace with ``lo`` up and ``xenbr0`` carrying dom0's address; OSError names what failed."""
        netns = netdev.new_netns()
        try:
            with netdev.in_netns(netns):
                rt = Rtnetlink()
                _no_bridge_filtering()
            network = cls(netns, rt)
            rt.set_link(rt.link_index("lo"), up=True)
            rt.add_address(network.bridge(DEFAULT_BRIDGE), DOM0_ADDRESS)
        except BaseException:
            os.close(netns)
            raise
        log.info("d0 (Domain-0): back-end network: %s %s", DEFAULT_BRIDGE, DOM0_ADDRESS)
        return network

    def bridge(self, name: str) -> int:
        """The ifindex of bridge ``name``, made (and brought up) on first use."""
        index = self.bridges.get(name)
        if index is None:
            index = self.rt.link_index(name) if self.rt.has_link(name) else self.rt.add_bridge(name)
            self.rt.set_link(index, up=True)
            self.bridges[name] = index
            log.info("d0 (Domain-0): bridge %s up", name)
        return index

    def open_vif(self, name: str, bridge: str, mtu: int) -> int:
        """``vif-bridge online``: TAP ``name`` made, MTU set, joined to ``bridge`` and up; returns its fd.

        The TAP goes when its last fd does: hand this one to the vif's worker.
        """
        master = self.bridge(bridge)
        with netdev.in_netns(self.netns):
            fd, made = netdev.open_tap(name)
        try:
            index = self.rt.link_index(made)
            self.rt.set_link(index, mtu=mtu, master=master)
            self.rt.set_link(index, up=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket of the back-end namespace (it stays there whichever thread uses it)."""
        with netdev.in_netns(self.netns):
            return socket.socket(family, kind | socket.SOCK_CLOEXEC)

    def close(self) -> None:
        self.rt.close()
        os.close(self.netns)
