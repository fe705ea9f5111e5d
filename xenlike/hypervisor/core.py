"""The hypervisor: domain table, memory pool, hypercalls, event channels, grant checks.

One process per host. It owns the host's frame pool and every domain's memory
(the memfds), the event-channel tables and the grant maptrack; it forks domains
from the zygote and reaps them through it. Each domain talks to it over its own
inherited ``SOCK_SEQPACKET`` socket, which *is* the domain's identity: a request
on that socket is from that domain, whatever it claims.

Hypercalls (``{"op": ..., "args": {...}}``, see ``xenlike.kernel.hypercall``):

==========================  =============================================  =========
op                          does                                           who
==========================  =============================================  =========
evtchn_alloc_unbound        EVTCHNOP_alloc_unbound (``dom`` may be another  any (dom0
                            domain only for dom0)                          for others)
evtchn_bind_interdomain     EVTCHNOP_bind_interdomain                      any
evtchn_bind_virq            EVTCHNOP_bind_virq                             any
evtchn_close                EVTCHNOP_close                                 any
evtchn_status               EVTCHNOP_status                                any (dom0
                                                                           for others)
grant_map / grant_unmap     GNTTABOP_(un)map_grant_ref, batched             checks for
                                                                           all; maps
                                                                           dom0 only
grant_copy                  GNTTABOP_copy                                  any
sched_shutdown              SCHEDOP_shutdown                               any
vcpu_op                     VCPUOP_up: a guest brings up a secondary vCPU  any (its own
                            (a child process of its vCPU 0)                processes)
console_io                  HYPERVISOR_console_io write (to dmesg)         any
xen_version                 version and capabilities                       any
domctl                      create, start, destroy, pause, unpause, info,  dom0
                            rename, memory fd, open_channel / close_channel
                            (a hypercall socket for a back-end worker; what
                            it left mapped is unmapped when it closes), host
                            shutdown,
                            get_changed_domains (which domains changed
                            state since VIRQ_DOM_EXC was last raised)
domctl (scheduling)         sched_credit_get / sched_credit_set            dom0
                            (XEN_DOMCTL_scheduler_op: weight, cap),
                            vcpu_list (getvcpuinfo), vcpu_pin
                            (setvcpuaffinity)
sysctl                      physinfo, readconsole (dmesg), sched_info      dom0
                            (the pool's scheduler and its parameters)
multicall                   several of the above in one round trip         any
==========================  =============================================  =========

The scheduler (``xenlike.hypervisor.sched``, chosen with ``--sched``) runs from
the main loop: its next tick is the selector's timeout.

``multicall`` is Xen's ``HYPERVISOR_multicall`` with one addition: an argument
``{"$result": [i, "key"]}`` stands for ``key`` of the ``i``-th call's result, so a
builder can create a domain and bind its event channels in one round trip.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from xenlike.kernel.gnttab import GrantTableFrames
from xenlike.kernel.hypercall import ChannelClosed, HypercallError, recv_message, send_message, socketpair
from xenlike.kernel.memory import GuestMemory
from xenlike.public.event_channel import VIRQ, EvtchnError
from xenlike.public.grant_table import DEFAULT_MAX_GRANT_FRAMES, GNTST, GrantError
from xenlike.public.start_info import GNTTAB_PFN, reserved_frames
from xenlike.public.xen import DOMID_MAX, PAGE_SIZE, ShutdownReason
from xenlike.hypervisor.domain import Domain, FramePool, OutOfMemory
from xenlike.hypervisor.event_channel import EventChannelHost, PeerUpdate
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.hypervisor.sched import SchedError, Scheduler
from xenlike.hypervisor.zygote import Zygote

__all__ = ["Hypervisor", "VERSION"]

VERSION = {"major": 4, "minor": 19, "extra": "-xenlike", "caps": "xenlike-1-x86_64"}
DOM0_NAME = "Domain-0"
STOP_TIMEOUT_S = 5.0  # how long a stopping host waits for its domains to be reaped

log = logging.getLogger("xenlike.hypervisor")

Handler = Callable[[Domain, dict, list[int]], tuple[Any, list[int]]]


class _Refused(Exception):
    """A hypercall refused with an errno name and a reason for the caller."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class _DmesgHandler(logging.Handler):
    """Keeps the hypervisor's recent log lines for ``xl dmesg``."""

    def __init__(self, lines: collections.deque) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class _ExtraChannel:
    """A back-end worker's hypercall socket (``open_channel``) and the grants mapped through it."""

    id: int
    sock: socket.socket
    owner: Domain  # dom0: calls on the channel are its calls
    grant_handles: set[int] = field(default_factory=set)


