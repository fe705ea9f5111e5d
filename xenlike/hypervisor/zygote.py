"""The zygote: a pre-imported, single-threaded process that forks domains.

Starting a fresh interpreter per domain costs tens of milliseconds and megabytes
of private memory; forking a process that has already imported the guest kernel
costs a few milliseconds and shares every imported page copy-on-write. The
hypervisor forks the zygote first thing, before it creates any thread, epoll
instance or zmq context, so nothing of the sort is ever inherited by a domain.

Protocol on the zygote's control socket (``xenlike.kernel.hypercall`` messages):

* hypervisor → zygote ``{"op": "spawn", "boot": {...}}`` with fds
  ``[hypercall socket, memfd, ...port fds]``; reply ``{"spawned": N}``, N the pid.
* zygote → hypervisor ``{"event": "exited", "pid": N, "status": S, "cpu_time": T}``
  whenever a domain process ends (``S`` as ``os.waitpid`` gives it, ``T`` its CPU
  seconds from the kernel's rusage). An exit can come between a spawn and its
  reply: the reply's key is one no event has, so a domain that just ended is never
  taken for the one just started.

Each domain process: lives in its own process group, dies with the zygote (and so
with the hypervisor) through ``PR_SET_PDEATHSIG``, and carries a ``comm`` name like
``xl-d3-web`` so ``ps`` shows which domain it is. The zygote forks each domain
*before* it is asked for (a waiting "shell", kept in a :class:`_ShellPool`), so a
create does not wait for fork.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from xenlike.hypervisor.jail import (
    JailPolicy,
    ShellJail,
    remove_cgroups,
    restore_environment,
    shell_cgroup_name,
    stale_cgroups,
    use_guest_environment,
    warm_up,
    write_name_service_files,
)
from xenlike.kernel import ksm, pymalloc
from xenlike.kernel.hypercall import ChannelClosed, recv_message, send_message, socketpair
from xenlike.kernel.proc import become_subreaper, die_with_parent, fork_single_threaded, set_process_name

__all__ = ["Zygote", "start_zygote"]

# What a domain runs, by role: module and function called with (boot, fds).
ENTRY_POINTS = {"domu": ("domu.kernel", "start"), "dom0": ("dom0.main", "start")}
# What the zygote imports before it forks: the guest kernel and the built-in
# workloads. dom0 is forked once and imports its own (larger) modules itself, so
# they do not weigh on every domU's fork.
PRELOAD = ("domu.kernel", "domu.workloads")
# Shells kept ready, so a create arriving while a replacement is not yet forked still finds one.
POOL_SIZE = 2
# How long a domain just handed out has the CPUs before its replacement is forked: forking and
# preparing a shell take a few milliseconds of CPU, which on a small host would be taken from
# that domain's boot. A pool left empty is refilled at once instead.
BOOT_WINDOW_S = 0.005


@dataclass
class Zygote:
    """The hypervisor's handle on its zygote."""

    pid: int
    sock: socket.socket

    def spawn(self, boot: dict, fds: list[int]) -> int:
        """Fork a domain process; returns its pid. ``fds`` are duplicated into it.

        Exit events that arrive before the reply are kept in :attr:`pending_events`
        for the next :meth:`read_events`, which the caller owes them now: they are no
        longer on the socket, so its polling readable will not say so.
        """
        send_message(self.sock, {"op": "spawn", "boot": boot}, fds)
        while True:
            reply, extra = recv_message(self.sock)
            for fd in extra:
                os.close(fd)
            if "spawned" in reply:
                return reply["spawned"]
            self.pending_events.append(reply)

    def __post_init__(self) -> None:
        self.pending_events: list[dict] = []
        self.gone = False  # the zygote closed its socket: it died, and every domain with it

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_events(self) -> list[dict]:
        """Exit events waiting on the socket (call when it polls readable); sets :attr:`gone` at its end."""
        events, self.pending_events = self.pending_events, []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    message, extra = recv_message(self.sock)
                except BlockingIOError:
                    break
                except (ChannelClosed, ConnectionError):
                    self.gone = True
                    break
                for fd in extra:
                    os.close(fd)
                events.append(message)
        finally:
            self.sock.setblocking(True)
        return events


def start_zygote(jail: JailPolicy | None = None, page_sharing: bool = False) -> Zygote:
    """Fork the zygote. Call before creating threads, epoll instances or zmq contexts.

    With ``jail`` (enabled), every domU is jailed (``xenlike.hypervisor.jail``); dom0 never is.
    With ``page_sharing``, every domU's anonymous memory is mergeable by ksmd
    (``xenlike.kernel.ksm``); dom0's never is.
    """
    ours, theirs = socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        code = 0
        try:
            _zygote_main(theirs, jail if jail is not None and jail.enabled else None, page_sharing)
        except BaseException:
            logging.getLogger("xenlike.zygote").exception("the zygote failed")
            code = 70
        finally:
            os._exit(code)
    theirs.close()
    return Zygote(pid, ours)


