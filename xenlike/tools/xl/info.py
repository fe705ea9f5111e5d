"""What xl reports (``tools/xl/xl_info.c``): list, info, uptime, dmesg; and the registered workloads."""

from __future__ import annotations

import argparse
import json
import platform

from xenlike.kernel.rundir import RunDir
from xenlike.tools.xl.utils import call, registered
from xenlike.tools.xl_format import format_info, format_list, format_uptime

__all__ = ["WORKLOADS_GROUP", "main_list", "main_info", "main_uptime", "main_dmesg", "main_workloads"]

WORKLOADS_GROUP = "xenlike.workloads"


def main_list(args: argparse.Namespace) -> int:
    """xl list [-l] [DOMAIN]: xl's columns, or with ``-l`` each domain's information and config as JSON."""
    rows = call(args, "list", domain=args.domain, long=args.long)
    if args.long:
        print(json.dumps([{"domid": r["domid"], "name": r["name"], "info": r["info"], "config": r["config"]}
                          for r in rows], indent=4, default=str))
    else:
        print(format_list(rows))
    return 0


def main_info(args: argparse.Namespace) -> int:
    """xl info: the host's node information, physinfo and version, as ``key : value`` lines."""
    physinfo = call(args, "info")
    print(format_info(physinfo, {"host": platform.node(), "release": platform.release(), "machine": platform.machine(),
                                 "xen_scheduler": physinfo.get("sched", "credit"),
                                 "run_dir": str(RunDir(args.run_dir).path)}))
    return 0


def main_uptime(args: argparse.Namespace) -> int:
    """xl uptime [-s] [DOMAIN]: ``Name ID Uptime``, or with ``-s`` one ``uptime(1)``-like line per domain."""
    print(format_uptime(call(args, "uptime", domain=args.domain), short=args.short))
    return 0


def main_dmesg(args: argparse.Namespace) -> int:
    """xl dmesg [-c]: the hypervisor's log; ``-c`` clears it after reading."""
    for line in call(args, "dmesg", clear=args.clear):
        print(line)
    return 0


def main_workloads(args: argparse.Namespace) -> int:
    """The workloads a ``workload =`` key may name: the ``xenlike.workloads`` entry points."""
    for name, target in sorted(registered(WORKLOADS_GROUP).items()):
        print(f"{name:<12} {target}")
    return 0
