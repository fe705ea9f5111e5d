"""A back end's worker process: one device, its own fds, any pCPU of the host.

The bus forks one per connected device (as crosvm jails each device and Linux
runs a kthread per blkback ring): the worker keeps only the fds that device needs
(its own hypercall channel, the front end's memory, the device's event channels,
what the driver adds, such as an image, and a control socket to dom0) and closes
the rest, then serves the device's data path until dom0 says stop or the front
end breaks the protocol. Python's GIL is per process, so devices run in parallel.

A data path is what :attr:`WorkerSpec.data_path` builds in the worker from a
:class:`WorkerContext`; it has the shape of a ring served by a kthread:

- ``process() -> bool``: serve what is waiting; True if the front end must be kicked;
- ``final_check() -> bool``: re-arm the event index; True if more work came meanwhile
  (a data path may poll for a while first, while work keeps coming; the worker sleeps only
  when this says False);
- ``stats``: its live counters (a dict of ints);
- ``close()``: unmap everything; afterwards the front end may end access.

The control socket carries, from dom0, ``{"stop": true}``, ``{"stats": true}``
(answered with ``{"stats": {...}}``, for xentop) and ``{"inject": {...}}`` (a fault
for the data path's ``inject``, ``dom0/faults.py``; a stats request sent after it
is answered once it is in force); to dom0, ``{"connected": true}``
once, ``{"fatal": reason}`` when the front end broke the protocol, and
``{"stopped": {...}}`` (the final counters) after a stop. A worker that does not
stop within :data:`WORKER_STOP_TIMEOUT_S` is killed; either way its hypercall
channel is closed afterwards, so the hypervisor unmaps what it left mapped
(``gnttab_release_mappings``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from xenlike.kernel import landlock, namespaces, seccomp, trace
from xenlike.kernel.events import EventLoop
from xenlike.kernel.hypercall import (
    Fragments,
    HypercallClient,
    recv_message,
    send_message,
    socketpair,
)
from xenlike.kernel.proc import close_fds_except, die_with_parent, log_to_file, set_process_name
from xenlike.public.ring import RingError

if TYPE_CHECKING:
    from .context import BackendContext

__all__ = [
    "DataPath",
    "WorkerContext",
    "WorkerError",
    "WorkerHandle",
    "WorkerSpec",
    "spawn_worker",
    "WORKER_START_TIMEOUT_S",
    "WORKER_STOP_TIMEOUT_S",
]

WORKER_START_TIMEOUT_S = 10.0
WORKER_STOP_TIMEOUT_S = 5.0
WAIT_BOUND_S = 1.0  # a lost wake-up costs at most this (ARCHITECTURE.md, "Rings and memory ordering")
CONTROL_LOOK_S = 0.01  # how long a busy worker may leave dom0's messages unread

log = logging.getLogger("dom0.backend")


class WorkerError(Exception):
    """The worker could not start serving the device."""


class DataPath(Protocol):
    """One device's data path in its worker (blkback's ``xen_blkif_ring``, netback's queue)."""

    stats: dict[str, int]

    def process(self) -> bool: ...

    def final_check(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class WorkerContext:
    """What a data path is built from, in the worker."""

    label: str
    frontend_id: int
    hypercall: HypercallClient
    loop: EventLoop
    memory_fd: int  # the front end's memory, which dom0 may map
    ports: list[int]  # the device's event channels (dom0's ends), bound on ``loop``
    fds: dict[str, int]  # the driver's own fds, by name
    params: dict[str, Any]


@dataclass
class WorkerSpec:
    """What a driver asks the bus to run: the data path's factory and what it is given."""

    label: str  # "d3 (web) vbd/51712", for logs
    process_name: str  # what `ps` shows, e.g. "xl-blk-3-xvda"
    frontend_id: int
    data_path: Callable[[WorkerContext], DataPath]
    ports: list[tuple[int, list[int]]]  # (dom0's port, its recv and send fds) from bus.bind_evtchn
    fds: dict[str, int] = field(default_factory=dict)  # handed over: the worker's from then on
    params: dict[str, Any] = field(default_factory=dict)


CONTROL_MESSAGE_MAX = 64 << 10  # a worker's report: its counters, or a fatal error
STATS_MAX = 64  # counters one report may hold
STATS_VALUE_MAX = (1 << 63) - 1
FATAL_MAX = 400  # characters of a fatal report kept


def _checked_report(message: Any) -> dict[str, Any]:
    """A worker's message as dom0 takes it: ``{"connected": true}``, ``{"stats": {name: count}}`` or
    ``{"fatal": text}``; anything else reads as a fatal report."""
    if isinstance(message, dict) and set(message) == {"stats"}:
        stats = message["stats"]
        if (
            isinstance(stats, dict)
            and len(stats) <= STATS_MAX
            and all(
                isinstance(k, str) and len(k) <= 64 and type(v) is int and 0 <= v <= STATS_VALUE_MAX
                for k, v in stats.items()
            )
        ):
            return {"stats": stats}
        return {"fatal": "the back-end worker sent counters that are not counters"}
    if isinstance(message, dict) and set(message) == {"fatal"} and isinstance(message["fatal"], str):
        return {"fatal": message["fatal"][:FATAL_MAX]}
    if message == {"connected": True}:
        return message
    return {"fatal": f"the back-end worker sent a message of no kind dom0 knows: {str(message)[:80]!r}"}


class WorkerHandle:
    """dom0's side of a running worker: its pid, its control socket, its hypercall channel."""

    def __init__(self, label: str, pid: int, control: socket.socket, channel: int) -> None:
        self.label = label
        self.pid = pid
        self.control = control
        self.channel = channel
        self.asked = 0  # stats requests sent
        self.answered = 0  # and answered (a worker answers in order)
        self._fragments = Fragments(CONTROL_MESSAGE_MAX)

    def receive(self, wait: bool = False) -> dict[str, Any]:
        """The worker's next message, checked; ``{}`` while a fragmented one is incomplete.

        ``wait``: block (up to the socket's timeout) for it, as for the first report
        at start; otherwise the socket is known to be readable.

        A dead worker reads as ``{"fatal": ..., "died": True}``. The worker serves
        a front end that may have taken it over, so dom0 trusts nothing it sends:
        a message that is not one of its own kinds, well formed, reads as a fatal
        report (the device closes), never as an exception in dom0's loop, and dom0
        never waits for the rest of a message on this socket.
        """
        try:
            message, fds = self._read(0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:  # MessageIncomplete included: nothing whole yet
            return {}
        except ValueError as exc:
            return {"fatal": f"the back-end worker sent a malformed message: {exc}"}
        except (ConnectionError, OSError):
            return {"fatal": "the back-end worker died", "died": True}
        for fd in fds:
            os.close(fd)  # it has none to give dom0
        checked = _checked_report(message)
        if "stats" in checked:
            self.answered += 1
        return checked

    def _read(self, flags: int) -> tuple[Any, list[int]]:
        try:
            return recv_message(self.control, flags, pending=self._fragments)
        except ConnectionResetError:
            # A worker that exits with our messages unread resets the socket, and Linux reports
            # that before what it sent last (its fatal report): read once more for it.
            return recv_message(self.control, socket.MSG_DONTWAIT, pending=self._fragments)

    def ask_stats(self) -> int:
        """Ask for the counters; returns the number of this request (see :attr:`answered`)."""
        try:
            send_message(self.control, {"stats": True})
        except OSError:
            return self.answered  # nothing will answer: count it as done
        self.asked += 1
        return self.asked

    def inject(self, fault: dict[str, Any]) -> int:
        """Hand the data path a fault; returns the number of a stats request answered once it is in force."""
        try:
            send_message(self.control, {"inject": fault})
        except OSError:
            return self.answered  # the worker is gone: its death is being read
        return self.ask_stats()

    def stop(self, hypercall: Callable[..., tuple[Any, list[int]]]) -> None:
        """Stop the worker (it unmaps every grant), reap it, then close its hypercall channel.

        Closing the channel unmaps whatever a worker that died left mapped, before
        the front end is told the device closed.
        """
        try:
            send_message(self.control, {"stop": True})
        except OSError:
            pass
        self.control.close()
        self.answered = self.asked
        _reap(self.pid, WORKER_STOP_TIMEOUT_S, self.label)
        hypercall("domctl", cmd="close_channel", channel=self.channel)


def spawn_worker(spec: WorkerSpec, ctx: BackendContext) -> WorkerHandle:
    """Fork a worker for one device and wait until it serves; raises WorkerError if it cannot.

    Every fd in ``spec`` becomes the worker's: dom0 closes its copies.
    """
    opened, channel_fds = ctx.hypercall("domctl", cmd="open_channel")
    pcpus = ctx.hypercall("sysctl", cmd="physinfo")[0]["pcpus"]
    names = ["channel", "trace", "memory", *spec.fds]
    fds = [*channel_fds[:2], os.dup(ctx.foreign_memory_fd(spec.frontend_id)), *spec.fds.values()]
    for _port, port_fds in spec.ports:
        fds.extend(port_fds)
    if landlock.abi_version() > 0:
        _import_allowance()  # computed once, in dom0, for every worker it forks
    ours, theirs = socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            close_fds_except([theirs.fileno(), *fds])
            code = _worker_main(spec, dict(zip(names, fds)), fds[len(names) :], pcpus, str(ctx.log_path), theirs)
        except BaseException:
            log.exception("%s: back-end worker failed", spec.label)
        finally:
            os._exit(code)
    theirs.close()
    for fd in fds:
        os.close(fd)
    handle = WorkerHandle(spec.label, pid, ours, opened["channel"])
    ours.settimeout(WORKER_START_TIMEOUT_S)
    try:
        reply = handle.receive(wait=True)
    finally:
        ours.settimeout(None)
    if "fatal" in reply:
        handle.stop(ctx.hypercall)
        raise WorkerError(reply["fatal"])
    return handle


def _worker_main(
    spec: WorkerSpec,
    named: dict[str, int],
    port_fds: list[int],
    pcpus: list[int],
    log_file: str,
    control: socket.socket,
) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent()
    set_process_name(spec.process_name)
    # The fork inherited the pCPU the scheduler had put dom0's vCPU on; a back end
    # serves every pCPU of the host, and Linux places it, as dom0's kernel threads.
    os.sched_setaffinity(0, pcpus)
    log_to_file(log_file)  # dom0's handlers go: their files were closed with the other fds
    trace.attach(named.pop("trace"), 0)  # the worker's own buffer: dom0's is not shared across a fork
    confine_worker(spec.label)
    hypercall = HypercallClient(socket.socket(fileno=named.pop("channel")), _close_event_fds)
    loop = EventLoop(spec.label)
    ports = [port for port, _ in spec.ports]
    for index, port in enumerate(ports):
        loop.bind(port, port_fds[2 * index], port_fds[2 * index + 1])
    ctx = WorkerContext(spec.label, spec.frontend_id, hypercall, loop, named.pop("memory"), ports, named, spec.params)
    try:
        data_path = spec.data_path(ctx)
    except Exception as exc:
        send_message(control, {"fatal": f"cannot map the ring: {exc}"})
        return 2
    stop: list[bool] = []
    kicks = [0]  # notifications sent to the front end
    loop.add_reader(control.fileno(), lambda fd: _answer_control(control, data_path, stop, loop, ports, kicks))
    send_message(control, {"connected": True})
    try:
        code = _serve(spec.label, data_path, loop, ports[0], control, stop, kicks)
    finally:
        data_path.close()
        loop.close()
    if code == 0:
        try:
            send_message(control, {"stopped": data_path.stats})
        except OSError:
            pass  # dom0 did not wait for the figures
    return code


def _close_event_fds(event: dict, fds: list[int]) -> None:
    """A worker waits for no hypervisor event: the fds one carries are closed."""
    for fd in fds:
        os.close(fd)


def confine_worker(label: str) -> None:
    """Keep a worker to what its device needs: the fds it holds, and no file, network or process beyond them.

    dom0 is privileged, as in Xen, but a back end serves a front end it must not
    trust: if that front end finds a bug in the data path, the worker it reaches
    opens no file (Landlock: read-only on what Python imports, written nowhere),
    has no network (a network namespace of its own holding only a down ``lo``),
    and makes none of the system calls a domU may not (the guests' seccomp
    filter). Its image, memory and channels are fds it already holds. What the
    kernel lacks is logged and left out.
    """
    try:
        if os.geteuid() == 0:
            namespaces.unshare(namespaces.CLONE_NEWNET)
        else:
            namespaces.enter_user_namespace(namespaces.CLONE_NEWNET)
    except OSError as exc:
        log.warning("%s: the worker keeps dom0's network: %s", label, exc)
    if seccomp.supported():
        seccomp.install(seccomp.guest_policy().build(), tsync=True)
    else:
        namespaces.no_new_privs()
    if landlock.abi_version() > 0:
        ruleset = landlock.Ruleset()
        fd = ruleset.allow_all(_import_allowance()).create()
        try:
            landlock.restrict_self(fd)
        finally:
            os.close(fd)


@functools.cache
def _import_allowance() -> tuple[tuple[str, int], ...]:
    """What Python must read to import, computed once in dom0 (workers inherit it)."""
    return tuple(
        (path, landlock.READ) for path, _access in landlock.python_allowance(netdb=False) if path != os.devnull
    )


def _serve(
    label: str,
    data_path: DataPath,
    loop: EventLoop,
    port: int,
    control: socket.socket,
    stop: list[bool],
    kicks: list[int],
) -> int:
    """The kthread's loop (``xen_blkif_schedule``): serve, kick (counted in ``kicks``), re-check, sleep.

    A data path that keeps finding work never sleeps in the event loop, so it is
    looked at without waiting every :data:`CONTROL_LOOK_S`: dom0's messages (stop,
    stats, a fault) are answered under load too.
    """
    clock = time.monotonic
    next_look = clock() + CONTROL_LOOK_S
    try:
        while not stop:
            if data_path.process():
                loop.notify(port)
                kicks[0] += 1
            elif not data_path.final_check():
                loop.poll(WAIT_BOUND_S)
                next_look = clock() + CONTROL_LOOK_S
                continue
            if clock() >= next_look:
                loop.poll(0)
                next_look = clock() + CONTROL_LOOK_S
    except RingError as exc:
        log.error("%s: front end broke the ring protocol, disconnecting: %s", label, exc)
        send_message(control, {"fatal": str(exc)})
        return 2
    return 0


def _answer_control(
    control: socket.socket, data_path: DataPath, stop: list[bool], loop: EventLoop, ports: list[int], kicks: list[int]
) -> None:
    """One message from dom0: a stats request is answered at once, a fault handed on; anything else (or dom0
    gone) means stop.

    The counters are the data path's and, beside them, the notifications on the
    device's ports: ``notify_sent`` to the front end, ``notify_received`` (upcalls)
    from it, which xentop's NOTIF/s column turns into a rate.
    """
    try:
        message, _ = recv_message(control)
        if "inject" in message:
            inject = getattr(data_path, "inject", None)
            if inject is not None:
                inject(message["inject"])
            return
        if message.get("stats"):
            notifications = {
                "notify_sent": kicks[0],
                "notify_received": sum(loop.channel(port).upcalls for port in ports),
            }
            send_message(control, {"stats": {**data_path.stats, **notifications}})
            return
    except OSError:
        pass  # ChannelClosed included: dom0 closed its end, nobody is left to serve for
    stop.append(True)


def _reap(pid: int, timeout: float, label: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.005)
    log.warning("%s: back-end worker %d did not stop within %.0fs; killed", label, pid, timeout)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