class _Shell:
    """A child forked ahead of need, waiting for the boot message that makes it a domain.

    Forking is the slowest step of starting a domain, so the zygote keeps shells
    ready (:class:`_ShellPool`) and forks replacements after handing them out
    (LightVM's idea of preparing VM shells ahead of time). A shell has already
    left the zygote's process group and asked to die with it; the boot message
    gives it its role.
    """

    def __init__(
        self, zygote_sock: socket.socket, wake: tuple[int, int], jail: _JailSetup | None, jailed: bool, role: str
    ) -> None:
        ours, theirs = socketpair()
        pid = fork_single_threaded()
        if pid == 0:
            ours.close()
            _become_shell(theirs, zygote_sock, wake, jail, jailed, role)  # never returns
        theirs.close()
        if jail is not None and jailed:
            jail.jailed.add(pid)
        self.pid = pid
        self.sock = ours

    def boot(self, boot: dict, fds: list[int]) -> int:
        """Hand the shell its boot message and fds; returns its pid."""
        send_message(self.sock, boot, fds)
        self.sock.close()
        return self.pid

    def discard(self) -> None:
        """Kill and reap an unused shell (the zygote is exiting): no orphan, no zombie."""
        self.sock.close()
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


@dataclass
class _JailSetup:
    """The zygote's side of the jail: the policy every domU shell applies, and the guests' stderr pipe.

    A jailed guest may extend no file (``RLIMIT_FSIZE`` 0), so its fds 1 and 2 are
    the write end of a pipe whose read end the zygote copies to its own stderr
    (the hypervisor's stderr log: tracebacks, ``SIGUSR1`` thread dumps). The pipe
    is non-blocking: a guest that floods it loses its own output and stalls nobody.
    """

    policy: JailPolicy
    stderr_r: int
    stderr_w: int
    host_environment: dict[str, str]  # the zygote has the guests' (use_guest_environment); dom0 gets this back
    jailed: set[int] = field(default_factory=set)  # pids of jailed shells, each with a cgroup of its own
    busy_cgroups: set[str] = field(default_factory=set)  # cgroups whose last process is not reaped yet

    def forget_shells(self, pids: list[int]) -> None:
        """These shells (domains) ended: their cgroups go, now or once their vCPUs are reaped too."""
        ended = [pid for pid in pids if pid in self.jailed]
        self.jailed.difference_update(ended)
        names = {shell_cgroup_name(os.getpid(), pid) for pid in ended} | self.busy_cgroups
        self.busy_cgroups = remove_cgroups(names) if names else set()

    def end_domains(self, timeout: float = 2.0) -> None:
        """The zygote is exiting, and its domains with it: end them now, reap them, and remove their cgroups."""
        for pid in self.jailed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while self.jailed or self.busy_cgroups:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid:
                self.forget_shells([pid])
                continue
            self.forget_shells([])
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def forward_stderr(self) -> None:
        try:
            data = os.read(self.stderr_r, 65536)
        except BlockingIOError:
            return
        try:
            os.write(2, data)
        except OSError:
            pass  # the log is gone: nothing to keep it for


def _jail_setup(policy: JailPolicy) -> _JailSetup:
    warm_up(policy)  # what every shell's jail reads, computed once before the forks
    if policy.run_dir and policy.has("namespaces"):
        write_name_service_files(policy.run_dir)
    remove_cgroups(stale_cgroups())  # left by hosts that were killed
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    return _JailSetup(policy, read_end, write_end, use_guest_environment())


def _zygote_main(sock: socket.socket, jail: JailPolicy | None, page_sharing: bool) -> None:
    die_with_parent()
    # A guest's secondary vCPUs are its vCPU 0's children: orphaned, they come here to be reaped.
    become_subreaper()
    set_process_name("xl-zygote")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the hypervisor's to handle
    for module in PRELOAD:
        importlib.import_module(module)  # the point of a zygote: import once, fork many
    importlib.import_module("domu.workload").available_workloads()  # scan entry points once, not per domain
    importlib.import_module(ENTRY_POINTS["domu"][0]).warm_up()
    setup = _jail_setup(jail) if jail is not None else None
    # Objects imported so far stay shared with every domain: have each child's new objects
    # packed in pages of their own, not spread over the free blocks of the zygote's pools (one
    # copied page each), and keep the cyclic GC from touching (and so copying) the old ones.
    gc.collect()
    pymalloc.fill_free_blocks()
    gc.freeze()
    if page_sharing:
        # Inherited by every shell: the pages a guest copies on write are mostly the same bytes in every guest.
        ksm.merge_this_process()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    pool = _ShellPool(sock, (wake_r, wake_w), setup)
    watched = [sock.fileno(), wake_r] + ([setup.stderr_r] if setup is not None else [])
    while True:
        ready, _, _ = select.select(watched, [], [], pool.seconds_to_refill())
        if setup is not None and setup.stderr_r in ready:
            setup.forward_stderr()
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            ended = _reap(sock)
            if setup is not None:
                setup.forget_shells(ended)
        if sock.fileno() in ready:
            try:
                message, fds = recv_message(sock)
            except (ChannelClosed, ConnectionError, OSError):
                pool.discard()
                if setup is not None:
                    setup.end_domains()
                return
            if message.get("op") == "spawn":
                pid = pool.take(message["boot"]["role"]).boot(message["boot"], fds)
                send_message(sock, {"spawned": pid})
            for fd in fds:
                os.close(fd)
        pool.refill_if_due()  # after the reply: forking is off the create's critical path


