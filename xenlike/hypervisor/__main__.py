"""Run a xenlike host: the hypervisor, which starts dom0.

Started by ``xenlike up``; not meant to be run by hand, but it can be:

    python -m xenlike.hypervisor --run-dir DIR --memory MiB [--overcommit] [--pcpus N] [--sched NAME]

Before it starts anything it locks the run directory (``RunDir.take_lock``: one
host per run directory) and checks the host memory against the machine's. A
refusal is one line on stderr, and on ``--status-fd`` if given: a pipe the
starter (``xenlike up``) reads, closed without a word once those checks pass.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from xenlike.hypervisor.jail import DEFAULT_UID_BASE, JailPolicy, jail_report, log_jail
from xenlike.hypervisor.zygote import start_zygote
from xenlike.kernel import ksm
from xenlike.kernel.machine import Machine, host_memory_refusal
from xenlike.kernel.proc import log_to_file, raise_fd_limit, set_process_name
from xenlike.kernel.rundir import HostLock, HostRunning, RunDir
from xenlike.public.atomic import check_platform

DOM0_MEMORY_MIB = 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xenlike.hypervisor", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--memory", type=int, required=True, help="host memory for domains, MiB")
    p.add_argument("--overcommit", action="store_true", help="allow --memory above the machine's MemTotal")
    p.add_argument("--pcpus", type=int, default=os.cpu_count(), help="physical CPUs to schedule on")
    p.add_argument(
        "--sched", default="credit", help="the scheduler (entry-point group xenlike.schedulers; default credit)"
    )
    p.add_argument("--no-jail", action="store_true", help="run guests without the jail (experiments only)")
    p.add_argument(
        "--jail-uid-base",
        type=int,
        default=DEFAULT_UID_BASE,
        help=f"as root, each domain runs as this uid plus its domid (default {DEFAULT_UID_BASE})",
    )
    p.add_argument(
        "--page-sharing",
        action="store_true",
        help="share identical pages between domains (the kernel's KSM; starts ksmd as root if it is off)",
    )
    p.add_argument("--status-fd", type=int, help="a pipe for the one line of a refusal, closed once started")
    return p.parse_args(argv)


def commandline(args: argparse.Namespace) -> str:
    """The hypervisor's command line as ``xl info`` shows it (``xen_commandline``): its settings, in one form."""
    words = (
        [
            "--run-dir",
            str(args.run_dir),
            "--memory",
            str(args.memory),
            "--pcpus",
            str(args.pcpus),
            "--sched",
            args.sched,
        ]
        + (["--overcommit"] if args.overcommit else [])
        + (["--no-jail"] if args.no_jail else ["--jail-uid-base", str(args.jail_uid_base)])
        + (["--page-sharing"] if args.page_sharing else [])
    )
    return shlex.join(words)


def refuse(status_fd: int | None, line: str, code: int = 1) -> int:
    """Say why the host does not start, in one line on stderr and on the starter's status pipe."""
    print(f"xenlike.hypervisor: {line}", file=sys.stderr)
    if status_fd is not None:
        try:
            os.write(status_fd, (line + "\n").encode())
        except OSError:
            pass  # the starter is gone
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status_fd = args.status_fd
    if status_fd is not None:
        os.set_inheritable(status_fd, False)
    check_platform()
    raise_fd_limit()
    from xenlike.hypervisor.sched import available_schedulers

    if args.sched not in available_schedulers():  # by name only: a plugin is imported after the zygote forks
        return refuse(
            status_fd,
            f"no scheduler named {args.sched!r} (registered: {', '.join(sorted(available_schedulers())) or 'none'})",
            2,
        )
    run_dir = RunDir(args.run_dir)
    # The run directory's lock comes before anything starts, and is held until the process ends.
    try:
        lock = run_dir.take_lock()
    except HostRunning as exc:
        return refuse(status_fd, str(exc))
    machine = Machine.read()
    refusal = host_memory_refusal(f"--memory {args.memory} MiB", args.memory, machine.memory_mib)
    if refusal is not None and not args.overcommit:
        return refuse(status_fd, refusal)
    ksmd = ksm.Ksmd()
    if args.page_sharing:
        missing = ksm.available()
        if missing is not None:
            return refuse(status_fd, f"--page-sharing: {missing}")
        try:
            ksmd.ensure_running()
        except ksm.KsmError as exc:
            return refuse(status_fd, f"--page-sharing: {exc.strerror}")
    try:
        return _run(args, run_dir, lock, machine, status_fd, ksmd)
    finally:
        if args.page_sharing:
            ksmd.restore()  # if the host failed before it could (a second call finds nothing to do)


def _run(
    args: argparse.Namespace, run_dir: RunDir, lock: HostLock, machine: Machine, status_fd: int | None, ksmd: ksm.Ksmd
) -> int:
    """Start the zygote, then the hypervisor, and serve until ``down``."""
    if status_fd is not None:
        os.close(status_fd)  # started: the starter reads end of file
    jail, jail_mechanisms = JailPolicy.probe(
        enabled=not args.no_jail, uid_base=args.jail_uid_base, run_dir=str(run_dir.path)
    )
    # The zygote comes first: nothing below (threads, epoll, zmq) may be inherited by domains.
    zygote = start_zygote(jail, page_sharing=args.page_sharing)
    set_process_name("xl-hypervisor")
    log_to_file(run_dir.log_path("hypervisor"), "%(asctime)s %(levelname)s %(message)s")
    log_jail(jail, jail_mechanisms)
    from xenlike.hypervisor.core import Hypervisor
    from xenlike.hypervisor.sched import load_scheduler

    # pCPU n is Linux CPU n, among those this process may use (a cpuset may allow fewer).
    allowed = sorted(os.sched_getaffinity(0))
    pcpus = allowed[: max(1, min(args.pcpus, len(allowed)))]
    hypervisor = Hypervisor(
        run_dir.path,
        args.memory,
        pcpus,
        zygote,
        load_scheduler(args.sched)(pcpus),
        machine=machine,
        commandline=commandline(args),
    )
    hypervisor.jail = jail_report(jail, jail_mechanisms)
    hypervisor.page_sharing = args.page_sharing
    try:
        hypervisor.boot(DOM0_MEMORY_MIB, {"run_dir": str(run_dir.path)})
        run_dir.write_pid(os.getpid())
        hypervisor.run()
    finally:
        hypervisor.close()
        run_dir.clean_sockets()
        run_dir.remove_pid()
        if args.page_sharing:
            ksmd.restore()  # once this host's domains are gone, unless another host still shares pages
        lock.release()  # last: the next host may start once this one's files are cleaned up
    return 0


if __name__ == "__main__":
    sys.exit(main())
