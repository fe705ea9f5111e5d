"""Run a xenlike host: the hypervisor, which starts dom0.

Started by ``xenlike up``; not meant to be run by hand, but it can be:

    python -m xenlike.hypervisor --run-dir DIR [--memory MiB] [--pcpus N] [--sched NAME]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path

from xenlike.hypervisor.zygote import start_zygote
from xenlike.kernel.proc import log_to_file, set_process_name
from xenlike.kernel.rundir import RunDir
from xenlike.public.atomic import check_platform

DOM0_MEMORY_MIB = 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xenlike.hypervisor", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--memory", type=int, required=True, help="host memory for domains, MiB")
    p.add_argument("--pcpus", type=int, default=os.cpu_count(), help="physical CPUs to schedule on")
    p.add_argument(
        "--sched", default="credit", help="the scheduler (entry-point group xenlike.schedulers; default credit)"
    )
    return p.parse_args(argv)


def raise_fd_limit() -> None:
    """Each domain costs the hypervisor a few fds (socket, memfd, ports): allow many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_platform()
    raise_fd_limit()
    from xenlike.hypervisor.sched import available_schedulers, load_scheduler

    if args.sched not in available_schedulers():  # by name only: a plugin is imported after the zygote forks
        print(
            f"xenlike.hypervisor: no scheduler named {args.sched!r} (registered: "
            f"{', '.join(sorted(available_schedulers())) or 'none'})",
            file=sys.stderr,
        )
        return 2
    run_dir = RunDir(args.run_dir)
    # The zygote comes first: nothing below (threads, epoll, zmq) may be inherited by domains.
    zygote = start_zygote()
    set_process_name("xl-hypervisor")
    log_to_file(run_dir.log_path("hypervisor"), "%(asctime)s %(levelname)s %(message)s")
    from xenlike.hypervisor.core import Hypervisor

    # pCPU n is Linux CPU n, among those this process may use (a cpuset may allow fewer).
    allowed = sorted(os.sched_getaffinity(0))
    pcpus = allowed[: max(1, min(args.pcpus, len(allowed)))]
    hypervisor = Hypervisor(run_dir.path, args.memory, pcpus, zygote, load_scheduler(args.sched)(pcpus))
    try:
        hypervisor.boot(DOM0_MEMORY_MIB, {"run_dir": str(run_dir.path)})
        run_dir.write_pid(os.getpid())
        hypervisor.run()
    finally:
        hypervisor.close()
        run_dir.clean_sockets()
        run_dir.remove_pid()
    return 0


if __name__ == "__main__":
    sys.exit(main())
