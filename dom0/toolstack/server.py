"""The toolstack server: xl's operations behind dom0's zmq API (libxl's place in Xen).

Clients (the ``xenlike`` CLI, benchmarks, tests) connect a DEALER socket to the
run directory's ``toolstack.sock``; :mod:`.request` gives the messages. dom0's
loop calls :meth:`Toolstack.serve_requests` when the ROUTER socket is readable,
which looks each request's operation up in :data:`OPS` and answers it.

Most operations answer at once. The others (the rows with ``defers=True``)
answer when something they wait for has happened, as libxl's asynchronous
operations do with its event machinery: a *waiter* until domains are gone
(``shutdown -w``, ``down``), checked on every ``VIRQ_DOM_EXC``, or a *poll* of a
condition dom0 checks on every turn of its loop (a device closed, the block
workers' counters arrived); each has a deadline, checked by :meth:`Toolstack.tick`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import zmq

from xenlike.kernel.rundir import RunDir
from xenlike.public import toolstack_wire
from xenlike.public.xs_wire import XsError

from ..builder import BuiltDomain, DomainBuilder
from ..faults import InjectedFaults
from ..xenbus_backend import XenbusBackend
from ..xenconsoled import Xenconsoled
from ..xenstore_service import XenstoreService
from ..xenstored import LocalXenstore
from . import (
    ops_console,
    ops_debug,
    ops_device,
    ops_domain,
    ops_inject,
    ops_memory,
    ops_migrate,
    ops_sched,
    ops_xenstore,
)
from .lifecycle import Lifecycle
from .loop_calls import LoopCalls
from .request import Request, ToolstackError

__all__ = ["Toolstack", "Op", "OPS"]

log = logging.getLogger("dom0.toolstack")

POLL_INTERVAL_MS = 10  # how often dom0's loop turns while a poll is pending


class Op(NamedTuple):
    """A row of the operation table.

    ``handler(toolstack, request)`` returns the result to reply with, or, with
    ``defers``, answers ``request`` itself, now or later.
    """

    handler: Callable[[Toolstack, Request], Any]
    defers: bool = False


# The toolstack API: every operation a client may name. Its names and message
# shapes are what xenlike/tools/toolstack_client.py and the CLI speak.
OPS: dict[str, Op] = {
    # domains (xl create, list, destroy, shutdown, ...; xl info, dmesg, uptime, top)
    "ping": Op(ops_domain.ping),
    "info": Op(ops_domain.info),
    "dmesg": Op(ops_domain.dmesg),
    "sharing": Op(ops_domain.sharing),
    "list": Op(ops_domain.list_domains),
    "uptime": Op(ops_domain.uptime),
    "top": Op(ops_domain.top, defers=True),
    "create": Op(ops_domain.create, defers=True),
    "destroy": Op(ops_domain.destroy),
    "shutdown": Op(ops_domain.shutdown, defers=True),
    "reboot": Op(ops_domain.reboot, defers=True),
    "pause": Op(ops_domain.pause),
    "unpause": Op(ops_domain.unpause),
    "rename": Op(ops_domain.rename),
    "down": Op(ops_domain.down, defers=True),
    # save, restore and migration (xl save, restore, migrate; migrate-receive is `up --listen`)
    "save": Op(ops_migrate.save, defers=True),
    "restore": Op(ops_migrate.restore, defers=True),
    "migrate": Op(ops_migrate.migrate, defers=True),
    "migrate_listen": Op(ops_migrate.migrate_listen),
    # memory (xl mem-set, mem-max)
    "mem_set": Op(ops_memory.mem_set),
    "mem_max": Op(ops_memory.mem_max),
    # scheduling (xl sched-credit, vcpu-list, vcpu-pin, vcpu-set)
    "sched_credit": Op(ops_sched.sched_credit),
    "vcpu_list": Op(ops_sched.vcpu_list),
    "vcpu_pin": Op(ops_sched.vcpu_pin),
    "vcpu_set": Op(ops_sched.vcpu_set),
    # consoles (xl console)
    "console_attach": Op(ops_console.console_attach),
    "console_input": Op(ops_console.console_input),
    # xenstore (xenstore-read, -write, -rm, -ls, -watch)
    "xenstore_read": Op(ops_xenstore.read),
    "xenstore_write": Op(ops_xenstore.write),
    "xenstore_rm": Op(ops_xenstore.rm),
    "xenstore_ls": Op(ops_xenstore.ls),
    "xenstore_watch": Op(ops_xenstore.watch),
    "xenstore_unwatch": Op(ops_xenstore.unwatch),
    # devices (xl block-attach, block-detach, block-list)
    "block_attach": Op(ops_device.block_attach),
    "block_detach": Op(ops_device.block_detach, defers=True),
    "block_list": Op(ops_device.block_list),
    # (xl network-attach, network-detach, network-list)
    "network_attach": Op(ops_device.network_attach),
    "network_detach": Op(ops_device.network_detach, defers=True),
    "network_list": Op(ops_device.network_list),
    # debugging (xl debug-keys, dump-core, sysrq, trigger)
    "debug_keys": Op(ops_debug.debug_keys),
    "dump_core": Op(ops_debug.dump_core),
    "sysrq": Op(ops_debug.sysrq),
    "trigger": Op(ops_debug.trigger),
    # fault injection (xenlike inject)
    "inject": Op(ops_inject.inject, defers=True),
    "inject_list": Op(ops_inject.inject_list),
    "inject_clear": Op(ops_inject.inject_clear),
}


@dataclass
class _Waiter:
    """A request waiting for domains to be gone (``shutdown -w``, ``down``): ``domids``, those not yet."""

    domids: set[int]
    deadline: float | None
    done: Callable[[bool], None]


@dataclass
class _Poll:
    """A request waiting for a condition dom0 checks on every turn of its loop."""

    ready: Callable[[], bool]
    deadline: float
    done: Callable[[bool], None]
    request: Request | None = None  # the request it answers, failed if ``ready`` or ``done`` raises


def _subject(request: Request) -> str:
    """The domain a request names, for dom0's log: `` for 'web'``, or nothing."""
    args = request.args
    name = args.get("domain")
    if name is None and isinstance(args.get("config"), dict):
        name = args["config"].get("name")
    return "" if name is None else f" for {str(name)!r}"