class Hypervisor:
    """The host: call :meth:`boot` to start dom0, then :meth:`run` until it stops."""

    def __init__(self, run_dir: Path, memory_mib: int, pcpus: list[int], zygote: Zygote,
                 scheduler: Scheduler | None = None) -> None:
        self.run_dir = run_dir
        self.pcpus = pcpus
        self.zygote = zygote
        if scheduler is None:
            from xenlike.hypervisor.sched.credit import CreditScheduler

            scheduler = CreditScheduler(pcpus)
        self.scheduler = scheduler
        self._sched_failures = 0
        self.pool = FramePool(memory_mib * (1 << 20) // PAGE_SIZE)
        self.domains: dict[int, Domain] = {}
        self.evtchn = EventChannelHost()
        self.grants = GrantMapper(self._grant_table)
        self._gnttabs: dict[int, GrantTableFrames] = {}
        self._by_pid: dict[int, Domain] = {}
        self._by_sock: dict[int, Domain] = {}
        self._waiting_destroy: dict[int, list[tuple[socket.socket, int]]] = {}
        self._changed_domains: set[int] = set()  # since dom0 last asked (get_changed_domains)
        self._next_domid = 1
        self._stopping = False
        self._stop_deadline = 0.0
        self._current_call: tuple[socket.socket, Any] = (None, None)  # type: ignore[assignment]
        self.started = time.time()
        self.dmesg: collections.deque[str] = collections.deque(maxlen=2000)
        handler = _DmesgHandler(self.dmesg)
        handler.setFormatter(logging.Formatter("(XEN) [%(asctime)s] %(message)s"))
        log.addHandler(handler)
        self.selector = selectors.DefaultSelector()
        self.selector.register(zygote.sock, selectors.EVENT_READ, self._on_zygote)
        self._wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_signal)
        self._ops: dict[str, Handler] = {
            "evtchn_alloc_unbound": self._evtchn_alloc_unbound,
            "evtchn_bind_interdomain": self._evtchn_bind_interdomain,
            "evtchn_bind_virq": self._evtchn_bind_virq,
            "evtchn_close": self._evtchn_close,
            "evtchn_status": self._evtchn_status,
            "grant_map": self._grant_map,
            "grant_unmap": self._grant_unmap,
            "grant_copy": self._grant_copy,
            "sched_shutdown": self._sched_shutdown,
            "vcpu_op": self._vcpu_op,
            "console_io": self._console_io,
            "xen_version": lambda d, a, f: (VERSION, []),
            "domctl": self._domctl,
            "sysctl": self._sysctl,
            "multicall": self._multicall,
        }
        self._domctls: dict[str, Handler] = {
            "createdomain": self._createdomain,
            "startdomain": self._startdomain,
            "destroydomain": self._destroydomain,
            "pausedomain": self._pausedomain,
            "unpausedomain": self._unpausedomain,
            "getdomaininfo": self._getdomaininfo,
            "get_changed_domains": self._get_changed_domains,
            "rename": self._rename,
            "getmemory": self._getmemory,
            "open_channel": self._open_channel,
            "close_channel": self._close_channel,
            "host_shutdown": self._host_shutdown,
            "sched_credit_get": self._sched_credit_get,
            "sched_credit_set": self._sched_credit_set,
            "vcpu_list": self._vcpu_list,
            "vcpu_pin": self._vcpu_pin,
        }
        self._extra_channels: dict[int, _ExtraChannel] = {}  # by socket fd
        self._next_channel_id = 0
        self._pending_close: list[socket.socket] = []

    # ------------------------------------------------------------------------------
    # Start-up, main loop, stop.

    def boot(self, dom0_memory_mib: int, dom0_boot: dict) -> Domain:
        """Build and start dom0 (domid 0, ``Domain-0``)."""
        dom0 = self._new_domain(0, DOM0_NAME, dom0_memory_mib, dom0_memory_mib, 1, DEFAULT_MAX_GRANT_FRAMES)
        self.scheduler.add_domain(0, dom0.label, 1)
        self._spawn(dom0, {"role": "dom0", **dom0_boot})
        self.scheduler.vcpu_up(0, 0, dom0.pid)  # type: ignore[arg-type]
        log.info("d0 (%s): started, pid %d; scheduler %s on pCPUs %s", DOM0_NAME, dom0.pid, self.scheduler.name,
                 ",".join(map(str, self.pcpus)))
        return dom0

    def run(self) -> None:
        """Serve hypercalls until the host is shut down and every domain is reaped."""
        while not (self._stopping and (not self.domains or time.monotonic() > self._stop_deadline)):
            due = self.scheduler.next_tick()
            timeout = 0.5 if due is None else min(0.5, max(0.0, (due - time.monotonic_ns()) / 1e9))
            for key, _ in self.selector.select(timeout=timeout):
                key.data(key.fileobj)
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

    def stop(self, reason: str) -> None:
        """Shut the host down: every domain is killed and, once reaped, freed."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + STOP_TIMEOUT_S
        log.info("host shutting down: %s", reason)
        for domain in sorted(self.domains.values(), key=lambda d: -d.domid):
            domain.dying = True
            if domain.pid is None:
                self._finalize(domain)
            else:
                self._kill(domain)

    def close(self) -> None:
        """Release what is left (after :meth:`run` returned) and stop the zygote."""
        for domain in list(self.domains.values()):
            self._kill(domain)
            self._finalize(domain)
        self.scheduler.close()
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
            self._kill(domain)
            self._finalize(domain)

    def _on_hypercall(self, sock: socket.socket) -> None:
        domain = self._by_sock.get(sock.fileno())
        if domain is None:
            return
        try:
            message, fds = recv_message(sock)
        except (ChannelClosed, ConnectionError):
            if sock.fileno() in self._extra_channels:
                self._close_extra_channel(self._extra_channels[sock.fileno()], "its process exited")
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

    def _dispatch(self, domain: Domain, sock: socket.socket, message: dict, fds: list[int]) -> None:
        call_id = message.get("id")
        op = message.get("op")
        handler = self._ops.get(op)  # type: ignore[arg-type]
        self._current_call = (sock, call_id)
        try:
            if handler is None:
                raise _Refused(errno.ENOSYS, f"no hypercall {op!r}")
            result, out_fds = handler(domain, message.get("args") or {}, fds)
        except _Deferred:
            return
        except _Refused as exc:
            self._reply_error(sock, call_id, exc.errno, str(exc))
        except (EvtchnError, HypercallError) as exc:
            self._reply_error(sock, call_id, exc.errno or errno.EINVAL, exc.strerror or str(exc))
        except GrantError as exc:
            self._reply_error(sock, call_id, errno.EINVAL if exc.status != GNTST.permission_denied else errno.EPERM, str(exc))
        except OutOfMemory as exc:
            self._reply_error(sock, call_id, errno.ENOMEM, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            self._reply_error(sock, call_id, errno.EINVAL, f"bad arguments to {op}: {exc}")
        else:
            self._reply(sock, call_id, result, out_fds)
        finally:
            for fd in fds:
                os.close(fd)
            while self._pending_close:
                self._pending_close.pop().close()  # sockets handed out in this reply

    def _reply(self, sock: socket.socket, call_id: Any, result: Any, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        try:
            send_message(sock, {"id": call_id, "ok": True, "result": result}, fds)
        except OSError:
            pass  # the caller died; its exit is handled through the zygote

    def _reply_error(self, sock: socket.socket, call_id: Any, err: int, message: str) -> None:
        try:
            send_message(sock, {"id": call_id, "ok": False, "errno": errno.errorcode.get(err, "EINVAL"), "error": message})
        except OSError:
            pass

    def _send_event(self, domid: int, event: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        domain = self.domains.get(domid)
        if domain is None or domain.sock is None:
            return  # not running yet: it gets its ports at spawn
        try:
            send_message(domain.sock, event, fds)
        except OSError:
            pass

    def _send_peer_updates(self, updates: list[PeerUpdate]) -> None:
        for update in updates:
            fds = [update.send_fd] if update.send_fd is not None else []
            self._send_event(update.domid, {"event": "evtchn_peer", "port": update.port}, fds)

    # ------------------------------------------------------------------------------
    # Domains.

    def _new_domain(self, domid: int, name: str, memory_mib: int, maxmem_mib: int, vcpus: int, gnttab: int) -> Domain:
        nr_frames = memory_mib * (1 << 20) // PAGE_SIZE
        if nr_frames <= reserved_frames(gnttab) + 8:
            raise _Refused(errno.EINVAL, f"{memory_mib} MiB is too little memory for a domain")
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
            max_frames=max(nr_frames, maxmem_mib * (1 << 20) // PAGE_SIZE),
            vcpus=vcpus,
            gnttab_frames=gnttab,
            memory=memory,
        )
        self.domains[domid] = domain
        self._gnttabs[domid] = GrantTableFrames(memory, GNTTAB_PFN, gnttab)
        self.evtchn.add_domain(domid)
        return domain

    def _spawn(self, domain: Domain, boot: dict) -> None:
        ours, theirs = socketpair()
        ports = self.evtchn.port_fds(domain.domid)
        fds = [theirs.fileno(), domain.memory.fd]
        port_table = []
        for port in ports:
            port_table.append([port.port, len(fds), len(fds) + 1 if port.send_fd is not None else None])
            fds.append(port.recv_fd)
            if port.send_fd is not None:
                fds.append(port.send_fd)
        boot = {
            **boot,
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

    def _kill(self, domain: Domain) -> None:
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
        self._by_sock.pop(domain.sock.fileno(), None)
        domain.sock.close()
        domain.sock = None

    def _on_exit(self, pid: int, status: int, cpu_time: float) -> None:
        domain = self._by_pid.pop(pid, None)
        if domain is None:
            return
        self._drop_channel(domain)
        # Its vCPUs are gone: the scheduler's total (every vCPU) outlives them.
        domain.cpu_time_final = max(cpu_time, self.scheduler.domain_time(domain.domid))
        self.scheduler.remove_domain(domain.domid)
        domain.pid = None
        if os.WIFSIGNALED(status):
            how = f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        if domain.shutdown_reason is None:
            # It ended without SCHEDOP_shutdown: to the toolstack that is a crash.
            domain.shutdown_reason = ShutdownReason.CRASH if not domain.dying else ShutdownReason.POWEROFF
            domain.exit_note = f"{how} without shutting down"
            if not domain.dying:
                log.warning("%s: crashed: %s", domain.label, domain.exit_note)
        else:
            domain.exit_note = f"shut down ({ShutdownReason(domain.shutdown_reason).name.lower()})"
            log.info("%s: %s", domain.label, domain.exit_note)
        if domain.domid == 0:
            log.info("d0 (%s): %s", DOM0_NAME, domain.exit_note)
            self._finalize(domain)
            self.stop("dom0 ended")
            return
        if domain.dying:
            self._finalize(domain)
        else:
            self._state_changed(domain.domid)

    def _finalize(self, domain: Domain) -> None:
        """Free everything of a dead domain and answer whoever waited for its destruction."""
        if domain.domid not in self.domains:
            return
        for mapper, mapping in self.grants.mappings_of_granter(domain.domid):
            self.grants.unmap_grant_ref(mapper, mapping.handle)
        for mapping in self.grants.mappings_of(domain.domid):
            self.grants.unmap_grant_ref(domain.domid, mapping.handle)
        self._send_peer_updates(self.evtchn.remove_domain(domain.domid))
        self._gnttabs.pop(domain.domid).release()
        domain.memory.close()
        self.pool.release(domain.nr_frames)
        self.scheduler.remove_domain(domain.domid)
        del self.domains[domain.domid]
        log.info("%s: destroyed", domain.label)
        for sock, call_id in self._waiting_destroy.pop(domain.domid, []):
            self._reply(sock, call_id, {"domid": domain.domid})
        if domain.domid != 0:
            self._state_changed(domain.domid)

    def _state_changed(self, domid: int) -> None:
        """A domain shut down, crashed or was destroyed: note it and raise ``VIRQ_DOM_EXC`` to dom0."""
        self._changed_domains.add(domid)
        self.evtchn.raise_virq(0, VIRQ.DOM_EXC)

    def _grant_table(self, domid: int) -> GrantTableFrames:
        return self._gnttabs[domid]

    def _domain(self, domid: Any) -> Domain:
        domain = self.domains.get(domid) if isinstance(domid, int) else None
        if domain is None:
            raise _Refused(errno.ESRCH, f"no domain with id {domid}")
        return domain

    def _target(self, caller: Domain, args: dict) -> int:
        """The domain an operation is for: the caller, or (dom0 only) another."""
        dom = args.get("dom", caller.domid)
        if dom != caller.domid and not caller.privileged:
            raise _Refused(errno.EPERM, f"{caller.label} may not act for d{dom}: only dom0 is privileged")
        return dom

    # ------------------------------------------------------------------------------
    # Event channels.

    def _evtchn_alloc_unbound(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        dom = self._target(caller, args)
        remote = args["remote_dom"]
        self._domain(remote)
        port = self.evtchn.alloc_unbound(dom, remote)
        if dom == caller.domid:
            return {"port": port.port}, [port.recv_fd]
        self._send_event(dom, {"event": "evtchn_new", "port": port.port}, [port.recv_fd])
        return {"port": port.port}, []

    def _evtchn_bind_interdomain(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        local, update = self.evtchn.bind_interdomain(caller.domid, args["remote_dom"], args["remote_port"])
        self._send_peer_updates([update])
        return {"port": local.port}, [local.recv_fd, local.send_fd]  # type: ignore[list-item]

    def _evtchn_bind_virq(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        virq = args["virq"]
        if virq == VIRQ.DOM_EXC and not caller.privileged:
            raise _Refused(errno.EPERM, f"{caller.label} may not bind VIRQ_DOM_EXC: it is dom0's")
        port = self.evtchn.bind_virq(caller.domid, virq)
        return {"port": port.port}, [port.recv_fd]

    def _evtchn_close(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        dom = self._target(caller, args)
        self._send_peer_updates(self.evtchn.close(dom, args["port"]))
        return {}, []

    def _evtchn_status(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        return self.evtchn.status(self._target(caller, args), args["port"]), []

    # ------------------------------------------------------------------------------
    # Grant tables.

    def _grant_map(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        granter, readonly = args["granter"], bool(args.get("readonly", False))
        done = []
        try:
            for ref in args["refs"]:
                done.append(self.grants.map_grant_ref(caller.domid, granter, ref, readonly))
            if not caller.privileged:
                raise GrantError(
                    GNTST.permission_denied,
                    f"{caller.label} may not map foreign frames: only dom0 runs back ends; use grant_copy",
                )
        except GrantError:
            for mapping in done:
                self.grants.unmap_grant_ref(caller.domid, mapping.handle)
            raise
        handles = [m.handle for m in done]
        channel = self._calling_channel()
        if channel is not None:
            channel.grant_handles.update(handles)
        return {"frames": [m.frame for m in done], "handles": handles}, []

    def _grant_unmap(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        channel = self._calling_channel()
        for handle in args["handles"]:
            self.grants.unmap_grant_ref(caller.domid, handle)
            if channel is not None:
                channel.grant_handles.discard(handle)
        return {}, []

    def _calling_channel(self) -> "_ExtraChannel | None":
        """The back-end worker channel the current hypercall came on, if it came on one."""
        return self._extra_channels.get(self._current_call[0].fileno())

    def _grant_copy(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """GNTTABOP_copy: each op copies within one page, checked against the grants."""
        statuses = []
        for op in args["ops"]:
            try:
                length = op["len"]
                source = self._copy_side(caller, op["source"], length, write=False)
                dest = self._copy_side(caller, op["dest"], length, write=True)
                dest[:] = source
                statuses.append(GNTST.okay)
            except GrantError as exc:
                log.info("%s: grant copy refused: %s", caller.label, exc)
                statuses.append(exc.status)
        return {"status": statuses}, []

    def _copy_side(self, caller: Domain, side: dict, length: int, write: bool) -> memoryview:
        offset = side.get("offset", 0)
        if not (0 <= offset and 0 < length and offset + length <= PAGE_SIZE):
            raise GrantError(GNTST.bad_copy_arg, f"a copy of {length} bytes at offset {offset} crosses a page")
        domid = side.get("domid", caller.domid)
        if "ref" in side:
            mapping = self.grants.map_grant_ref(caller.domid, domid, side["ref"], readonly=not write)
            self.grants.unmap_grant_ref(caller.domid, mapping.handle)
            frame = mapping.frame
        else:
            if domid != caller.domid:
                raise GrantError(GNTST.permission_denied, f"{caller.label} names d{domid}'s frame without a grant")
            frame = side["gmfn"]
        memory = self.domains[domid].memory
        try:
            return memory.frame(frame)[offset : offset + length]
        except IndexError as exc:
            raise GrantError(GNTST.bad_page, str(exc)) from None

    # ------------------------------------------------------------------------------
    # Scheduling and console.

    def _sched_shutdown(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        reason = ShutdownReason(args["reason"])
        if caller.shutdown_reason is None:
            caller.shutdown_reason = reason
            log.info("%s: shutdown requested by the guest (%s)", caller.label, reason.name.lower())
        self._reply(*self._current_call, {})
        self._kill(caller)  # its vCPUs never run again
        raise _Deferred()

    def _vcpu_op(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """VCPUOP_up: the guest's process ``pid`` is its vCPU ``vcpu`` from now on.

        The process must be a child of the caller's vCPU 0 in the caller's process
        group, so a guest can only hand the scheduler its own processes.
        """
        cmd, vcpu, pid = args.get("cmd"), args["vcpu"], args["pid"]
        if cmd != "up":
            raise _Refused(errno.ENOSYS, f"no vcpu_op {cmd!r}")
        if not isinstance(vcpu, int) or not 1 <= vcpu < caller.vcpus:
            raise _Refused(errno.EINVAL, f"{caller.label} has no secondary vCPU {vcpu!r} (vcpus = {caller.vcpus})")
        try:
            with open(f"/proc/{int(pid)}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rindex(b")") + 2 :].split()
            parent, group = int(fields[1]), int(fields[2])
        except (OSError, ValueError, IndexError):
            raise _Refused(errno.ESRCH, f"{caller.label}: no process {pid!r} to bring up as vCPU {vcpu}") from None
        if parent != caller.pid or group != caller.pid:
            log.warning("%s: refused vCPU %d as pid %s: not its own child", caller.label, vcpu, pid)
            raise _Refused(errno.EPERM, f"{caller.label}: pid {pid} is not a child of its vCPU 0")
        if any(row["vcpu"] == vcpu and row["online"] for row in self.scheduler.vcpu_list(caller.domid)):
            raise _Refused(errno.EEXIST, f"{caller.label}: vCPU {vcpu} is already up")
        try:
            self.scheduler.vcpu_up(caller.domid, vcpu, int(pid))
        except (SchedError, OSError) as exc:
            raise _Refused(getattr(exc, "errno", None) or errno.EINVAL, str(exc)) from None
        log.info("%s: vCPU %d up, pid %d", caller.label, vcpu, pid)
        return {}, []

    def _multicall(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """Run calls in order; stop at the first failure and report it with the results so far."""
        results: list[Any] = []
        out_fds: list[int] = []
        for index, call in enumerate(args["calls"]):
            op = call.get("op")
            handler = None if op in _NOT_IN_MULTICALL else self._ops.get(op)
            try:
                if handler is None:
                    raise _Refused(errno.EINVAL, f"{op!r} cannot be part of a multicall")
                result, call_fds = handler(caller, _resolve(call.get("args") or {}, results), [])
            except (_Refused, EvtchnError, HypercallError, GrantError, OutOfMemory, KeyError, TypeError, ValueError) as exc:
                err = getattr(exc, "errno", None) or errno.EINVAL
                if isinstance(exc, OutOfMemory):
                    err = errno.ENOMEM
                return {"results": results, "error": {"index": index, "op": op, "errno": errno.errorcode.get(err, "EINVAL"),
                                                      "message": str(exc)}}, out_fds
            results.append({"result": result, "fds": list(range(len(out_fds), len(out_fds) + len(call_fds)))})
            out_fds.extend(call_fds)
        return {"results": results}, out_fds

    def _console_io(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        text = str(args.get("data", ""))[:1024]
        for line in text.splitlines():
            log.info("(d%d) %s", caller.domid, line)
        return {}, []

    # ------------------------------------------------------------------------------
    # Privileged operations.

    def _domctl(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        cmd = args.get("cmd")
        if not caller.privileged:
            log.warning("%s: refused privileged domctl %s", caller.label, cmd)
            raise _Refused(errno.EPERM, f"domctl {cmd} is privileged: {caller.label} is not dom0")
        handler = self._domctls.get(cmd)  # type: ignore[arg-type]
        if handler is None:
            raise _Refused(errno.ENOSYS, f"no domctl {cmd!r}")
        return handler(caller, args, fds)

    def _sysctl(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        cmd = args.get("cmd")
        if not caller.privileged:
            raise _Refused(errno.EPERM, f"sysctl {cmd} is privileged: {caller.label} is not dom0")
        if cmd == "physinfo":
            return {
                "total_frames": self.pool.total,
                "free_frames": self.pool.free,
                "nr_cpus": os.cpu_count(),
                "pcpus": self.pcpus,
                "version": VERSION,
                "started": self.started,
                "grant_mappings": self.grants.mapping_count(),
                "evtchn_ports": self.evtchn.open_fds(),
                "sched": self.scheduler.name,
            }, []
        if cmd == "sched_info":
            return self.scheduler.settings(), []
        if cmd == "readconsole":
            lines = list(self.dmesg)
            if args.get("clear"):
                self.dmesg.clear()
            return {"lines": lines}, []
        raise _Refused(errno.ENOSYS, f"no sysctl {cmd!r}")

    def _createdomain(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        name = args["name"]
        if any(d.name == name for d in self.domains.values()):
            raise _Refused(errno.EEXIST, f"a domain named {name!r} already exists")
        vcpus = int(args.get("vcpus", 1))
        weight, cap, cpus = args.get("weight", 256), args.get("cap", 0), args.get("cpus")
        try:  # refused before anything is reserved
            self.scheduler.check_weight(weight)
            self.scheduler.check_cap(f"domain {name!r}", vcpus, cap)
            if cpus is not None:
                self.scheduler.check_cpus(cpus)
        except SchedError as exc:
            raise _Refused(exc.errno, str(exc)) from None
        domid = self._allocate_domid()
        domain = self._new_domain(
            domid,
            name,
            int(args["memory_mib"]),
            int(args.get("maxmem_mib") or args["memory_mib"]),
            vcpus,
            int(args.get("max_grant_frames", DEFAULT_MAX_GRANT_FRAMES)),
        )
        if args.get("uuid"):
            domain.uuid = args["uuid"]
        self.scheduler.add_domain(domid, domain.label, vcpus, weight, cap, cpus)
        log.info("%s: created, %d MiB, %d vCPU(s)", domain.label, domain.nr_frames * PAGE_SIZE >> 20, domain.vcpus)
        return {"domid": domid, "uuid": domain.uuid, "nr_frames": domain.nr_frames}, [domain.memory.fd]

    def _allocate_domid(self) -> int:
        # Like Xen, ids grow and are not reused soon: a stale id never names a new domain.
        while self._next_domid in self.domains or self._next_domid == 0:
            self._next_domid = self._next_domid % DOMID_MAX + 1
        domid = self._next_domid
        self._next_domid = self._next_domid % DOMID_MAX + 1
        return domid

    def _startdomain(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        domain = self._domain(args["domid"])
        if domain.pid is not None or domain.shutdown_reason is not None:
            raise _Refused(errno.EINVAL, f"{domain.label} has already run")
        self._spawn(domain, {"role": "domu", **args.get("boot", {})})
        if args.get("paused"):
            domain.paused = True
            os.killpg(domain.pid, signal.SIGSTOP)  # type: ignore[arg-type]
            self.scheduler.pause(domain.domid)
        self.scheduler.vcpu_up(domain.domid, 0, domain.pid)  # type: ignore[arg-type]
        log.info("%s: started, pid %d%s", domain.label, domain.pid, " (paused)" if domain.paused else "")
        return {"pid": domain.pid}, []

    def _destroydomain(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        domain = self._domain(args["domid"])
        if domain.domid == 0:
            raise _Refused(errno.EINVAL, "dom0 cannot be destroyed; shut the host down instead")
        domain.dying = True
        if domain.pid is None:
            self._finalize(domain)
            return {"domid": domain.domid}, []
        self._waiting_destroy.setdefault(domain.domid, []).append(self._current_call)  # type: ignore[arg-type]
        self._kill(domain)
        raise _Deferred()  # answered once the process is reaped

    def _pausedomain(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        domain = self._running_domu(args["domid"])
        if not domain.paused:
            domain.paused = True
            os.killpg(domain.pid, signal.SIGSTOP)  # type: ignore[arg-type]
            self.scheduler.pause(domain.domid)  # it stays stopped whatever the scheduler decides
            log.info("%s: paused", domain.label)
        return {}, []

    def _unpausedomain(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        domain = self._running_domu(args["domid"])
        if domain.paused:
            domain.paused = False
            os.killpg(domain.pid, signal.SIGCONT)  # type: ignore[arg-type]
            self.scheduler.unpause(domain.domid)  # back to the scheduler, which may stop it again
            log.info("%s: unpaused", domain.label)
        return {}, []

    def _running_domu(self, domid: Any) -> Domain:
        domain = self._domain(domid)
        if domain.domid == 0:
            raise _Refused(errno.EINVAL, "dom0 cannot be paused")
        if domain.pid is None or domain.shutdown_reason is not None:
            raise _Refused(errno.EINVAL, f"{domain.label} is not running")
        return domain

    def _getdomaininfo(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        if "domid" in args:
            return [self._domain_info(self._domain(args["domid"]))], []
        return [self._domain_info(d) for d in sorted(self.domains.values(), key=lambda d: d.domid)], []

    def _get_changed_domains(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """The domains whose state changed since the last call, each with its info (None: destroyed).

        What libxenmanage's ``xenmanage_poll_changed_domain`` asks Xen
        (``XEN_DOMCTL_get_domain_state``): what ``VIRQ_DOM_EXC`` is about, so its
        handler need not fetch every domain's info to find out.
        """
        changed, self._changed_domains = sorted(self._changed_domains), set()
        rows = []
        for domid in changed:
            domain = self.domains.get(domid)
            rows.append({"domid": domid, "info": self._domain_info(domain) if domain is not None else None})
        return rows, []

    def _domain_info(self, domain: Domain) -> dict:
        """``getdomaininfo`` of one domain; CPU time and run state as the scheduler accounted them."""
        scheduled = domain.pid is not None and domain.shutdown_reason is None and domain.domid in self.scheduler.domains
        return domain.info(self.scheduler.domain_info(domain.domid) if scheduled else None)

    def _rename(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        domain = self._domain(args["domid"])
        new = args["name"]
        if any(d.name == new and d is not domain for d in self.domains.values()):
            raise _Refused(errno.EEXIST, f"a domain named {new!r} already exists")
        log.info("%s: renamed to %s", domain.label, new)
        domain.name = new
        if domain.domid in self.scheduler.domains:
            self.scheduler.domains[domain.domid].label = domain.label
        return {}, []

    def _getmemory(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        domain = self._domain(args["domid"])
        return {"nr_frames": domain.nr_frames}, [domain.memory.fd]

    def _open_channel(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """Another hypercall socket for dom0, for a back-end worker process; returns its id.

        Calls on it are dom0's, as a Linux back end's kernel thread makes
        hypercalls as dom0. The grants mapped through it live in the worker's
        address space alone, so when the channel closes (the worker exited, or
        dom0 said ``close_channel``) whatever it left mapped is unmapped, as Xen's
        ``gnttab_release_mappings`` does for a mapper that goes away.
        """
        ours, theirs = socketpair()
        self._next_channel_id += 1
        self._extra_channels[ours.fileno()] = _ExtraChannel(self._next_channel_id, ours, caller)
        self._by_sock[ours.fileno()] = caller
        self.selector.register(ours, selectors.EVENT_READ, self._on_hypercall)
        self._pending_close.append(theirs)  # closed once the reply carried it
        return {"channel": self._next_channel_id}, [theirs.fileno()]

    def _close_channel(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """dom0 is done with a worker's channel (the worker is gone): close it now.

        Synchronous, unlike noticing the worker's exit, so dom0 can tell the front
        end its device is closed knowing that nothing of it is mapped any more.
        An id already closed is no error: the exit may have been noticed first.
        """
        for channel in list(self._extra_channels.values()):
            if channel.id == args["channel"]:
                self._close_extra_channel(channel, "dom0 closed it")
        return {}, []

    def _close_extra_channel(self, channel: "_ExtraChannel", why: str) -> None:
        left = [handle for handle in channel.grant_handles if self._unmap_quietly(channel.owner.domid, handle)]
        if left:
            log.warning("%s: a back-end worker's channel closed (%s) with %d grant mapping(s); unmapped them",
                        channel.owner.label, why, len(left))
        fd = channel.sock.fileno()
        self.selector.unregister(channel.sock)
        del self._extra_channels[fd]
        self._by_sock.pop(fd, None)
        channel.sock.close()

    def _unmap_quietly(self, mapper: int, handle: int) -> bool:
        """Unmap ``handle`` if it is still mapped; whether it was."""
        try:
            self.grants.unmap_grant_ref(mapper, handle)
        except GrantError:
            return False  # unmapped through another of dom0's channels
        return True

    def _host_shutdown(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        self.stop("requested by dom0")
        return {}, []

    # ------------------------------------------------------------------------------
    # Scheduling domctls (XEN_DOMCTL_scheduler_op, getvcpuinfo, setvcpuaffinity).

    def _scheduled(self, domid: Any) -> Domain:
        domain = self._domain(domid)
        if domain.domid not in self.scheduler.domains:
            raise _Refused(errno.EINVAL, f"{domain.label} is not running: it has no vCPUs to schedule")
        return domain

    def _sched_credit_get(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """Weight and cap of one domain (``domid``) or of every scheduled domain."""
        domains = [self._scheduled(args["domid"])] if "domid" in args else [
            d for d in sorted(self.domains.values(), key=lambda d: d.domid) if d.domid in self.scheduler.domains]
        return [{"domid": d.domid, "name": d.name, **self.scheduler.params(d.domid)} for d in domains], []

    def _sched_credit_set(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """Set a domain's weight and/or cap; either may be left out."""
        domain = self._scheduled(args["domid"])
        try:
            params = self.scheduler.adjust(domain.domid, args.get("weight"), args.get("cap"))
        except SchedError as exc:
            raise _Refused(exc.errno, str(exc)) from None
        log.info("%s: weight %d, cap %d", domain.label, params["weight"], params["cap"])
        return params, []

    def _vcpu_list(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """Every vCPU of one domain (``domid``) or of every scheduled domain."""
        domains = [self._scheduled(args["domid"])] if "domid" in args else [
            d for d in sorted(self.domains.values(), key=lambda d: d.domid) if d.domid in self.scheduler.domains]
        rows = []
        for domain in domains:
            for row in self.scheduler.vcpu_list(domain.domid):
                rows.append({"domid": domain.domid, "name": domain.name, **row})
        return rows, []

    def _vcpu_pin(self, caller: Domain, args: dict, fds: list[int]) -> tuple[Any, list[int]]:
        """A vCPU's hard affinity (``vcpu`` None: every vCPU of the domain)."""
        domain = self._scheduled(args["domid"])
        vcpu, cpus = args.get("vcpu"), args["cpus"]
        if cpus is None:
            cpus = list(self.pcpus)
        try:
            self.scheduler.pin(domain.domid, vcpu, cpus)
        except SchedError as exc:
            raise _Refused(exc.errno, str(exc)) from None
        log.info("%s: vCPU %s pinned to pCPUs %s", domain.label, "all" if vcpu is None else vcpu,
                 ",".join(map(str, sorted(cpus))))
        return {}, []


class _Deferred(Exception):
    """The reply to this hypercall is sent later (or already was)."""


# Calls whose reply is deferred, or that nest: not allowed inside a multicall.
_NOT_IN_MULTICALL = {"multicall", "sched_shutdown"}


def _resolve(args: dict, results: list[Any]) -> dict:
    """Replace ``{"$result": [i, key]}`` values with the ``i``-th result's ``key``."""
    resolved = {}
    for key, value in args.items():
        if isinstance(value, dict) and "$result" in value:
            index, field_name = value["$result"]
            value = results[index]["result"][field_name]
        resolved[key] = value
    return resolved
