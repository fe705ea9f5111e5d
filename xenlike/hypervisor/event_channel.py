"""The hypervisor's event-channel tables (``xen/common/event_channel.c``).

Every port is an ``eventfd`` the hypervisor creates when it allocates the port
and hands to the owning domain over its hypercall socket (SCM_RIGHTS). When a
domain binds to a peer's port, each end also receives the *peer's* eventfd as
its send side, so a ``send`` is one ``write()`` into the peer's eventfd: no hop
through the hypervisor on the data path, and a domain can only signal ports it
was bound to. The domain's side is :class:`xenlike.kernel.events.EventLoop`.

:class:`EventChannelHost` is the tables; the functions at the end are the
``EVTCHNOP_*`` hypercalls (``do_event_channel_op``) that reach them.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.kernel.events import new_port_fd
from xenlike.public.event_channel import EVTCHN_2L_NR_CHANNELS, VIRQ, ChannelState, EvtchnError
from xenlike.public.xen import DOMID_SELF, NR_VIRQS

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = [
    "PortFds",
    "PeerUpdate",
    "EventChannelHost",
    "DOM0_VIRQS",
    "evtchn_alloc_unbound",
    "evtchn_bind_interdomain",
    "evtchn_bind_virq",
    "evtchn_close",
    "evtchn_status",
]


@dataclass
class _Port:
    """Xen's ``struct evtchn``: one port of one domain."""

    state: ChannelState
    fd: int  # this port's eventfd (its pending bit); the hypervisor keeps one reference
    remote_dom: int | None = None  # UNBOUND: who may bind; INTERDOMAIN: the peer
    remote_port: int | None = None
    virq: int | None = None


@dataclass(frozen=True)
class PortFds:
    """What a domain receives for a port: its eventfd and, once bound, the peer's."""

    port: int
    recv_fd: int
    send_fd: int | None = None


@dataclass(frozen=True)
class PeerUpdate:
    """A change to another domain's port that must be sent to that domain.

    ``send_fd`` set: the port is now bound and this is the peer's eventfd.
    ``send_fd`` None: the peer closed; the port is unbound again.
    """

    domid: int
    port: int
    send_fd: int | None


@dataclass
class _DomainPorts:
    max_ports: int
    ports: dict[int, _Port] = field(default_factory=dict)
    virqs: dict[int, int] = field(default_factory=dict)

    # Every port below this one is in use: the lowest free port is found from here, so
    # dom0, which binds two ports per domU, does not scan thousands on each create.
    lowest_free: int = 1

    def free_port(self) -> int:
        """The lowest port not in use (Xen's ``get_free_port``). Port 0 is never used, as in Xen."""
        for port in range(max(1, self.lowest_free), self.max_ports):
            if port not in self.ports:
                self.lowest_free = port
                return port
        raise EvtchnError(errno.ENOSPC, f"all {self.max_ports - 1} event-channel ports are in use")

    def release(self, port: int) -> None:
        del self.ports[port]
        self.lowest_free = min(self.lowest_free, port)


