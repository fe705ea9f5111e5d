"""A domain's event channels: its upcall dispatcher (Linux's ``drivers/xen/events/``).

A port arrives from the hypervisor as an ``eventfd`` (its counter being non-zero
is the pending bit) and, once bound, the peer's eventfd as its send side
(:mod:`xenlike.hypervisor.event_channel` makes them; :mod:`xenlike.public.event_channel`
holds the ABI both sides share). A notify is one ``write()`` into the peer's eventfd.

In each domain an :class:`EventLoop` (epoll over its ports' eventfds) dispatches
upcalls to handlers. Masking a port removes it from the epoll set, so pending
builds up silently; unmasking re-adds it and a pending port is delivered at once,
as ``EVTCHNOP_unmask`` does.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from xenlike.kernel import trace
from xenlike.public.event_channel import EvtchnError
from xenlike.public.trace import FAULTS_ARMED, Event, FaultAction, TraceClass

_EVTCHN = TraceClass.EVTCHN.value


def _late_send(send_fd: int) -> None:
    try:
        os.eventfd_write(send_fd, 1)
    finally:
        os.close(send_fd)


__all__ = ["EventChannel", "EventLoop", "new_port_fd"]


def new_port_fd() -> int:
    """A fresh eventfd for one port: non-blocking, close-on-exec, not pending."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


Handler = Callable[[int], None]


@dataclass
class EventChannel:
    """A port as the domain's kernel holds it.

    ``lock`` is held while one of the port's fds is used from one thread and while
    it is closed from another: without it, a notify racing the peer's close could
    write into a closed fd, or into whatever the fd number was reused for.
    """

    port: int
    recv_fd: int
    send_fd: int | None
    handler: Handler | None
    masked: bool = False
    upcalls: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


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
        self,
        port: int,
        recv_fd: int,
        send_fd: int | None = None,
        handler: Handler | None = None,
        *,
        masked: bool = False,
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
        with channel.lock:
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
        with channel.lock:
            channel.closed = True
            os.close(channel.recv_fd)
            if channel.send_fd is not None:
                os.close(channel.send_fd)
                channel.send_fd = None

    def set_handler(self, port: int, handler: Handler | None) -> None:
        self._channel(port).handler = handler

    def channel(self, port: int) -> EventChannel:
        return self._channel(port)

    def ports(self) -> list[int]:
        return sorted(self._ports)

    def notify(self, port: int) -> None:
        """``notify_remote_via_evtchn``: set the peer pending. Dropped while unbound."""
        channel = self._ports.get(port)
        if channel is None:
            raise self._not_bound(port)
        lock = channel.lock
        lock.acquire()  # not ``with``: this is every ring's hot path, and it costs half as much
        try:
            send_fd = channel.send_fd
            if send_fd is None:
                return
            if trace.mask[0]:  # tracing or a fault in this process: one word says either
                self._notify_watched(port, send_fd)
            else:
                os.eventfd_write(send_fd, 1)
        finally:
            lock.release()

    @staticmethod
    def _notify_watched(port: int, send_fd: int) -> None:
        """A send with tracing on or faults armed: the fault may take it, the trace records it."""
        if trace.mask[0] & FAULTS_ARMED and EventLoop._injected(port, send_fd):
            return
        os.eventfd_write(send_fd, 1)
        if trace.mask[0] & _EVTCHN:
            trace.emit(Event.EVTCHN_SEND, {"port": port})

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
        channel = self._channel(port)
        with channel.lock:
            if channel.closed:
                return False
            ready, _, _ = select.select([channel.recv_fd], [], [], 0)
        return bool(ready)

    def clear_pending(self, port: int) -> bool:
        """Clear pending by hand (as a guest does for a masked port); True if it was set."""
        channel = self._channel(port)
        with channel.lock:
            return not channel.closed and self._clear(channel.recv_fd)

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
        traced = trace.mask[0] & _EVTCHN
        for fd, _events in ready:
            channel = by_fd.get(fd)
            if channel is not None:
                with channel.lock:
                    if channel.closed:  # unbound by another thread since epoll answered
                        continue
                    self._clear(fd)
                channel.upcalls += 1
                if channel.handler is not None:
                    if traced:
                        self._traced_upcall(channel, channel.handler)
                    else:
                        channel.handler(channel.port)
            else:
                callback = self._readers.get(fd)
                if callback is not None:
                    callback(fd)
        return len(ready)

    @staticmethod
    def _injected(port: int, send_fd: int) -> bool:
        """An injected fault on ``port`` (``xenlike inject evtchn-drop``/``-delay``): True if it took the send."""
        action, delay_ms = trace.fault_for(port)
        if action == FaultAction.NONE:
            return False
        if trace.mask[0] & TraceClass.FAULT:
            trace.emit(Event.FAULT, {"kind": f"evtchn-{FaultAction(action).name.lower()}", "port": port})
        if action == FaultAction.DELAY:
            # A copy of the fd: the port may be closed, and its number reused, before the timer fires.
            timer = threading.Timer(delay_ms / 1000, _late_send, (os.dup(send_fd),))
            timer.daemon = True
            timer.start()
        return True

    @staticmethod
    def _traced_upcall(channel: EventChannel, handler: Handler) -> None:
        started = time.monotonic_ns()
        try:
            handler(channel.port)
        finally:
            trace.emit_at(Event.EVTCHN_UPCALL, started, {"port": channel.port, "dur": time.monotonic_ns() - started})

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
            raise self._not_bound(port)
        return channel

    def _not_bound(self, port: int) -> EvtchnError:
        return EvtchnError(errno.EINVAL, f"{self.name}: port {port} is not bound here")
