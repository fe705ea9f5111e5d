"""Event channels (``xen/include/public/event_channel.h``, ``xen/common/event_channel.c``).

An event channel is a pair of ports in two domains; a ``send`` on one sets the
other *pending* and, unless it is masked, raises an upcall in its domain. An
event carries one bit: sends coalesce until the receiver clears pending.

In xenlike every port is an ``eventfd``: its counter being non-zero *is* the
pending bit, a read clears it, and a write sets it. The hypervisor creates the
eventfd when it allocates a port (:class:`EventChannelHost`) and hands it to the
owning domain over its hypercall socket (SCM_RIGHTS). When a domain binds to a
peer's port, each end also receives the *peer's* eventfd as its send side, so a
``send`` is one ``write()`` into the peer's eventfd: no hop through the hypervisor
on the data path, and a domain can only signal ports it was bound to.

In each domain an :class:`EventLoop` (epoll over its ports' eventfds) dispatches
upcalls to handlers. Masking a port removes it from the epoll set, so pending
builds up silently; unmasking re-adds it and a pending port is delivered at once,
as ``EVTCHNOP_unmask`` does.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable

from xenlike.public.xen import DOMID_SELF, NR_VIRQS

__all__ = [
    "EVTCHN_2L_NR_CHANNELS",
    "ChannelState",
    "VIRQ",
    "EvtchnError",
    "PortFds",
    "PeerUpdate",
    "EventChannelHost",
    "EventChannel",
    "EventLoop",
    "new_port_fd",
]

EVTCHN_2L_NR_CHANNELS = 4096  # sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64 on 64-bit

log = logging.getLogger("xenlike.kernel.events")


class ChannelState(IntEnum):
    """``EVTCHNSTAT_*`` as returned by EVTCHNOP_status."""

    CLOSED = 0
    UNBOUND = 1
    INTERDOMAIN = 2
    PIRQ = 3
    VIRQ = 4
    IPI = 5


class VIRQ(IntEnum):
    """Virtual IRQs (``xen/include/public/xen.h``)."""

    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3  # global: a domain changed state (delivered to dom0)
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13


class EvtchnError(OSError):
    """An event-channel operation refused, with the errno Xen would return."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


def new_port_fd() -> int:
    """A fresh eventfd for one port: non-blocking, close-on-exec, not pending."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


# --------------------------------------------------------------------------------
# The hypervisor's side.


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

    def free_port(self) -> int:
        # Port 0 is never used, as in Xen.
        for port in range(1, self.max_ports):
            if port not in self.ports:
                return port
        raise EvtchnError(errno.ENOSPC, f"all {self.max_ports - 1} event-channel ports are in use")


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

    def add_domain(self, domid: int) -> None:
        if domid in self._domains:
            raise EvtchnError(errno.EEXIST, f"d{domid} already has an event-channel table")
        self._domains[domid] = _DomainPorts(self.max_ports)

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

    def has_domain(self, domid: int) -> bool:
        return domid in self._domains

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
                errno.EINVAL, f"d{remote_dom} port {remote_port} accepts a binding from d{remote.remote_dom}, not d{domid}"
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
            peer_table = self._domains.get(entry.remote_dom)  # type: ignore[arg-type]
            peer = peer_table.ports.get(entry.remote_port) if peer_table else None  # type: ignore[arg-type]
            if peer is not None and peer.state == ChannelState.INTERDOMAIN and peer.remote_port == port:
                peer.state = ChannelState.UNBOUND
                peer.remote_dom = domid
                peer.remote_port = None
                updates.append(PeerUpdate(entry.remote_dom, entry.remote_port, None))  # type: ignore[arg-type]
        elif entry.state == ChannelState.VIRQ:
            table.virqs.pop(entry.virq, None)  # type: ignore[arg-type]
        del table.ports[port]
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
            peer = self._domains[entry.remote_dom].ports[entry.remote_port]  # type: ignore[index]
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
                send_fd = self._domains[entry.remote_dom].ports[entry.remote_port].fd  # type: ignore[index]
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
# The domain's side.

Handler = Callable[[int], None]


@dataclass
class EventChannel:
    """A port as the domain's kernel holds it."""

    port: int
    recv_fd: int
    send_fd: int | None
    handler: Handler | None
    masked: bool = False
    upcalls: int = 0


