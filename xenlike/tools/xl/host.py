"""``xenlike up`` and ``xenlike down``: a host's lifecycle, which xl leaves to the boot.

``up`` starts the hypervisor (which builds dom0), creates the domains of a
cluster file and, unless ``-d``, stays in the foreground printing every
console line prefixed with its domain until Ctrl-C, which shuts the host down.
A domain that cannot be created, or whose guest does not start its workload,
stops the host again: ``up`` says why and fails, leaving no host behind.
``down`` shuts every domain down (destroying those that do not stop), then dom0
and the hypervisor.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xenlike.kernel.machine import host_memory_refusal, memory_kib
from xenlike.kernel.rundir import HostRunning, RunDir
from xenlike.public.migration_channel import parse_address
from xenlike.tools.console_stream import ConsoleSubscriber
from xenlike.tools.toolstack_client import ToolstackClient, ToolstackError
from xenlike.tools.xl.console import attach_consoles
from xenlike.tools.xl.utils import XlError, registered, toolstack
from xenlike.tools.xl.vmcontrol import running_domain

__all__ = ["SCHEDULERS_GROUP", "main_up", "main_down"]

SCHEDULERS_GROUP = "xenlike.schedulers"
HOST_START_TIMEOUT_S = 20
MAX_DEFAULT_MEMORY = 8 << 30


def main_up(args: argparse.Namespace) -> int:
    """Start a host and the domains of ``args.cluster`` (or the default cluster); stream their consoles."""
    from xenlike.tools.config import default_cluster, load_cluster

    run_dir = RunDir(args.run_dir).ensure()
    try:
        run_dir.check_unlocked()  # at once; the hypervisor takes the lock for real, first thing
    except HostRunning as exc:
        raise XlError(str(exc)) from None
    cluster = load_cluster(Path(args.cluster)) if args.cluster else default_cluster(run_dir.path)
    for warning in cluster.warnings:
        print(f"xenlike: warning: {warning}", file=sys.stderr)
    memory = args.memory or cluster.host.get("memory") or _default_memory_mib()
    if not args.overcommit:
        _check_memory(f"--memory {memory} MiB" if args.memory else f"the cluster's host memory of {memory} MiB", memory)
    pcpus = args.pcpus or cluster.host.get("pcpus") or os.cpu_count() or 1
    sched = _check_scheduler(args.sched or cluster.host.get("sched") or "credit")
    extra = ["--no-jail"] if args.no_jail else []
    if args.jail_uid_base is not None:
        extra += ["--jail-uid-base", str(args.jail_uid_base)]
    if args.page_sharing:
        extra.append("--page-sharing")
    if args.listen is not None:
        try:
            parse_address(args.listen)
        except ValueError as exc:
            raise XlError(f"--listen: {exc}") from None
    hypervisor = _start_hypervisor(run_dir, memory, pcpus, sched, extra, overcommit=args.overcommit)
    with ToolstackClient(run_dir) as client:
        _say_how_guests_are_jailed(client.call("info").get("jail", {}))
        if args.listen is not None:
            try:
                listening = client.call("migrate_listen", address=args.listen)
            except ToolstackError as exc:
                return _refuse(client, hypervisor, str(exc))
            print(f"xenlike: accepting migrations on {listening['listen']}; `xenlike info` shows the key to give")
        console = None if args.detach else attach_consoles(run_dir, client, None)[0]
        for domain in cluster.domains:
            config = domain.to_dict()
            try:
                result = client.call("create", config=config)
                domid = running_domain(result)
            except ToolstackError as exc:
                return _refuse(client, hypervisor, f"creating {config['name']} failed: {exc}")
            except XlError as exc:  # its guest did not start
                return _refuse(client, hypervisor, str(exc))
            print(f"xenlike: created {result['name']} (domain {domid})")
    if console is None:  # -d
        print(
            f"xenlike: host running in {run_dir.path} (hypervisor pid {hypervisor.pid}); "
            "`xenlike list` shows it, `xenlike down` stops it"
        )
        return 0
    return _stream_consoles(run_dir, console, hypervisor.pid)


def _refuse(client: ToolstackClient, hypervisor: subprocess.Popen, why: str) -> int:
    """A domain of the cluster does not run: say why and stop the host, so that none is left half up."""
    print(f"xenlike up: {why}; stopping the host", file=sys.stderr)
    client.call("down", timeout=30)
    _wait_gone(hypervisor.pid, 15)
    return 1


def main_down(args: argparse.Namespace) -> int:
    """Shut the host down, giving domains ``args.timeout`` seconds; the hypervisor is killed if it lingers."""
    run_dir = RunDir(args.run_dir)
    pid = run_dir.running_pid()
    with toolstack(args) as client:
        result = client.call("down", timeout=args.timeout + 30, timeout_s=args.timeout)
    if pid is not None and not _wait_gone(pid, 20):
        os.kill(pid, signal.SIGKILL)
    run_dir.clean_sockets()
    print("xenlike: host stopped" + (" (some domains had to be destroyed)" if result.get("forced") else ""))
    return 0


def _default_memory_mib() -> int:
    """Half the machine's memory, at most 8 GiB: the host pool for domains."""
    import psutil

    return int(min(psutil.virtual_memory().total // 2, MAX_DEFAULT_MEMORY) >> 20)


def _check_memory(what: str, memory: int) -> None:
    """Refuse a host pool above the machine's memory (MemTotal), naming both figures and ``--overcommit``."""
    refusal = host_memory_refusal(what, memory, memory_kib() // 1024)
    if refusal is not None:
        raise XlError(refusal)


def _check_scheduler(name: Any) -> str:
    """A scheduler registered in ``xenlike.schedulers``, or an XlError naming the choices."""
    known = registered(SCHEDULERS_GROUP)
    if name not in known:
        raise XlError(f"no scheduler named {name!r}; registered: {', '.join(sorted(known)) or 'none'}")
    return str(name)


def _say_how_guests_are_jailed(jail: dict) -> None:
    """One line per mechanism the kernel lacks (once, at ``up``); a loud one when the jail is off."""
    if not jail.get("enabled"):
        print(
            "xenlike: warning: the jail is OFF (--no-jail): every guest can reach what this host's user can; "
            "for experiments only",
            file=sys.stderr,
        )
        return
    for _name, available, detail in jail.get("mechanisms", []):
        if not available:
            print(f"xenlike: warning: {detail}", file=sys.stderr)


def _start_hypervisor(
    run_dir: RunDir, memory: int, pcpus: int, sched: str, extra: list[str], overcommit: bool = False
) -> subprocess.Popen:
    """Start ``python -m xenlike.hypervisor`` in its own session; return once dom0's toolstack answers.

    The hypervisor's refusal to start (another host holds the run directory, the
    memory is more than the machine's) comes back in one line on a status pipe
    and is raised as the XlError; end of file without a word means it holds the
    run directory and is starting, so the toolstack that answers is its own.
    """
    out = open(run_dir.log_path("hypervisor-stderr"), "ab")
    command = [
        sys.executable,
        "-m",
        "xenlike.hypervisor",
        "--run-dir",
        str(run_dir.path),
        "--memory",
        str(memory),
        "--pcpus",
        str(pcpus),
        "--sched",
        sched,
        *extra,
    ]
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    command += ["--status-fd", str(status_w)] + (["--overcommit"] if overcommit else [])
    try:
        hypervisor = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, pass_fds=(status_w,)
        )
    finally:
        os.close(status_w)
        out.close()
    deadline = time.monotonic() + HOST_START_TIMEOUT_S
    try:
        refusal = _read_status(status_r, deadline)
    finally:
        os.close(status_r)
    if refusal:
        hypervisor.wait()  # it exits as soon as it has said why
        raise XlError(refusal)
    while time.monotonic() < deadline:
        if hypervisor.poll() is not None:
            raise XlError(f"the hypervisor exited with status {hypervisor.returncode}; see {run_dir.path / 'logs'}")
        try:
            with ToolstackClient(run_dir, timeout=2) as client:
                client.call("ping")
                return hypervisor
        except ToolstackError:
            time.sleep(0.02)
    hypervisor.kill()
    raise XlError(f"the host did not come up within {HOST_START_TIMEOUT_S}s; see {run_dir.path / 'logs'}")


def _read_status(fd: int, deadline: float) -> str:
    """What the hypervisor wrote on its status pipe before closing it (its refusal, or nothing); "" at ``deadline``."""
    import select

    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace").strip()
        data += chunk


def _stream_consoles(run_dir: RunDir, sub: ConsoleSubscriber, hypervisor_pid: int) -> int:
    """Print every console line prefixed with its domain, until Ctrl-C or the host stops."""
    stopping = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    print("xenlike: streaming consoles; Ctrl-C shuts the host down", flush=True)
    lines = _ConsoleLines()
    while not stopping and run_dir.running_pid() == hypervisor_pid:
        for message in sub.receive(200):
            lines.show(message.name, message.data)
    sub.close()
    if stopping and run_dir.running_pid() is not None:
        print("xenlike: shutting the host down", flush=True)
        with ToolstackClient(run_dir) as client:
            client.call("down", timeout=60)
        _wait_gone(hypervisor_pid, 20)
    return 0


class _ConsoleLines:
    """Whole console lines as ``name | text``, names in a column as wide as the longest seen (docker compose's)."""

    def __init__(self) -> None:
        self.partial: dict[str, bytes] = {}
        self.width = 12

    def show(self, name: str, data: bytes) -> None:
        *lines, rest = (self.partial.pop(name, b"") + data).split(b"\n")
        if rest:
            self.partial[name] = rest
        self.width = max(self.width, len(name))
        for line in lines:
            print(f"{name:<{self.width}} | {line.decode(errors='replace')}", flush=True)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited (reaping it if it is our child); False after ``timeout`` seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                os.waitpid(pid, os.WNOHANG)
                return True
        except (psutil.NoSuchProcess, ChildProcessError):
            return True
        time.sleep(0.05)
    return False
