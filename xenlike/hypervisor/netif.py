"""A guest's network device: the ``eth<devid>`` its netfront drives, made by the platform in the guest's namespace.

In Xen a PV guest's kernel registers ``eth0`` itself when netfront probes. Here
a guest's kernel stack is the Linux network namespace its jail gave it, and the
guest holds no capability in it (it must not be able to change its address or
make devices): so the hypervisor, as the platform, makes the device on its
behalf, as a device model plugs a NIC into an HVM guest:

- ``domctl netif_plug`` (dom0): the toolstack says which vif the domain has and
  how it is set up (MAC, MTU, IPv4 address and gateway), from the vif spec; the
  hypervisor checks it and keeps it;
- ``netif_tap`` (the guest, for itself): netfront's probe asks for its vif's
  device. The first time, the hypervisor enters the guest's network namespace,
  creates the TAP ``eth<devid>`` (frames with a ``virtio_net_hdr``), gives it the
  MAC and MTU, brings it up, adds the address and the default route, lets the
  guest's workload ping and serve on low ports (:data:`GUEST_SYSCTLS`), and comes back;
  it answers with an fd of the TAP (the device goes with its last fd);
- ``domctl netif_unplug`` (dom0, after a detach): the device is deleted, whatever
  the guest still holds.

What the device is set up with is dom0's to say, never the guest's.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.kernel import netdev
from xenlike.kernel.rtnetlink import Rtnetlink, RtnetlinkError

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["NetifConfig", "forget_domain", "netif_plug", "netif_tap", "netif_unplug", "MAX_VIFS"]

log = logging.getLogger("xenlike.hypervisor")

MAX_VIFS = 16  # vifs a domain may have (eth0..; the name must fit IFNAMSIZ)
MAX_DEVID = 9999
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# The guest's namespace is its own, so what root alone may do in a host's is its workload's here:
# ping (ICMP echo sockets, for every gid) and serve on ports below 1024 (http.server on port 80).
GUEST_SYSCTLS = {"ipv4/ping_group_range": "0 2147483647", "ipv4/ip_unprivileged_port_start": "0"}


@dataclass
class NetifConfig:
    """One vif's device as dom0 plugged it; ``fd`` once the TAP exists."""

    devid: int
    mac: bytes
    mtu: int
    address: ipaddress.IPv4Interface | None
    gateway: ipaddress.IPv4Address | None
    fd: int = -1

    @property
    def name(self) -> str:
        return f"eth{self.devid}"


def _netifs(hv: Hypervisor, domid: int) -> dict[int, NetifConfig]:
    return hv.netifs.setdefault(domid, {})


def _check_plug(domain: Domain, args: dict) -> NetifConfig:
    """Every field of a plug, checked; Refused (EINVAL) naming the field."""
    devid, mac, mtu = args.get("devid"), args.get("mac"), args.get("mtu", 1500)
    if not isinstance(devid, int) or not 0 <= devid <= MAX_DEVID:
        raise Refused(errno.EINVAL, f"{domain.label}: vif devid {devid!r} is not 0..{MAX_DEVID}")
    if not isinstance(mac, str) or not _MAC.fullmatch(mac.lower()) or int(mac[:2], 16) & 1:
        raise Refused(errno.EINVAL, f"{domain.label}: vif {devid}: {mac!r} is not a unicast MAC address")
    if not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise Refused(errno.EINVAL, f"{domain.label}: vif {devid}: MTU {mtu!r} is not 68..65535")
    try:
        address = ipaddress.IPv4Interface(args["address"]) if args.get("address") else None
        gateway = ipaddress.IPv4Address(args["gateway"]) if args.get("gateway") else None
    except (ValueError, TypeError) as exc:
        raise Refused(errno.EINVAL, f"{domain.label}: vif {devid}: {exc}") from None
    if gateway is not None and (address is None or gateway not in address.network):
        raise Refused(errno.EINVAL, f"{domain.label}: vif {devid}: gateway {gateway} is not on {address}")
    return NetifConfig(devid, bytes.fromhex(mac.replace(":", "")), mtu, address, gateway)