class EventLoop:
    """A domain kernel's upcall dispatcher: epoll over its ports and other fds.

    Ports are delivered edge-style as Xen's 2-level ABI does: an upcall clears
    pending (reads the eventfd) and then calls the port's handler with the port
    number. Other file descriptors (the hypercall socket, a zmq socket) can join
    the same loop with :meth:`add_reader`.
    """

    def __init__(self, name: str = "domain") -> None:
        self.name = name
        self._epoll = select.epoll()
        self._ports: dict[int, EventChannel] = {}
        self._by_fd: dict[int, EventChannel] = {}
        self._readers: dict[int, Callable[[int], None]] = {}

    # -- ports ---------------------------------------------------------------------

    def bind(
        self, port: int, recv_fd: int, send_fd: int | None = None, handler: Handler | None = None, *, masked: bool = False
    ) -> EventChannel:
        """Install a port whose fds arrived from the hypervisor; the loop owns them now."""
        if port in self._ports:
            raise EvtchnError(errno.EEXIST, f"{self.name}: port {port} is already bound")
        channel = EventChannel(port, recv_fd, send_fd, handler, masked)
        self._ports[port] = channel
        self._by_fd[recv_fd] = channel
        self._epoll.register(recv_fd, 0 if masked else select.EPOLLIN)
        return channel

    def connect(self, port: int, send_fd: int | None) -> None:
        """The peer bound to (``send_fd``) or closed (None) our port."""
        channel = self._channel(port)
        if channel.send_fd is not None:
            os.close(channel.send_fd)
        channel.send_fd = send_fd

    def unbind(self, port: int) -> None:
        """Forget a port and close its fds (after EVTCHNOP_close)."""
        channel = self._ports.pop(port, None)
        if channel is None:
            return
        del self._by_fd[channel.recv_fd]
        self._epoll.unregister(channel.recv_fd)
        os.close(channel.recv_fd)
        if channel.send_fd is not None:
            os.close(channel.send_fd)

    def set_handler(self, port: int, handler: Handler | None) -> None:
        self._channel(port).handler = handler

    def channel(self, port: int) -> EventChannel:
        return self._channel(port)

    def ports(self) -> list[int]:
        return sorted(self._ports)

    def notify(self, port: int) -> None:
        """``notify_remote_via_evtchn``: set the peer pending. Dropped while unbound."""
        send_fd = self._channel(port).send_fd
        if send_fd is not None:
            os.eventfd_write(send_fd, 1)

    def mask(self, port: int) -> None:
        """Stop upcalls for ``port``; events still set it pending."""
        channel = self._channel(port)
        if not channel.masked:
            channel.masked = True
            self._epoll.modify(channel.recv_fd, 0)

    def unmask(self, port: int) -> None:
        """Allow upcalls again; a pending port is delivered on the next poll."""
        channel = self._channel(port)
        if channel.masked:
            channel.masked = False
            self._epoll.modify(channel.recv_fd, select.EPOLLIN)

    def is_pending(self, port: int) -> bool:
        """Whether ``port`` has an event not yet cleared."""
        ready, _, _ = select.select([self._channel(port).recv_fd], [], [], 0)
        return bool(ready)

    def clear_pending(self, port: int) -> bool:
        """Clear pending by hand (as a guest does for a masked port); True if it was set."""
        return self._clear(self._channel(port).recv_fd)

    # -- other fds -----------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(fd)`` whenever ``fd`` is readable (level-triggered)."""
        self._readers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    # -- dispatch ------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds (None: for ever) and dispatch what is ready.

        Returns how many upcalls and reader callbacks ran.
        """
        try:
            ready = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
            return 0
        by_fd = self._by_fd
        for fd, _events in ready:
            channel = by_fd.get(fd)
            if channel is not None:
                self._clear(fd)
                channel.upcalls += 1
                if channel.handler is not None:
                    channel.handler(channel.port)
            else:
                callback = self._readers.get(fd)
                if callback is not None:
                    callback(fd)
        return len(ready)

    def fileno(self) -> int:
        """The epoll fd, so this loop can itself be polled by an outer loop."""
        return self._epoll.fileno()

    def close(self) -> None:
        """Close every port's fds and the epoll instance."""
        for port in list(self._ports):
            self.unbind(port)
        for fd in list(self._readers):
            self.remove_reader(fd)
        self._epoll.close()

    @staticmethod
    def _clear(fd: int) -> bool:
        try:
            os.read(fd, 8)
            return True
        except BlockingIOError:
            return False

    def _channel(self, port: int) -> EventChannel:
        channel = self._ports.get(port)
        if channel is None:
            raise EvtchnError(errno.EINVAL, f"{self.name}: port {port} is not bound here")
        return channel