def _os_error_text(exc: OSError) -> str:
    """An OSError as one line for the client: its reason, after the file it concerns if it names one."""
    if not exc.strerror:
        return str(exc)
    return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror


class Toolstack:
    """dom0's toolstack: its API socket, its domU table, and the services its operations use.

    ``api`` is the bound ROUTER socket; ``hypercall(op, **args)`` dom0's hypercall
    channel; ``builder`` builds domains; ``xs`` is dom0's xenstore connection and
    ``xenstore_service`` the daemon behind it (for watches streamed to clients);
    ``xenconsoled`` holds the consoles; ``backends`` the back-end bus (hotplug, and
    the devices' counters); ``shut_host_down()`` ends dom0's loop and has the host
    shut down after it (``down``).
    """

    def __init__(
        self,
        *,
        shut_host_down: Callable[[], None],
        api: zmq.Socket,
        hypercall: Callable[..., tuple[Any, list[int]]],
        builder: DomainBuilder,
        xs: LocalXenstore,
        xenstore_service: XenstoreService,
        xenconsoled: Xenconsoled,
        backends: XenbusBackend,
        run_dir: RunDir,
        calls: LoopCalls | None = None,
    ) -> None:
        self.shut_host_down = shut_host_down
        self.calls = calls or LoopCalls()  # for the toolstack's threads: calls run on dom0's loop
        self.migration_listener: Any = None  # the host's listener for migrations (`up --listen`)
        self.api = api
        self.hypercall = hypercall
        self.builder = builder
        self.xs = xs
        self.xenstore_service = xenstore_service
        self.xenconsoled = xenconsoled
        self.backends = backends
        self.run_dir = run_dir
        self.lifecycle = Lifecycle(builder, hypercall, xs)
        # The xenstore connections of clients' watches, by (identity, call id).
        self.xenstore_watches: dict[tuple[bytes, int], Any] = {}
        self._waiters: list[_Waiter] = []
        self._polls: list[_Poll] = []
        self.injected = InjectedFaults()  # xenlike inject's faults

    @property
    def domains(self) -> dict[int, BuiltDomain]:
        """The domUs this toolstack built, by domid."""
        return self.lifecycle.domains

    # -- transport -----------------------------------------------------------------

    def serve_requests(self) -> None:
        """Answer every request queued on the API socket (dom0's loop calls this when it is readable)."""
        while True:
            try:
                frames = self.api.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, payload = frames[0], frames[-1]
            try:
                message = msgpack.unpackb(payload, raw=False)
                request = Request(identity, message.get("id", 0), message["op"], message.get("args") or {}, self._send)
            except Exception:
                self._send(
                    identity, {"id": 0, "ok": False, "error": "malformed request: expected msgpack {id, op, args}"}
                )
                continue
            self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        op = OPS.get(request.op)
        try:
            if op is None:
                raise ToolstackError(f"unknown operation {request.op!r}")
            result = op.handler(self, request)
        except (ToolstackError, XsError) as exc:
            request.fail(str(exc))
        except OSError as exc:
            # The user gets the sentence (a hypercall's refusal without its place in a multicall);
            # dom0's log keeps all of it.
            log.warning("%s%s refused: %s", request.op, _subject(request), exc)
            request.fail(_os_error_text(exc))
        except Exception as exc:
            log.exception("request %s failed", request.op)
            request.fail(f"{request.op} failed: {type(exc).__name__}: {exc}")
        else:
            if not op.defers:
                request.reply(result)

    def _send(self, identity: bytes, message: dict) -> bool:
        """Send one reply or event; one that cannot be encoded becomes an error reply saying why.

        False if it was not delivered: the client went away (EHOSTUNREACH) or its queue is full.
        """
        try:
            payload = toolstack_wire.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("a reply to request %s could not be encoded: %s", message.get("id"), exc)
            payload = msgpack.packb(
                {"id": message.get("id", 0), "ok": False, "error": f"the reply could not be encoded: {exc}"},
                use_bin_type=True,
            )
        try:
            self.api.send_multipart([identity, payload], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            # With ROUTER_MANDATORY: EHOSTUNREACH, the client went away; EAGAIN, its queue is full.
            if "event" not in message:  # a stream's events say so themselves (ops_xenstore.watch)
                level = logging.INFO if exc.errno == zmq.EHOSTUNREACH else logging.WARNING
                log.log(level, "a message for request %s was not delivered: %s", message.get("id"), exc)
            return False
        return True

    # -- waiters and polls -----------------------------------------------------------

    def wait_for_domains(self, domids: set[int], timeout_s: float | None, done: Callable[[bool], None]) -> None:
        """Call ``done(True)`` once every domain of ``domids`` is settled (:meth:`Lifecycle.settled`),
        ``done(False)`` after ``timeout_s`` (None: no deadline)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # One look at every domain now; later only the domains each VIRQ_DOM_EXC says changed,
        # so a down of 2,000 guests does not list all of them on every death.
        infos = {info["domid"]: info for info in self.lifecycle.domain_infos()}
        pending = {domid for domid in domids if not self.lifecycle.settled(domid, infos.get(domid))}
        if not pending:
            done(True)
            return
        self._waiters.append(_Waiter(pending, deadline, done))

    def poll(
        self, ready: Callable[[], bool], timeout_s: float, done: Callable[[bool], None], request: Request | None = None
    ) -> None:
        """Call ``done(ready())`` on the first turn of dom0's loop where ``ready()`` holds or ``timeout_s``
        has passed; if either raises, ``request`` (the one ``done`` would answer) fails saying so."""
        self._polls.append(_Poll(ready, time.monotonic() + timeout_s, done, request))

    def on_domain_exception(self) -> None:
        """VIRQ_DOM_EXC: apply the on_* actions of the domains that changed, then answer the waiters they settle."""
        changed = self.lifecycle.on_domain_exception()
        if self._waiters:
            self._check_waiters(changed)

    def _check_waiters(self, changed: dict[int, dict | None]) -> None:
        for waiter in list(self._waiters):
            for domid in [domid for domid in changed if domid in waiter.domids]:
                if self.lifecycle.settled(domid, changed[domid]):
                    waiter.domids.discard(domid)
            if not waiter.domids:
                self._waiters.remove(waiter)
                waiter.done(True)

    # -- timers --------------------------------------------------------------------

    def next_timeout_ms(self) -> int:
        """How long dom0's loop may sleep before :meth:`tick` has work."""
        if self._polls:
            return POLL_INTERVAL_MS
        deadlines = [w.deadline for w in self._waiters if w.deadline is not None]
        if not deadlines:
            return 1000
        return max(0, int((min(deadlines) - time.monotonic()) * 1000))

    def tick(self) -> None:
        """Finish the polls that are ready or due, and fail the waiters that are due (every turn of dom0's loop)."""
        now = time.monotonic()
        for poll in list(self._polls):
            try:
                if poll.ready() or now >= poll.deadline:
                    self._polls.remove(poll)
                    poll.done(poll.ready())
            except Exception as exc:  # one operation's bug (or a guest's data it trusted) fails it, not dom0's loop
                log.exception("a pending operation failed")
                if poll in self._polls:
                    self._polls.remove(poll)
                if poll.request is not None:
                    poll.request.fail(f"dom0 failed to finish it: {exc}")
        for waiter in list(self._waiters):
            if waiter.deadline is not None and now >= waiter.deadline:
                self._waiters.remove(waiter)
                waiter.done(False)