def netif_plug(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``domctl netif_plug``: domain ``domid`` has vif ``devid`` with this MAC, MTU, address and gateway."""
    domain = hv.domain(args.get("domid"))
    if domain.domid == 0:
        raise Refused(errno.EINVAL, "dom0's network is its back-end namespace; a vif is a domU's")
    reason = _why_no_network(hv)
    if reason is not None:
        raise Refused(errno.EOPNOTSUPP, f"{domain.label} cannot have a vif: {reason}")
    config = _check_plug(domain, args)
    netifs = _netifs(hv, domain.domid)
    if config.devid in netifs:
        raise Refused(errno.EEXIST, f"{domain.label} already has vif {config.devid}")
    if len(netifs) >= MAX_VIFS:
        raise Refused(errno.ENOSPC, f"{domain.label} has {MAX_VIFS} vifs, the most a domain may have")
    netifs[config.devid] = config
    return {"devid": config.devid, "name": config.name}, []


def netif_unplug(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """``domctl netif_unplug``: vif ``devid`` goes; its device is deleted from the guest's namespace."""
    domain = hv.domain(args.get("domid"))
    devid = args.get("devid")
    config = _netifs(hv, domain.domid).pop(devid, None) if isinstance(devid, int) else None
    if config is None:
        raise Refused(errno.ENODEV, f"{domain.label} has no vif {args.get('devid')!r}")
    if config.fd >= 0:
        try:
            _delete_device(domain, config)
        except OSError as exc:
            log.warning("%s: %s: %s", domain.label, config.name, exc)
        os.close(config.fd)
    return {}, []


def netif_tap(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """The guest's own vif ``devid``: an fd of its TAP, made (and set up) the first time it is asked for."""
    devid = args.get("devid")
    config = _netifs(hv, caller.domid).get(devid) if isinstance(devid, int) else None
    if config is None:
        raise Refused(errno.ENODEV, f"dom0 plugged no vif {devid!r} into {caller.label}")
    if config.fd < 0:
        try:
            config.fd = _make_device(caller, config)
        except OSError as exc:
            raise Refused(exc.errno or errno.EIO, f"{caller.label}: {config.name}: {exc.strerror or exc}") from None
        log.info("%s: %s %s up, %s", caller.label, config.name, config.mac.hex(":"), config.address or "no address")
    reply = {"name": config.name, "mac": config.mac.hex(":"), "mtu": config.mtu}
    reply["ip"] = str(config.address) if config.address else None  # "10.88.0.3/16"
    reply["gateway"] = str(config.gateway) if config.gateway else None
    return reply, [os.dup(config.fd)]


def forget_domain(hv: Hypervisor, domid: int) -> None:
    """A destroyed domain's devices: closed (its namespace went with its process)."""
    for config in hv.netifs.pop(domid, {}).values():
        if config.fd >= 0:
            os.close(config.fd)


def _why_no_network(hv: Hypervisor) -> str | None:
    jail = hv.jail
    if not jail.get("enabled"):
        return "its guests share the host's network namespace (the host runs with --no-jail)"
    if not any(name == "namespaces" and available for name, available, _detail in jail.get("mechanisms", [])):
        return "the jail has no network namespaces on this kernel"
    return netdev.probe()


def _guest_netns(domain: Domain) -> int:
    """A pidfd of the guest's vCPU 0, refused if the guest is not in a network namespace of its own."""
    if domain.pid is None:
        raise OSError(errno.ESRCH, "the domain is not running")
    own = os.stat("/proc/thread-self/ns/net").st_ino
    if os.stat(f"/proc/{domain.pid}/ns/net").st_ino == own:
        raise OSError(errno.EPERM, "the guest shares the host's network namespace")
    return os.pidfd_open(domain.pid)


def _make_device(domain: Domain, config: NetifConfig) -> int:
    pidfd = _guest_netns(domain)
    try:
        with netdev.in_netns(pidfd):
            fd, name = netdev.open_tap(config.name)
            try:
                with Rtnetlink() as rt:
                    index = rt.link_index(name)
                    rt.set_link(index, mac=config.mac, mtu=config.mtu)
                    rt.set_link(index, up=True)
                    if config.address is not None:
                        rt.add_address(index, config.address)
                    if config.gateway is not None:
                        _add_default_route(rt, config.gateway, index)
                for key, value in GUEST_SYSCTLS.items():
                    with open(f"/proc/sys/net/{key}", "w") as sysctl:
                        sysctl.write(value)
            except BaseException:
                os.close(fd)
                raise
    finally:
        os.close(pidfd)
    return fd


def _add_default_route(rt: Rtnetlink, gateway: ipaddress.IPv4Address, index: int) -> None:
    """The default route via ``gateway``; the first device set up with a gateway keeps it."""
    try:
        rt.add_default_route(gateway, index)
    except RtnetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise


def _delete_device(domain: Domain, config: NetifConfig) -> None:
    pidfd = _guest_netns(domain)
    try:
        with netdev.in_netns(pidfd), Rtnetlink() as rt:
            rt.delete_link(rt.link_index(config.name))
    finally:
        os.close(pidfd)
