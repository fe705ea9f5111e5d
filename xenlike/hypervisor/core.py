"""The hypervisor: its main loop, the domains' hypercall sockets, replies, and the domain table.

One process per host. It owns the host's frame pool and every domain's memory
(the memfds), the event-channel tables and the grant maptrack; it forks domains
from the zygote and reaps them through it. Each domain talks to it over its own
inherited ``SOCK_SEQPACKET`` socket, which *is* the domain's identity: a request
on that socket is from that domain, whatever it claims.

A request ``{"op": ..., "args": {...}}`` (``xenlike.kernel.hypercall``) is looked
up in the hypercall table (``hypercall_table.py``, which lists every call and who
may make it), checked against its row and handed to its family's handler:
``event_channel.py``, ``grant_table.py``, ``domctl.py``, ``sysctl.py``,
``sched_op.py``, ``console.py``, ``version.py``, ``multicall.py``, as Xen's
``xen/common/*.c``. A refusal carries an errno name and a sentence naming the
domain and the rule.

The scheduler (``xenlike.hypervisor.sched``, chosen with ``--sched``) runs from
the main loop: its next tick is the selector's timeout.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from xenlike.hypervisor import logdirty
from xenlike.hypervisor.console import ConsoleRing
from xenlike.hypervisor.domain import Domain, FramePool, OutOfMemory, mib_to_frames
from xenlike.hypervisor.event_channel import EventChannelHost, PeerUpdate
from xenlike.hypervisor.gntalloc import GntallocAreas
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.hypervisor.hypercall import Deferred, Hypercall, Refused, Result
from xenlike.hypervisor.hypercall_table import HYPERCALLS
from xenlike.hypervisor.netif import NetifConfig, forget_domain
from xenlike.hypervisor.sched import Scheduler
from xenlike.hypervisor.trace import TraceHost
from xenlike.hypervisor.vdisk import release_vdisks
from xenlike.hypervisor.zygote import Zygote
from xenlike.kernel import trace
from xenlike.kernel.gnttab import GrantTableFrames
from xenlike.kernel.hypercall import (
    MAX_MESSAGE,
    MAX_REQUEST,
    ChannelClosed,
    Fragments,
    HypercallError,
    MessageIncomplete,
    MessageTooLarge,
    Outbox,
    recv_message,
    socketpair,
)
from xenlike.kernel.machine import Machine
from xenlike.kernel.memory import GuestMemory
from xenlike.kernel.proc import FdBudget
from xenlike.public.event_channel import DEFAULT_MAX_EVENT_CHANNELS, VIRQ, EvtchnError
from xenlike.public.grant_table import DEFAULT_MAX_GRANT_FRAMES, GNTST, GrantError
from xenlike.public.start_info import GNTTAB_PFN, reserved_frames
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import DOMID_MAX, ShutdownReason

__all__ = ["Hypervisor", "WorkerChannel"]

DOM0_NAME = "Domain-0"
STOP_TIMEOUT_S = 5.0  # how long a stopping host waits for its domains to be reaped
DOMAIN_FDS = 8
"""File descriptors one domU costs the hypervisor, counted on a running host: its
hypercall socket (1); its memfd (1), which the hypervisor's own mapping of it does
not duplicate (``SharedMapping``); its trace buffer's memfd (1), mapped the same
way; the eventfds of its xenstore and console ports and of dom0's ends of them (4,
one per port); the pidfd the scheduler signals its vCPU 0 through (1; its
``/proc/PID/stat`` is opened per sample, not held). While it is spawned, the
domain's end of the socketpair is held too (1, released once it runs, within the
budget's reserve)."""
SMALLEST_GUEST_MIB = 16  # what ``max_new_domains`` counts free memory in: the smallest guest worth making
# What may wait on a domU's hypercall socket, unsent, before the domain is crashed for not
# reading it: one reply of the largest size and room for events. Its requests are not read
# while anything waits, so only events other domains cause add to it meanwhile.
DOMU_OUTBOX_BYTES = MAX_MESSAGE + (1 << 20)
MIN_FREE_FRAMES = 8  # a domain has more frames than this beyond its start info, rings and grant table

log = logging.getLogger("xenlike.hypervisor")


def _peer_gone(exc: OSError) -> bool:
    """Whether a send failed because the other end is gone (its exit is handled through the zygote)."""
    return exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF)


class _Call(NamedTuple):
    """The hypercall being handled: the socket it came on and its id, for a reply sent later."""

    sock: socket.socket
    id: Any