class _ShellPool:
    """The shells the zygote keeps ready (up to :data:`POOL_SIZE`), refilled one at a time.

    A replacement is forked :data:`BOOT_WINDOW_S` after a shell was handed out,
    or at once if none is left ready, so the fork competes with the new domain's
    boot only when creates come faster than that.
    """

    def __init__(self, zygote_sock: socket.socket, wake: tuple[int, int], jail: _JailSetup | None) -> None:
        self._zygote_sock = zygote_sock
        self._wake = wake
        self._jail = jail
        self._ready: deque[_Shell] = deque()
        self._refill_at = time.monotonic()

    def take(self, role: str) -> _Shell:
        """A ready shell for ``role`` (one forked now if none is); schedules its replacement.

        dom0 is privileged, as in Xen: it gets a shell of its own, never a jailed one.
        """
        if role == "dom0":
            return _Shell(self._zygote_sock, self._wake, self._jail, jailed=False, role="dom0")
        shell = self._ready.popleft() if self._ready else self._fork()
        now = time.monotonic()
        self._refill_at = now if not self._ready else now + BOOT_WINDOW_S
        return shell

    def seconds_to_refill(self) -> float | None:
        """How long the zygote may sleep before it owes the pool a shell (None: it is full)."""
        if len(self._ready) >= POOL_SIZE:
            return None
        return max(0.0, self._refill_at - time.monotonic())

    def refill_if_due(self) -> None:
        """Fork one shell if one is owed; the next one, if still owed, waits another window."""
        if len(self._ready) >= POOL_SIZE or time.monotonic() < self._refill_at:
            return
        self._ready.append(self._fork())
        self._refill_at = time.monotonic() + BOOT_WINDOW_S

    def discard(self) -> None:
        """Kill and reap every ready shell (the zygote is exiting)."""
        discarded = []
        while self._ready:
            shell = self._ready.popleft()
            shell.discard()
            discarded.append(shell.pid)
        if self._jail is not None:
            self._jail.forget_shells(discarded)

    def _fork(self) -> _Shell:
        return _Shell(self._zygote_sock, self._wake, self._jail, jailed=self._jail is not None, role="domu")


def _jail_shell(jail: _JailSetup) -> ShellJail:
    """Jail a fresh shell as far as it can be before it knows its domain (it is still one thread)."""
    os.close(jail.stderr_r)
    for fd in (1, 2):
        os.dup2(jail.stderr_w, fd)
    os.close(jail.stderr_w)
    confinement = ShellJail(jail.policy)
    confinement.prepare()
    return confinement


def _reap(sock: socket.socket) -> list[int]:
    """Report every child that ended (domains, and vCPUs orphaned to the zygote); returns their pids."""
    ended: list[int] = []
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:  # children exist, none has exited
            return ended
        ended.append(pid)
        cpu = usage.ru_utime + usage.ru_stime
        send_message(sock, {"event": "exited", "pid": pid, "status": status, "cpu_time": cpu})


def _become_shell(
    boot_sock: socket.socket,
    zygote_sock: socket.socket,
    wake: tuple[int, int],
    jail: _JailSetup | None,
    jailed: bool,
    role: str,
) -> None:
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake:
            os.close(fd)
        zygote_sock.close()
        os.setpgid(0, 0)
        die_with_parent()
        confinement = _jail_shell(jail) if jail is not None and jailed else None
        if jail is not None and not jailed:
            os.close(jail.stderr_r)
            os.close(jail.stderr_w)
            restore_environment(jail.host_environment)
        # Work every guest needs, done while the shell waits rather than once it is asked for
        # (dom0's shell is forked when dom0 is asked for, and runs no guest kernel).
        prepared = importlib.import_module(ENTRY_POINTS["domu"][0]).prepare() if role == "domu" else None
        try:
            boot, fds = recv_message(boot_sock)
        except (ChannelClosed, ConnectionError):
            os._exit(0)  # the zygote went away before this shell was needed
        boot_sock.close()
        set_process_name(f"xl-d{boot['domid']}-{boot['name']}")
        if boot["role"] == "dom0" and ksm.this_process_merges():
            ksm.merge_this_process(False)  # privileged: no page of dom0's is shared with a guest
        if boot["role"] != role:
            raise RuntimeError(f"a shell forked for a {role} was handed a {boot['role']}")
        if confinement is not None:
            confinement.enter(boot, fds)  # before any of the domain's code runs
            assert prepared is not None  # a jailed shell is a domU's
            prepared.confine = confinement.confine_thread
        module, function = ENTRY_POINTS[boot["role"]]
        entry = getattr(importlib.import_module(module), function)
        code = (entry(boot, fds, prepared) if boot["role"] == "domu" else entry(boot, fds)) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logging.getLogger("xenlike.zygote").exception("a domain crashed before its kernel could report it")
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
