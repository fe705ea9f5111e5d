"""dom0: the privileged domain. xenstored, xenconsoled and the toolstack in one process.

Started by the hypervisor (forked from the zygote) with its hypercall socket and
memory. Its main loop polls the toolstack's zmq socket, the event-channel epoll
set (xenstore and console rings of every domU, ``VIRQ_DOM_EXC``) and the
hypercall socket's own events.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import zmq

from xenlike.kernel import trace
from xenlike.kernel.events import EventLoop
from xenlike.kernel.hypercall import HypercallClient, HypercallError
from xenlike.kernel.memory import GuestMemory
from xenlike.kernel.proc import log_to_file, raise_fd_limit
from xenlike.kernel.rundir import RunDir
from xenlike.public.event_channel import VIRQ

from .blkback import BlkbackDriver
from .builder import DomainBuilder
from .context import BackendContext, BuilderContext
from .netback import NetbackDriver
from .netback.bridge import BackendNetwork, network_support
from .netback.forward import Forwards
from .toolstack import Toolstack
from .toolstack.loop_calls import LoopCalls
from .xenbus_backend import BackendError, XenbusBackend
from .xenconsoled import Xenconsoled
from .xenstore_service import XenstoreService
from .xenstored import LocalXenstore

__all__ = ["start", "Dom0"]

log = logging.getLogger("dom0")


def start(boot: dict, fds: list[int]) -> int:
    """Entry point in the forked dom0 process."""
    run_dir = RunDir(boot["run_dir"])
    log_to_file(run_dir.log_path("dom0"))
    raise_fd_limit()  # inherited raised from the hypervisor already; dom0 holds fds for every domU too
    dom0 = Dom0(boot, fds, run_dir)
    try:
        dom0.run()
    except Exception:
        log.exception("d0 (Domain-0): fatal error")
        return 1
    finally:
        dom0.close()  # flushes the last replies before the host goes down
    if dom0.host_shutdown_requested:
        dom0.hypercall("domctl", cmd="host_shutdown")
    return 0


class Dom0:
    """dom0's services and main loop."""

    def __init__(self, boot: dict, fds: list[int], run_dir: RunDir) -> None:
        self.run_dir = run_dir
        if "trace" in boot:
            trace.attach(fds[boot["trace"]], 0)
        self.memory = GuestMemory.from_fd(fds[1], boot["nr_frames"])
        self.loop = EventLoop("d0 (Domain-0)")
        sock = socket.socket(fileno=fds[0])
        self._hypercall = HypercallClient(sock, self._on_hypervisor_event)
        self.loop.add_reader(sock.fileno(), lambda fd: self._hypercall.drain_events())
        self.context = zmq.Context()
        self.api = self.context.socket(zmq.ROUTER)
        self.api.setsockopt(zmq.LINGER, 1000)
        # A reply that cannot be queued (the client is gone, or its queue is full) fails
        # the send instead of vanishing, so the toolstack can log it.
        self.api.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.api.bind(run_dir.endpoint("toolstack"))
        self.publisher = self.context.socket(zmq.PUB)
        self.publisher.setsockopt(zmq.LINGER, 0)
        self.publisher.bind(run_dir.endpoint("console"))
        self.xenstore_service = XenstoreService(self.loop)
        self.xs = LocalXenstore(self.xenstore_service.daemon)
        self.xs.write("/local/domain/0/name", "Domain-0")
        self.xs.write("/local/domain/0/domid", "0")
        self.xs.write("/tool/xenstored/domid", "0")
        self.xenconsoled = Xenconsoled(self.loop, self.publisher, run_dir.path / "logs")
        self.backends = XenbusBackend(
            BackendContext(
                hypercall=self.hypercall,
                loop=self.loop,
                xs=self.xs,
                watcher=LocalXenstore(self.xenstore_service.daemon),
                foreign_memory_fd=self._foreign_memory_fd,
                domain_name=self._domain_name,
                log_path=run_dir.log_path("dom0"),
            )
        )
        self.backends.register(BlkbackDriver())
        self.network = self._backend_network()
        self.forwards = None
        if self.network is not None:
            self.backends.register(NetbackDriver(self.network))
            self.forwards = Forwards(self.network.netns, str(run_dir.log_path("dom0")))
        self.builder = DomainBuilder(
            BuilderContext(
                hypercall=self.hypercall,
                multicall=self.multicall,
                adopt_port=self.adopt_port,
                close_port=self.close_port,
                xs=self.xs,
                xenstore_service=self.xenstore_service,
                xenconsoled=self.xenconsoled,
                backends=self.backends,
                forwards=self.forwards,
            )
        )
        self.calls = LoopCalls()  # what the toolstack's threads (migrations) ask of this loop
        self.toolstack = Toolstack(
            calls=self.calls,
            shut_host_down=self.shut_host_down,
            api=self.api,
            hypercall=self.hypercall,
            builder=self.builder,
            xs=self.xs,
            xenstore_service=self.xenstore_service,
            xenconsoled=self.xenconsoled,
            backends=self.backends,
            run_dir=run_dir,
        )
        virq, virq_fds = self.hypercall("evtchn_bind_virq", virq=int(VIRQ.DOM_EXC))
        self.loop.bind(virq["port"], virq_fds[0], handler=lambda port: self.toolstack.on_domain_exception())
        self.running = True
        self.host_shutdown_requested = False
        signal.signal(signal.SIGTERM, self._on_sigterm)

    # -- hypercalls ----------------------------------------------------------------

    def hypercall(self, op: str, **args: Any) -> tuple[Any, list[int]]:
        return self._hypercall.call(op, **args)

    def multicall(self, calls: list[dict], undo: Callable[[list], None] | None = None) -> list[tuple[Any, list[int]]]:
        """Several hypercalls in one round trip; ``undo(results)`` runs if one fails."""
        try:
            return self._hypercall.multicall(calls)
        except HypercallError as exc:
            if undo is not None:
                undo(exc.results)
            raise

    def adopt_port(self, result: dict, fds: list[int]) -> int:
        """Install a port dom0 bound (``evtchn_bind_interdomain``'s result); the loop owns its fds."""
        self.loop.bind(result["port"], fds[0], fds[1])
        self.loop.clear_pending(result["port"])
        return result["port"]

    def close_port(self, port: int) -> None:
        try:
            self.hypercall("evtchn_close", port=port)
        except OSError:
            pass
        self.loop.unbind(port)

    def _backend_network(self) -> BackendNetwork | None:
        """The back ends' network namespace and ``xenbr0``, where the host can make them (else None, logged)."""
        missing = network_support()
        if missing is not None:
            log.info("d0 (Domain-0): no back-end network (it needs %s): domains cannot have vifs", missing)
            return None
        try:
            return BackendNetwork.create()
        except OSError as exc:
            log.error("d0 (Domain-0): no back-end network: %s", exc)
            return None

    def _foreign_memory_fd(self, domid: int) -> int:
        """A running domU's memfd, which dom0 keeps (and a back end maps through its grants)."""
        built = self.toolstack.domains.get(domid)
        if built is None:
            raise BackendError(f"domain {domid} is not running")
        return built.memory.fd

    def _domain_name(self, domid: int) -> str:
        built = self.toolstack.domains.get(domid)
        return built.name if built is not None else "?"

    def _on_hypervisor_event(self, event: dict, fds: list[int]) -> None:
        kind = event.get("event")
        if kind == "evtchn_peer" and event["port"] in self.loop.ports():
            self.loop.connect(event["port"], fds[0] if fds else None)
        else:
            for fd in fds:
                os.close(fd)

    # -- main loop -----------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.api, zmq.POLLIN)
        poller.register(self.loop.fileno(), zmq.POLLIN)
        poller.register(self.calls.fd, zmq.POLLIN)
        log.info("d0 (Domain-0): toolstack listening on %s", self.run_dir.endpoint("toolstack"))
        while self.running:
            ready = dict(poller.poll(self.toolstack.next_timeout_ms()))
            if self.loop.fileno() in ready:
                self.loop.poll(0)
            if self.api in ready:
                self.toolstack.serve_requests()
            if self.calls.fd in ready:
                self.calls.run_pending()
            self.backends.process_events()
            self.toolstack.tick()
        log.info("d0 (Domain-0): stopping")

    def shut_host_down(self) -> None:
        """End the main loop; once dom0 has stopped, the hypervisor shuts the host down."""
        self.running = False
        self.host_shutdown_requested = True

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.running = False

    def close(self) -> None:
        if self.toolstack.migration_listener is not None:
            self.toolstack.migration_listener.close()
        if self.forwards is not None:
            self.forwards.close()
        if self.network is not None:
            self.network.close()
        self.api.close()
        self.publisher.close()
        self.context.term()