@dataclass
class WorkerChannel:
    """A back-end worker's hypercall socket (``domctl open_channel``) and the grants mapped through it."""

    id: int
    sock: socket.socket
    owner: Domain  # dom0: calls on the channel are its calls
    grant_handles: set[int] = field(default_factory=set)
    trace_buffer: int | None = None  # the worker's trace buffer (TraceHost's id)


class Hypervisor:
    """The host: call :meth:`boot` to start dom0, then :meth:`run` until it stops."""

    def __init__(
        self,
        run_dir: Path,
        memory_mib: int,
        pcpus: list[int],
        zygote: Zygote,
        scheduler: Scheduler | None = None,
        *,
        machine: Machine | None = None,
        commandline: str = "",
    ) -> None:
        self.run_dir = run_dir
        self.machine = machine or Machine.read()  # measured once, as Xen measures its machine at boot
        self.commandline = commandline  # XENVER_commandline
        self.jail: dict[str, Any] = {"enabled": False, "mechanisms": []}  # how domUs are jailed (jail_report)
        self.page_sharing = False  # domUs' pages mergeable by ksmd (--page-sharing)
        self.pcpus = pcpus
        self.zygote = zygote
        if scheduler is None:
            from xenlike.hypervisor.sched.credit import CreditScheduler

            scheduler = CreditScheduler(pcpus)
        self.scheduler = scheduler
        self._sched_failures = 0
        self.pool = FramePool(mib_to_frames(memory_mib), machine_mib=self.machine.memory_mib)
        self.domains: dict[int, Domain] = {}
        self.names: dict[str, Domain] = {}  # the domains by name, so a create or rename walks none of them
        self.netifs: dict[int, dict[int, NetifConfig]] = {}  # each domain's vifs, by devid (netif.py)
        self.fd_budget = FdBudget(DOMAIN_FDS, "the hypervisor")
        self.evtchn = EventChannelHost()
        self.gntalloc = GntallocAreas(self.pool, self.evtchn.send)  # pages domUs allocate to share (gntalloc.py)
        self.grants = GrantMapper(self._grant_table, self.gntalloc.owns, self.mark_dirty)
        self._gnttabs: dict[int, GrantTableFrames] = {}
        self._by_pid: dict[int, Domain] = {}
        self._by_sock: dict[int, Domain] = {}
        self._fragments: dict[int, Fragments] = {}  # a request arriving in fragments, per channel
        self._waiting_destroy: dict[int, list[_Call]] = {}
        self._changed_domains: set[int] = set()  # since dom0 last asked (get_changed_domains)
        self._next_domid = 1
        self._stopping = False
        self._stop_deadline = 0.0
        self._ends_itself: int | None = None  # the domain that asked for the host shutdown and exits on its own
        self._current_call: _Call | None = None
        self.started = time.time()
        self.console = ConsoleRing()
        log.addHandler(self.console)
        self.selector = selectors.DefaultSelector()
        self.selector.register(zygote.sock, selectors.EVENT_READ, self._on_zygote)
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signal)
        self._hypercalls = {(row.op, row.cmd): row for row in HYPERCALLS}
        # domctl and sysctl: ops that name a command. An unknown command of a family
        # whose every command is privileged is refused as privileged to a domU.
        self._families: dict[str, bool] = {}
        for row in HYPERCALLS:
            if row.cmd is not None:
                self._families[row.op] = self._families.get(row.op, True) and row.privileged
        self._worker_channels: dict[int, WorkerChannel] = {}  # by socket fd
        self._next_channel_id = 0
        self._pending_close: list[socket.socket] = []
        self._outboxes: dict[int, Outbox] = {}  # by socket fd: what a domain or worker has not read yet
        self.trace = TraceHost(run_dir, self.selector, self._domain_process_groups)

    # ------------------------------------------------------------------------------
    # Start-up, main loop, stop.

    def boot(self, dom0_memory_mib: int, dom0_boot: dict) -> Domain:
        """Build and start dom0 (domid 0, ``Domain-0``)."""
        dom0 = self.new_domain(0, DOM0_NAME, dom0_memory_mib, dom0_memory_mib, 1, DEFAULT_MAX_GRANT_FRAMES)
        self.scheduler.add_domain(0, dom0.label, 1)
        pid = self.spawn(dom0, {"role": "dom0", **dom0_boot})
        self.scheduler.vcpu_up(0, 0, pid)
        log.info(
            "d0 (%s): started, pid %d; scheduler %s on pCPUs %s",
            DOM0_NAME,
            pid,
            self.scheduler.name,
            ",".join(map(str, self.pcpus)),
        )
        return dom0

    def run(self) -> None:
        """Serve hypercalls until the host is shut down and every domain is reaped."""
        while not (self._stopping and (not self.domains or time.monotonic() > self._stop_deadline)):
            due = self.scheduler.next_tick()
            timeout = 0.5 if due is None else min(0.5, max(0.0, (due - time.monotonic_ns()) / 1e9))
            for key, _ in self.selector.select(timeout=timeout):
                key.data(key.fileobj)
            if self.zygote.pending_events:  # exits a spawn read off the socket before its reply
                self._on_zygote(self.zygote.sock)
            if due is not None and time.monotonic_ns() >= due:
                self._sched_tick()
        log.info("host stopped")

    def _sched_tick(self) -> None:
        try:
            self.scheduler.tick()
        except Exception:
            # A scheduler bug must not take every domain down with the hypervisor.
            self._sched_failures += 1
            if self._sched_failures <= 3:
                log.exception("scheduler %s: tick failed", self.scheduler.name)

    def stop(self, reason: str, ends_itself: Domain | None = None) -> None:
        """Shut the host down: every domain is killed and, once reaped, freed.

        ``ends_itself`` is the domain that asked for the shutdown and exits on its
        own once answered (dom0, through ``host_shutdown``, as Xen's hardware
        domain shutting down halts the machine): it is not killed, and its exit is
        logged as a stop, not a death. Should it still run when STOP_TIMEOUT_S
        runs out, :meth:`close` kills it.
        """
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + STOP_TIMEOUT_S
        self._ends_itself = ends_itself.domid if ends_itself is not None else None
        log.info("host shutting down: %s", reason)
        for domain in sorted(self.domains.values(), key=lambda d: -d.domid):
            domain.dying = True
            if domain.pid is None:
                self.finalize(domain)
            elif domain is not ends_itself:
                self.kill(domain)

    def close(self) -> None:
        """Release what is left (after :meth:`run` returned) and stop the zygote."""
        for domain in list(self.domains.values()):
            if domain.pid is not None:
                log.warning("%s: still running %gs after the host began to stop; killed", domain.label, STOP_TIMEOUT_S)
            self.kill(domain)
            self.finalize(domain)
        self.scheduler.close()
        self.trace.close()
        self.selector.close()
        self.zygote.sock.close()  # the zygote sees end of file and exits
        try:
            os.waitpid(self.zygote.pid, 0)
        except ChildProcessError:
            pass

    # ------------------------------------------------------------------------------
    # I/O handlers.

    def _on_signal(self, fd: int) -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        if signal.SIGTERM in data or signal.SIGINT in data or signal.SIGHUP in data:
            self.stop("signal")

    def _on_zygote(self, sock: socket.socket) -> None:
        for event in self.zygote.read_events():
            if event.get("event") == "exited":
                self._on_exit(event["pid"], event["status"], event.get("cpu_time", 0.0))
        if self.zygote.gone:
            self._zygote_died()

    def _zygote_died(self) -> None:
        """Every domain was the zygote's child and died with it (``PR_SET_PDEATHSIG``): the host stops.

        Nobody is left to reap the domains and report their exits, so they are
        freed here, after one more SIGKILL for any that outlived the zygote.
        """
        log.error("the zygote exited: every domain died with it; stopping the host")
        self.selector.unregister(self.zygote.sock)
        self.stop("the zygote exited")
        for domain in sorted(self.domains.values(), key=lambda d: -d.domid):
            self.kill(domain)
            self.finalize(domain)

    def _on_hypercall(self, sock: socket.socket) -> None:
        domain = self._by_sock.get(sock.fileno())
        if domain is None:
            return
        pending = self._fragments.get(sock.fileno())
        if pending is None:
            pending = self._fragments[sock.fileno()] = Fragments(MAX_REQUEST)
        try:
            message, fds = recv_message(sock, pending=pending)
        except MessageIncomplete:
            return  # the rest comes in later datagrams; nobody waits for it here
        except (ChannelClosed, ConnectionError):
            if sock.fileno() in self._worker_channels:
                self._close_worker_channel(self._worker_channels[sock.fileno()], "its process exited")
            else:
                self._drop_channel(domain)
            return
        except ValueError as exc:
            log.warning("%s: malformed hypercall refused: %s", domain.label, exc)
            return
        if not isinstance(message, dict) or not isinstance(message.get("args", {}), dict):
            log.warning("%s: malformed hypercall refused: not a request", domain.label)
            for fd in fds:
                os.close(fd)
            return
        self._dispatch(domain, sock, message, fds)

    # ------------------------------------------------------------------------------
    # Dispatch: the table's row, its checks, the handler, the reply.

    def _dispatch(self, domain: Domain, sock: socket.socket, message: dict, fds: list[int]) -> None:
        call_id = message.get("id")
        op = message.get("op")
        args = message.get("args") or {}
        self._current_call = _Call(sock, call_id)
        started = time.monotonic_ns() if trace.mask[0] & TraceClass.HYPERCALL else 0
        outcome: Any = "deferred"
        try:
            result, out_fds = self.call(self.hypercall_for(domain, op, args), domain, args, fds)
        except Deferred:
            return
        except Refused as exc:
            outcome = exc.errno
            self._reply_error(sock, call_id, exc.errno, str(exc))
        except (EvtchnError, HypercallError) as exc:
            outcome = exc.errno or errno.EINVAL
            self._reply_error(sock, call_id, outcome, exc.strerror or str(exc))
        except GrantError as exc:
            outcome = errno.EINVAL if exc.status != GNTST.permission_denied else errno.EPERM
            self._reply_error(sock, call_id, outcome, str(exc))
        except OutOfMemory as exc:
            outcome = errno.ENOMEM
            self._reply_error(sock, call_id, errno.ENOMEM, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            outcome = errno.EINVAL
            self._reply_error(sock, call_id, errno.EINVAL, f"bad arguments to {op}: {exc}")
        except OSError as exc:
            # What the host itself ran out of (EMFILE, ENOMEM...) fails this call, never the hypervisor.
            outcome = exc.errno or errno.EIO
            log.warning("%s: %s failed in the hypervisor: %s", domain.label, op, exc)
            self._reply_error(sock, call_id, outcome, f"{op} failed in the hypervisor: {exc.strerror or exc}")
        except Exception as exc:
            # A handler's bug must not take every domain down with the hypervisor (as a scheduler's).
            outcome = errno.EIO
            log.exception("%s: %s raised in the hypervisor", domain.label, op)
            self._reply_error(sock, call_id, errno.EIO, f"{op} failed in the hypervisor: {type(exc).__name__}")
        else:
            outcome = None
            if started:
                outcome = result
            self._reply(sock, call_id, result, out_fds)
        finally:
            if started:
                self._trace_hypercall(domain, sock, op, args, outcome, started)
            self._current_call = None
            for fd in fds:
                os.close(fd)
            while self._pending_close:
                self._pending_close.pop().close()  # sockets handed out in this reply

    def _trace_hypercall(self, domain: Domain, sock: socket.socket, op: Any, args: dict, outcome: Any, t0: int) -> None:
        """TRC_PV_HYPERCALL: who called what, in short, how it ended and how long it took."""
        fields: dict[str, Any] = {"op": op, "args": trace.summary(args), "dur": time.monotonic_ns() - t0}
        if op == "multicall" and isinstance(args.get("calls"), list):  # its calls have records of their own
            fields["args"] = {"calls": len(args["calls"])}
            outcome = (
                {"done": len(outcome["results"])} if isinstance(outcome, dict) and "results" in outcome else outcome
            )
        if isinstance(outcome, int) and not isinstance(outcome, bool):
            fields["errno"] = errno.errorcode.get(outcome, str(outcome))
        elif outcome == "deferred":
            fields["deferred"] = True
        else:
            fields["result"] = trace.summary(outcome)
        channel = self._worker_channels.get(sock.fileno())
        if channel is not None:
            fields["channel"] = channel.id
        trace.emit_at(Event.HYPERCALL, t0, fields, domid=domain.domid)

    def _domain_process_groups(self) -> set[int]:
        """Every domain's process group (its vCPU 0's pid): who may not read the trace buffers."""
        return {domain.pid for domain in self.domains.values() if domain.pid is not None}

    def hypercall_for(self, caller: Domain, op: Any, args: dict) -> Hypercall:
        """The table's row for ``op`` (for domctl and sysctl, for ``args["cmd"]``); Refused if there is none."""
        if not isinstance(op, str):
            raise Refused(errno.ENOSYS, f"no hypercall {op!r}")
        if op in self._families:
            cmd = args.get("cmd")
            row = self._hypercalls.get((op, cmd)) if isinstance(cmd, str) else None
            if row is not None:
                return row
            if self._families[op]:
                self._check_privileged(caller, f"{op} {cmd}")
            raise Refused(errno.ENOSYS, f"no {op} {cmd!r}")
        row = self._hypercalls.get((op, None))
        if row is None:
            raise Refused(errno.ENOSYS, f"no hypercall {op!r}")
        return row

    def may_be_in_multicall(self, op: Any) -> bool:
        """Whether a multicall may hold ``op`` (a domctl's or sysctl's command is looked up once resolved)."""
        if not isinstance(op, str):
            return False
        if op in self._families:
            return True
        row = self._hypercalls.get((op, None))
        return row is not None and row.in_multicall

    def call(self, row: Hypercall, caller: Domain, args: dict, fds: list[int]) -> Result:
        """Run ``row``'s handler for ``caller`` once the table's rules allow it."""
        if row.privileged:
            self._check_privileged(caller, row.name)
        if row.target:
            dom = args.get("dom", caller.domid)
            if dom != caller.domid and not caller.privileged:
                raise Refused(errno.EPERM, f"{caller.label} may not act for d{dom}: only dom0 is privileged")
        return row.handler(self, caller, args, fds)

    @staticmethod
    def _check_privileged(caller: Domain, name: str) -> None:
        if not caller.privileged:
            log.warning("%s: refused privileged %s", caller.label, name)
            raise Refused(errno.EPERM, f"{name} is privileged: {caller.label} is not dom0")

    def reply_now(self, result: Any) -> None:
        """Answer the hypercall being handled before its handler ends (which then raises Deferred)."""
        self._reply(*self._handling(), result)

    def hold_reply(self) -> Any:
        """The hypercall being handled, to answer later with :meth:`send_reply` (its handler raises Deferred)."""
        return self._handling()

    def send_reply(self, held: Any, result: Any) -> None:
        """Answer a hypercall :meth:`hold_reply` kept."""
        self._reply(held.sock, held.id, result)

    def reply_when_destroyed(self, domain: Domain) -> None:
        """Answer the hypercall being handled once ``domain`` is freed (its handler then raises Deferred)."""
        self._waiting_destroy.setdefault(domain.domid, []).append(self._handling())

    def _handling(self) -> _Call:
        if self._current_call is None:
            raise RuntimeError("no hypercall is being handled")
        return self._current_call

    def _reply(self, sock: socket.socket, call_id: Any, result: Any, fds: Sequence[int] = ()) -> None:
        """Send a reply; one that cannot be sent becomes an error reply saying why, so no caller waits forever."""
        try:
            self._send(sock, {"id": call_id, "ok": True, "result": result}, fds)
            return
        except MessageTooLarge as exc:
            err, why = errno.EMSGSIZE, str(exc)
        except (TypeError, ValueError) as exc:  # msgpack cannot pack the result
            err, why = errno.EINVAL, f"the reply could not be encoded: {exc}"
        except OSError as exc:
            if _peer_gone(exc):
                return  # the caller died; its exit is handled through the zygote
            err, why = exc.errno or errno.EIO, f"the reply could not be sent: {exc.strerror or exc}"
        domain = self._by_sock.get(sock.fileno())
        log.warning("%s: the reply to hypercall %s was refused: %s", domain.label if domain else "?", call_id, why)
        self._reply_error(sock, call_id, err, f"the reply could not be sent: {why}")

    def _reply_error(self, sock: socket.socket, call_id: Any, err: int, message: str) -> None:
        try:
            self._send(
                sock, {"id": call_id, "ok": False, "errno": errno.errorcode.get(err, "EINVAL"), "error": message}
            )
        except OSError as exc:
            if not _peer_gone(exc):
                domain = self._by_sock.get(sock.fileno())
                log.error(
                    "%s: an error reply to hypercall %s was lost: %s", domain.label if domain else "?", call_id, exc
                )

    def send_event(self, domid: int, event: dict, fds: Sequence[int] = ()) -> None:
        """An asynchronous event for a running domain on its hypercall socket (``evtchn_new``, ``evtchn_peer``)."""
        domain = self.domains.get(domid)
        if domain is None or domain.sock is None:
            return  # not running yet: it gets its ports at spawn
        try:
            self._send(domain.sock, event, fds)
        except (OSError, ValueError) as exc:
            if not (isinstance(exc, OSError) and _peer_gone(exc)):
                log.error("%s: event %s was lost: %s", domain.label, event.get("event"), exc)

    def _send(self, sock: socket.socket, message: Any, fds: Sequence[int] = ()) -> None:
        """Send on a domain's or a worker's socket without ever blocking the loop (see :class:`Outbox`).

        What the peer has not taken waits, in order; meanwhile its requests are not
        read (a vCPU makes no second hypercall before the first returns), and once
        it is all sent they are again. A domU that leaves more than
        :data:`DOMU_OUTBOX_BYTES` unread is crashed, as Xen crashes a guest that
        breaks its side of a protocol. Raises as :func:`send_message` does.
        """
        fd = sock.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "the channel is closed")
        outbox = self._outboxes.get(fd)
        if outbox is None:
            outbox = self._outboxes[fd] = Outbox(sock)
        waiting = len(outbox)
        outbox.put(message, fds)
        if not len(outbox):
            return
        if not waiting:
            self.selector.modify(sock, selectors.EVENT_WRITE, self._on_writable)
        domain = self._by_sock.get(fd)
        if domain is not None and not domain.privileged and outbox.nbytes > DOMU_OUTBOX_BYTES:
            log.error(
                "%s: %d bytes of replies and events unread on its hypercall channel (limit %d); crashing it",
                domain.label,
                outbox.nbytes,
                DOMU_OUTBOX_BYTES,
            )
            outbox.discard()
            self.kill(domain)

    def _on_writable(self, sock: socket.socket) -> None:
        """Room on a socket something waits for: send more; once all went, read its requests again."""
        outbox = self._outboxes.get(sock.fileno())
        try:
            done = outbox is None or outbox.flush()
        except OSError:  # the peer went: reading the channel sees it and cleans up
            if outbox is not None:
                outbox.discard()
            done = True
        if done:
            self.selector.modify(sock, selectors.EVENT_READ, self._on_hypercall)

    def _forget_outbox(self, fd: int) -> None:
        outbox = self._outboxes.pop(fd, None)
        if outbox is not None:
            outbox.discard()

    def send_peer_updates(self, updates: list[PeerUpdate]) -> None:
        """Tell each domain whose port a peer bound or closed its new send fd (or none)."""
        for update in updates:
            fds = [update.send_fd] if update.send_fd is not None else []
            self.send_event(update.domid, {"event": "evtchn_peer", "port": update.port}, fds)

    # ------------------------------------------------------------------------------
    # Back-end workers' channels (domctl open_channel / close_channel).

    def open_channel(self, owner: Domain) -> tuple[int, int, int]:
        """Another hypercall socket for dom0, for a back-end worker process: its id, the fd to hand over
        and the fd of the worker's trace buffer.

        Calls on it are dom0's, as a Linux back end's kernel thread makes
        hypercalls as dom0. The grants mapped through it live in the worker's
        address space alone, so when the channel closes (the worker exited, or
        dom0 said ``close_channel``) whatever it left mapped is unmapped, as Xen's
        ``gnttab_release_mappings`` does for a mapper that goes away. The fd is
        closed once the reply carried it.
        """
        ours, theirs = socketpair()
        self._next_channel_id += 1
        buffer_id, trace_fd = self.trace.new_buffer(f"worker{self._next_channel_id}", owner.domid, "worker")
        self._worker_channels[ours.fileno()] = WorkerChannel(self._next_channel_id, ours, owner, trace_buffer=buffer_id)
        self._by_sock[ours.fileno()] = owner
        self.selector.register(ours, selectors.EVENT_READ, self._on_hypercall)
        self._pending_close.append(theirs)
        return self._next_channel_id, theirs.fileno(), trace_fd

    def close_channel(self, channel_id: Any) -> None:
        """dom0 is done with a worker's channel (the worker is gone): close it now.

        Synchronous, unlike noticing the worker's exit, so dom0 can tell the front
        end its device is closed knowing that nothing of it is mapped any more.
        An id already closed is no error: the exit may have been noticed first.
        """
        for channel in list(self._worker_channels.values()):
            if channel.id == channel_id:
                self._close_worker_channel(channel, "dom0 closed it")

    def calling_channel(self) -> WorkerChannel | None:
        """The back-end worker channel the current hypercall came on, if it came on one."""
        call = self._current_call
        return None if call is None else self._worker_channels.get(call.sock.fileno())

    def _close_worker_channel(self, channel: WorkerChannel, why: str) -> None:
        left = [handle for handle in channel.grant_handles if self._unmap_quietly(channel.owner.domid, handle)]
        if left:
            log.warning(
                "%s: a back-end worker's channel closed (%s) with %d grant mapping(s); unmapped them",
                channel.owner.label,
                why,
                len(left),
            )
        fd = channel.sock.fileno()
        self._forget_fragments(fd)
        self._forget_outbox(fd)
        self.selector.unregister(channel.sock)
        del self._worker_channels[fd]
        self._by_sock.pop(fd, None)
        channel.sock.close()
        self.trace.release(channel.trace_buffer)

    def _unmap_quietly(self, mapper: int, handle: int) -> bool:
        """Unmap ``handle`` if it is still mapped; whether it was."""
        try:
            self.grants.unmap_grant_ref(mapper, handle)
        except GrantError:
            return False  # unmapped through another of dom0's channels
        return True

    # ------------------------------------------------------------------------------
    # The domain table.

    def domain(self, domid: Any) -> Domain:
        """The domain ``domid`` names; Refused (ESRCH) if none does."""
        domain = self.domains.get(domid) if isinstance(domid, int) else None
        if domain is None:
            raise Refused(errno.ESRCH, f"no domain with id {domid}")
        return domain

    def allocate_domid(self) -> int:
        """The next free domid, from 1 to DOMID_MAX and round again."""
        # Like Xen, ids grow and are not reused soon: a stale id never names a new domain.
        while self._next_domid in self.domains or self._next_domid == 0:
            self._next_domid = self._next_domid % DOMID_MAX + 1
        domid = self._next_domid
        self._next_domid = self._next_domid % DOMID_MAX + 1
        return domid

    def new_domain(self, domid: int, name: str, memory_mib: int, maxmem_mib: int, vcpus: int, gnttab: int) -> Domain:
        """Reserve a domain's frames and give it memory, a grant table and an event-channel table."""
        nr_frames = mib_to_frames(memory_mib)
        if nr_frames <= reserved_frames(gnttab) + MIN_FREE_FRAMES:
            raise Refused(errno.EINVAL, f"{memory_mib} MiB is too little memory for a domain")
        self.pool.reserve(nr_frames, f"domain {name!r}")
        try:
            memory = GuestMemory.create(nr_frames, f"xenlike-d{domid}-{name}")
        except BaseException:
            self.pool.release(nr_frames)
            raise
        domain = Domain(
            domid=domid,
            name=name,
            nr_frames=nr_frames,
            max_frames=max(nr_frames, mib_to_frames(maxmem_mib)),
            vcpus=vcpus,
            gnttab_frames=gnttab,
            memory=memory,
        )
        self.domains[domid] = domain
        self.names[name] = domain
        self._gnttabs[domid] = GrantTableFrames(memory, GNTTAB_PFN, gnttab)
        # A domU's ports are eventfds here: its table is bounded as libxl bounds it (max_event_channels).
        self.evtchn.add_domain(domid, DEFAULT_MAX_EVENT_CHANNELS if domid != 0 else None)
        return domain

    def spawn(self, domain: Domain, boot: dict) -> int:
        """Fork the domain's process from the zygote with its socket, memory and ports; returns its pid."""
        ours, theirs = socketpair()
        ports = self.evtchn.port_fds(domain.domid)
        fds = [theirs.fileno(), domain.memory.fd]
        port_table = []
        for port in ports:
            port_table.append([port.port, len(fds), len(fds) + 1 if port.send_fd is not None else None])
            fds.append(port.recv_fd)
            if port.send_fd is not None:
                fds.append(port.send_fd)
        domain.trace_buffer, trace_fd = self.trace.new_buffer(
            domain.name, domain.domid, "dom0" if domain.domid == 0 else "domu"
        )
        fds.append(trace_fd)
        boot = {
            **boot,
            "trace": len(fds) - 1,
            "domid": domain.domid,
            "name": domain.name,
            "uuid": domain.uuid,
            "nr_frames": domain.nr_frames,
            "vcpus": domain.vcpus,
            "ports": port_table,
        }
        pid = self.zygote.spawn(boot, fds)
        theirs.close()
        domain.pid = pid
        domain.sock = ours
        domain.started_mono = time.monotonic()
        self._by_pid[pid] = domain
        self._by_sock[ours.fileno()] = domain
        self.selector.register(ours, selectors.EVENT_READ, self._on_hypercall)
        return pid

    def kill(self, domain: Domain) -> None:
        """SIGKILL a domain's process group (its exit arrives through the zygote)."""
        if domain.pid is None:
            return
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.killpg(domain.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _drop_channel(self, domain: Domain) -> None:
        if domain.sock is None:
            return
        self.selector.unregister(domain.sock)
        self._forget_fragments(domain.sock.fileno())
        self._forget_outbox(domain.sock.fileno())
        self._by_sock.pop(domain.sock.fileno(), None)
        domain.sock.close()
        domain.sock = None

    def _forget_fragments(self, fd: int) -> None:
        pending = self._fragments.pop(fd, None)
        if pending is not None:
            pending.discard()

    def _on_exit(self, pid: int, status: int, cpu_time: float) -> None:
        domain = self._by_pid.pop(pid, None)
        if domain is None:
            return
        self._drop_channel(domain)
        self.gntalloc.domain_died(domain.domid)  # its mappings went with its process: their unmap notifications fire
        # Its vCPUs are gone: the scheduler's total (every vCPU) outlives them.
        domain.cpu_time_final = max(cpu_time, self.scheduler.domain_time(domain.domid))
        self.scheduler.remove_domain(domain.domid)
        domain.pid = None
        if os.WIFSIGNALED(status):
            how = f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        if domain.domid == self._ends_itself:
            # It asked for the host shutdown and then ended: a stop, if it ended well.
            if domain.shutdown_reason is None:
                domain.shutdown_reason = ShutdownReason.POWEROFF
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                domain.exit_note = "stopped (host shutdown)"
                log.info("%s: %s", domain.label, domain.exit_note)
            else:
                domain.exit_note = f"{how} after asking for the host shutdown"
                log.warning("%s: %s", domain.label, domain.exit_note)
        elif domain.shutdown_reason is None:
            # It ended without SCHEDOP_shutdown: to the toolstack that is a crash.
            domain.shutdown_reason = ShutdownReason.CRASH if not domain.dying else ShutdownReason.POWEROFF
            domain.exit_note = f"{how} without shutting down"
            if not domain.dying:
                log.warning("%s: crashed: %s", domain.label, domain.exit_note)
            elif domain.domid == 0:  # killed by a host stop it did not ask for (a signal to the hypervisor)
                log.info("%s: %s", domain.label, domain.exit_note)
        else:
            domain.exit_note = f"shut down ({ShutdownReason(domain.shutdown_reason).name.lower()})"
            log.info("%s: %s", domain.label, domain.exit_note)
        if domain.domid == 0:
            self.finalize(domain)
            self.stop("dom0 ended")
            return
        if domain.dying:
            self.finalize(domain)
        else:
            self._state_changed(domain.domid)

    def finalize(self, domain: Domain) -> None:
        """Free everything of a dead domain and answer whoever waited for its destruction."""
        if domain.domid not in self.domains:
            return
        for mapper, mapping in self.grants.mappings_of_granter(domain.domid):
            self.grants.unmap_grant_ref(mapper, mapping.handle)
        for mapping in self.grants.mappings_of(domain.domid):
            self.grants.unmap_grant_ref(domain.domid, mapping.handle)
        self.gntalloc.remove_domain(domain.domid)
        self.send_peer_updates(self.evtchn.remove_domain(domain.domid))
        forget_domain(self, domain.domid)
        self._gnttabs.pop(domain.domid).release()
        logdirty.release(domain)
        self.trace.release(domain.trace_buffer)
        self.trace.forget_domain(domain.domid)
        release_vdisks(domain)
        domain.memory.close()
        self.pool.release(domain.tot_frames)
        self.scheduler.remove_domain(domain.domid)
        del self.domains[domain.domid]
        if self.names.get(domain.name) is domain:
            del self.names[domain.name]
        log.info("%s: destroyed", domain.label)
        for sock, call_id in self._waiting_destroy.pop(domain.domid, []):
            self._reply(sock, call_id, {"domid": domain.domid})
        if domain.domid != 0:
            self._state_changed(domain.domid)

    def mark_dirty(self, domid: int, frame: int) -> None:
        """Frame ``frame`` of ``domid`` was written for it by others: its dirty log, if it keeps one, says so."""
        logdirty.mark_dirty(self.domains.get(domid), frame)

    def state_changed(self, domid: int) -> None:
        """A handler's note that a domain shut down (a suspend): dom0 hears of it through ``VIRQ_DOM_EXC``."""
        self._state_changed(domid)

    def _state_changed(self, domid: int) -> None:
        """A domain shut down, crashed or was destroyed: note it and raise ``VIRQ_DOM_EXC`` to dom0."""
        self._changed_domains.add(domid)
        self.evtchn.raise_virq(0, VIRQ.DOM_EXC)

    def take_changed_domains(self) -> list[int]:
        """The domids whose state changed since the last call, in order; forgets them."""
        changed, self._changed_domains = sorted(self._changed_domains), set()
        return changed

    def _grant_table(self, domid: int) -> GrantTableFrames:
        return self._gnttabs[domid]