class EventChannelHost:
    """Every domain's event-channel table, as the hypervisor keeps it.

    Methods take the domain the operation is *for*; checking that the caller may
    act for that domain (only dom0 may act for another) is the hypercall layer's
    job. Returned fds stay owned by the host: the caller passes them on
    (SCM_RIGHTS duplicates them) and must not close them.
    """

    def __init__(self, max_ports: int = EVTCHN_2L_NR_CHANNELS) -> None:
        self.max_ports = max_ports
        self._domains: dict[int, _DomainPorts] = {}

    # -- domains ------------------------------------------------------------------

    def add_domain(self, domid: int, max_port: int | None = None) -> None:
        """A table for ``domid`` whose ports go up to ``max_port`` (Xen's ``max_evtchn_port``; default: the host's)."""
        if domid in self._domains:
            raise EvtchnError(errno.EEXIST, f"d{domid} already has an event-channel table")
        limit = self.max_ports if max_port is None else min(self.max_ports, max_port + 1)
        self._domains[domid] = _DomainPorts(limit)

    def remove_domain(self, domid: int) -> list[PeerUpdate]:
        """Close every port of a dying domain (``evtchn_destroy``); returns peer updates."""
        updates: list[PeerUpdate] = []
        table = self._domains.get(domid)
        if table is None:
            return updates
        for port in list(table.ports):
            updates.extend(self.close(domid, port))
        del self._domains[domid]
        return updates

    # -- operations ---------------------------------------------------------------

    def alloc_unbound(self, domid: int, remote_dom: int) -> PortFds:
        """``EVTCHNOP_alloc_unbound``: a port in ``domid`` that ``remote_dom`` may bind."""
        table = self._table(domid)
        if remote_dom == DOMID_SELF:
            remote_dom = domid
        port = table.free_port()
        table.ports[port] = _Port(ChannelState.UNBOUND, new_port_fd(), remote_dom=remote_dom)
        return PortFds(port, table.ports[port].fd)

    def bind_interdomain(self, domid: int, remote_dom: int, remote_port: int) -> tuple[PortFds, PeerUpdate]:
        """``EVTCHNOP_bind_interdomain``: connect a new port of ``domid`` to an unbound one.

        The remote port must be unbound and accepting ``domid``. Returns the new
        local port (with the peer's eventfd as its send side) and the update the
        peer domain must receive (our eventfd as its send side). As in Xen, the new
        local port starts pending, in case the peer signalled before the bind.
        """
        table = self._table(domid)
        if remote_dom == DOMID_SELF:
            remote_dom = domid
        remote_table = self._table(remote_dom)
        remote = remote_table.ports.get(remote_port)
        if remote is None or remote.state != ChannelState.UNBOUND:
            raise EvtchnError(errno.EINVAL, f"d{remote_dom} port {remote_port} is not an unbound port")
        if remote.remote_dom != domid:
            raise EvtchnError(
                errno.EINVAL,
                f"d{remote_dom} port {remote_port} accepts a binding from d{remote.remote_dom}, not d{domid}",
            )
        port = table.free_port()
        local = _Port(ChannelState.INTERDOMAIN, new_port_fd(), remote_dom=remote_dom, remote_port=remote_port)
        table.ports[port] = local
        remote.state = ChannelState.INTERDOMAIN
        remote.remote_dom = domid
        remote.remote_port = port
        os.eventfd_write(local.fd, 1)
        return PortFds(port, local.fd, remote.fd), PeerUpdate(remote_dom, remote_port, local.fd)

    def bind_virq(self, domid: int, virq: int) -> PortFds:
        """``EVTCHNOP_bind_virq``: a port raised by the hypervisor for ``virq``."""
        table = self._table(domid)
        if not 0 <= virq < NR_VIRQS:
            raise EvtchnError(errno.EINVAL, f"VIRQ {virq} does not exist (0..{NR_VIRQS - 1})")
        if virq in table.virqs:
            raise EvtchnError(errno.EEXIST, f"VIRQ {virq} is already bound to d{domid} port {table.virqs[virq]}")
        port = table.free_port()
        table.ports[port] = _Port(ChannelState.VIRQ, new_port_fd(), virq=virq)
        table.virqs[virq] = port
        return PortFds(port, table.ports[port].fd)

    def close(self, domid: int, port: int) -> list[PeerUpdate]:
        """``EVTCHNOP_close``: free the port; an interdomain peer goes back to unbound."""
        table = self._table(domid)
        entry = self._port(table, domid, port)
        updates: list[PeerUpdate] = []
        if entry.state == ChannelState.INTERDOMAIN:
            assert entry.remote_dom is not None and entry.remote_port is not None  # bind_interdomain set both
            peer_table = self._domains.get(entry.remote_dom)
            peer = peer_table.ports.get(entry.remote_port) if peer_table else None
            if peer is not None and peer.state == ChannelState.INTERDOMAIN and peer.remote_port == port:
                peer.state = ChannelState.UNBOUND
                peer.remote_dom = domid
                peer.remote_port = None
                updates.append(PeerUpdate(entry.remote_dom, entry.remote_port, None))
        elif entry.state == ChannelState.VIRQ:
            assert entry.virq is not None  # bind_virq sets it
            table.virqs.pop(entry.virq, None)
        table.release(port)
        os.close(entry.fd)
        return updates

    def send(self, domid: int, port: int) -> None:
        """``EVTCHNOP_send`` done by the hypervisor: set the remote end pending.

        Domains send by writing their peer's eventfd themselves; this path is for
        the hypervisor and for checking. A send on an unbound port is dropped, as
        Xen drops it.
        """
        table = self._table(domid)
        entry = self._port(table, domid, port)
        if entry.state == ChannelState.INTERDOMAIN:
            assert entry.remote_dom is not None and entry.remote_port is not None  # bind_interdomain set both
            peer = self._domains[entry.remote_dom].ports[entry.remote_port]
            os.eventfd_write(peer.fd, 1)
        elif entry.state in (ChannelState.VIRQ, ChannelState.IPI):
            os.eventfd_write(entry.fd, 1)

    def raise_virq(self, domid: int, virq: int) -> bool:
        """Set ``domid``'s port for ``virq`` pending; False if it has none bound."""
        table = self._domains.get(domid)
        if table is None or virq not in table.virqs:
            return False
        os.eventfd_write(table.ports[table.virqs[virq]].fd, 1)
        return True

    def status(self, domid: int, port: int) -> dict[str, int | None]:
        """``EVTCHNOP_status``: state, peer and virq of a port (closed if free)."""
        table = self._table(domid)
        entry = table.ports.get(port)
        if entry is None:
            if not 0 < port < table.max_ports:
                raise EvtchnError(errno.EINVAL, f"port {port} is out of range for d{domid}")
            return {"status": int(ChannelState.CLOSED), "remote_dom": None, "remote_port": None, "virq": None}
        return {
            "status": int(entry.state),
            "remote_dom": entry.remote_dom,
            "remote_port": entry.remote_port,
            "virq": entry.virq,
        }

    def port_fds(self, domid: int) -> list[PortFds]:
        """Every open port of ``domid`` with its eventfd and, if bound, the peer's.

        What a domain is handed when it starts, for the ports its builder made.
        """
        result = []
        for port, entry in sorted(self._table(domid).ports.items()):
            send_fd = None
            if entry.state == ChannelState.INTERDOMAIN:
                assert entry.remote_dom is not None and entry.remote_port is not None  # bind_interdomain set both
                send_fd = self._domains[entry.remote_dom].ports[entry.remote_port].fd
            result.append(PortFds(port, entry.fd, send_fd))
        return result

    def open_fds(self) -> int:
        """How many eventfds the host holds (one per open port)."""
        return sum(len(t.ports) for t in self._domains.values())

    def _table(self, domid: int) -> _DomainPorts:
        table = self._domains.get(domid)
        if table is None:
            raise EvtchnError(errno.ESRCH, f"no domain d{domid}")
        return table

    @staticmethod
    def _port(table: _DomainPorts, domid: int, port: int) -> _Port:
        entry = table.ports.get(port)
        if entry is None:
            raise EvtchnError(errno.EINVAL, f"d{domid} has no open port {port}")
        return entry


