"""Forwards from the host to guests: dom0 listens on 127.0.0.1 and relays to a guest's port (a domain's ``ports``).

As ``docker compose``'s ``ports``: for ``"8080:80"`` dom0 listens on
``127.0.0.1:8080`` in the host's network namespace, and every connection made
there is relayed to port 80 of the domain's first vif, from dom0's back-end
namespace (the only place a guest's address means anything). This is the one
way in from the host, and it leads nowhere but to that guest's port.

The listening sockets are made by dom0 (in the host's namespace: a port in use
fails the create in one line); the relaying is done by one forwarder process
per host, forked from dom0 the first time it is needed, which enters the
back-end namespace and holds nothing else: a guest that answers with
something hostile reaches that process, never dom0. dom0 gives it a domain's
listeners (``{"add": ...}`` with their fds) and takes them back (``{"remove":
domid}``) over a socket pair; each relayed connection is two threads copying
bytes, each passing the other end an EOF when its own reaches one.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import cast

from xenlike.kernel import netdev, seccomp
from xenlike.kernel.hypercall import recv_message, send_message, socketpair
from xenlike.kernel.proc import close_fds_except, die_with_parent, log_to_file, set_process_name
from xenlike.tools.config.ports import LOOPBACK

__all__ = ["Forwards", "listen"]

log = logging.getLogger("dom0.forward")

CONNECT_TIMEOUT_S = 5.0
RELAY_CHUNK = 1 << 16


def listen(host_port: int) -> socket.socket:
    """A listening socket on ``127.0.0.1:host_port`` in dom0's (the host's) namespace; OSError says why not."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, host_port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        hint = (
            "; another program (or domain) listens there: pick another host port"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise OSError(exc.errno, f"{LOOPBACK}:{host_port}: {exc.strerror}{hint}") from None
    return sock


@dataclass
class _Forwarder:
    pid: int
    control: socket.socket
    domains: set[int] = field(default_factory=set)


class Forwards:
    """dom0's side: the forwarder process and which domains have forwards in it."""

    def __init__(self, backend_netns: int, log_path: str) -> None:
        self.backend_netns = backend_netns
        self.log_path = log_path
        self._forwarder: _Forwarder | None = None

    def add(self, domid: int, label: str, address: str, forwards: list[tuple[socket.socket, int]]) -> None:
        """Relay each listener's connections to ``(address, guest_port)``; the listeners become the forwarder's."""
        forwarder = self._forwarder or self._spawn()
        ports = [guest_port for _sock, guest_port in forwards]
        fds = [sock.fileno() for sock, _ in forwards]
        send_message(forwarder.control, {"add": domid, "label": label, "address": address, "ports": ports}, fds)
        for sock, _ in forwards:
            sock.close()
        forwarder.domains.add(domid)

    def remove(self, domid: int) -> None:
        """A domain's forwards stop: its listeners close, its relayed connections are cut."""
        forwarder = self._forwarder
        if forwarder is None or domid not in forwarder.domains:
            return
        forwarder.domains.discard(domid)
        try:
            send_message(forwarder.control, {"remove": domid})
        except OSError:
            pass

    def close(self) -> None:
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is None:
            return
        forwarder.control.close()  # the forwarder's cue to exit
        try:
            os.kill(forwarder.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(forwarder.pid, 0)

    def _spawn(self) -> _Forwarder:
        ours, theirs = socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                close_fds_except([theirs.fileno(), self.backend_netns])
                code = _forwarder_main(theirs, self.backend_netns, self.log_path)
            except BaseException:
                log.exception("d0 (Domain-0): the forwarder failed")
            finally:
                os._exit(code)
        theirs.close()
        self._forwarder = _Forwarder(pid, ours)
        log.info("d0 (Domain-0): forwarder started, pid %d", pid)
        return self._forwarder


@dataclass
class _Domain:
    label: str
    address: str
    listeners: dict[int, tuple[socket.socket, int]]  # fd -> (listener, guest port)
    connections: set[socket.socket] = field(default_factory=set)


def _forwarder_main(control: socket.socket, backend_netns: int, log_path: str) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent()
    set_process_name("xl-forward")
    log_to_file(log_path)
    netdev.setns(backend_netns)  # every connection it makes to a guest starts in the back-end namespace
    os.close(backend_netns)
    if seccomp.supported():
        seccomp.install(seccomp.guest_policy().build(), tsync=True)
    domains: dict[int, _Domain] = {}
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    lock = threading.Lock()
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                if not _control(control, selector, domains, lock):
                    return 0
            else:
                _accept(key.data, cast(socket.socket, key.fileobj), domains, lock)


def _control(
    control: socket.socket, selector: selectors.BaseSelector, domains: dict[int, _Domain], lock: threading.Lock
) -> bool:
    try:
        message, fds = recv_message(control)
    except OSError:
        return False  # dom0 is gone
    if "add" in message:
        domid = int(message["add"])
        listeners = {}
        for fd, guest_port in zip(fds, message["ports"]):
            sock = socket.socket(fileno=fd)
            listeners[fd] = (sock, int(guest_port))
            selector.register(sock, selectors.EVENT_READ, domid)
            log.info("%s: forward %s -> %s:%d", message["label"], sock.getsockname(), message["address"], guest_port)
        domains[domid] = _Domain(message["label"], message["address"], listeners)
    elif "remove" in message:
        domain = domains.pop(int(message["remove"]), None)
        if domain is not None:
            for sock, _ in domain.listeners.values():
                selector.unregister(sock)
                sock.close()
            with lock:
                for conn in list(domain.connections):
                    _cut(conn)
    return True


def _accept(domid: int, listener: socket.socket, domains: dict[int, _Domain], lock: threading.Lock) -> None:
    domain = domains.get(domid)
    if domain is None:
        return
    try:
        client, _ = listener.accept()
    except OSError:
        return
    guest_port = domain.listeners[listener.fileno()][1]
    threading.Thread(target=_connect_and_relay, args=(domain, client, guest_port, lock), daemon=True).start()


def _connect_and_relay(domain: _Domain, client: socket.socket, guest_port: int, lock: threading.Lock) -> None:
    guest = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    guest.settimeout(CONNECT_TIMEOUT_S)
    try:
        guest.connect((domain.address, guest_port))
    except OSError as exc:
        log.warning("%s: forward to %s:%d: %s", domain.label, domain.address, guest_port, exc)
        guest.close()
        client.close()
        return
    guest.settimeout(None)
    with lock:
        domain.connections.update((client, guest))
    other = threading.Thread(target=_relay, args=(guest, client), daemon=True)
    other.start()
    _relay(client, guest)
    other.join()
    with lock:
        domain.connections.difference_update((client, guest))
    client.close()
    guest.close()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until EOF, then pass the EOF on (a half-close, as TCP keeps it)."""
    buffer = bytearray(RELAY_CHUNK)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if not count:
                break
            sink.sendall(view[:count])
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        _cut(source)
        _cut(sink)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