# --------------------------------------------------------------------------------
# The hypercalls (do_event_channel_op). ``dom``, where a call takes it, has been
# checked by the dispatcher: the caller's own unless the caller is dom0.

# The global VIRQs xenlike raises; dom0 is their handler (Xen's get_global_virq_handler).
DOM0_VIRQS = frozenset({VIRQ.DOM_EXC})


def evtchn_alloc_unbound(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """EVTCHNOP_alloc_unbound: a port of ``dom`` that ``remote_dom`` may bind; its fd goes to ``dom``."""
    dom = args.get("dom", caller.domid)
    remote = args["remote_dom"]
    hv.domain(remote)
    port = hv.evtchn.alloc_unbound(dom, remote)
    if dom == caller.domid:
        return {"port": port.port}, [port.recv_fd]
    hv.send_event(dom, {"event": "evtchn_new", "port": port.port}, [port.recv_fd])
    return {"port": port.port}, []


def evtchn_bind_interdomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """EVTCHNOP_bind_interdomain: a new port of the caller's, bound to an unbound port of ``remote_dom``."""
    local, update = hv.evtchn.bind_interdomain(caller.domid, args["remote_dom"], args["remote_port"])
    hv.send_peer_updates([update])
    assert local.send_fd is not None  # a port just bound carries its peer's eventfd
    return {"port": local.port}, [local.recv_fd, local.send_fd]


def evtchn_bind_virq(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """EVTCHNOP_bind_virq: a port the hypervisor raises for ``virq``; the global ones are dom0's."""
    virq = args["virq"]
    if virq in DOM0_VIRQS and not caller.privileged:
        raise Refused(errno.EPERM, f"{caller.label} may not bind VIRQ_{VIRQ(virq).name}: it is dom0's")
    port = hv.evtchn.bind_virq(caller.domid, virq)
    return {"port": port.port}, [port.recv_fd]


def evtchn_close(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """EVTCHNOP_close: free a port of ``dom``; an interdomain peer goes back to unbound."""
    hv.send_peer_updates(hv.evtchn.close(args.get("dom", caller.domid), args["port"]))
    return {}, []


def evtchn_status(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """EVTCHNOP_status: state, peer and virq of a port of ``dom``."""
    return hv.evtchn.status(args.get("dom", caller.domid), args["port"]), []
