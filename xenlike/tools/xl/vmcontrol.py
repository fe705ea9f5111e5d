"""A domain's life (``tools/xl/xl_vmcontrol.c``): create, destroy, shutdown, reboot, pause, unpause, rename."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xenlike.tools.xl.console import main_console
from xenlike.tools.xl.utils import XlError, call

__all__ = [
    "main_create",
    "running_domain",
    "main_destroy",
    "main_shutdown",
    "main_reboot",
    "main_pause",
    "main_unpause",
    "main_rename",
]

# What `shutdown`/`reboot` report: when waited for, and when only asked.
_DONE = {"shutdown": "shut down", "reboot": "rebooted"}
_ASKED = {"shutdown": "asked to shut down", "reboot": "asked to reboot"}
FOREVER_S = 365 * 86400


def main_create(args: argparse.Namespace) -> int:
    """xl create: a domain from an xl.cfg file and ``KEY=VALUE`` overrides; ``-p`` paused, ``-c`` attached.

    The toolstack answers once the guest reported its workload started: a guest
    that did not start is an error naming the domain and the guest's reason, and
    ``-c`` then attaches to nothing.
    """
    from xenlike.tools.config import load_domain_config

    config = load_domain_config(Path(args.config), overrides=args.overrides)
    for warning in config.warnings:
        print(f"xenlike: warning: {warning}", file=sys.stderr)
    result = call(args, "create", config=config.to_dict(), paused=args.paused)
    print(f"xenlike: created {result['name']} (domain {running_domain(result)})")
    if args.console:
        args.domain = result["name"]
        return main_console(args)
    return 0


def running_domain(result: dict[str, Any]) -> int:
    """The domain a ``create`` reply leaves running; XlError with the guest's reason when none is.

    A start that was not plain (on_crash restarted the guest, or it has not
    reported yet) is told on stderr as a warning.
    """
    start = result.get("start")
    if start is None:  # created paused: nothing runs yet to report
        return int(result["domid"])
    if start["state"] == "failed":
        raise XlError(start["message"])
    if start["message"]:
        print(f"xenlike: warning: {start['message']}", file=sys.stderr)
    return int(start["domid"])


def main_destroy(args: argparse.Namespace) -> int:
    """xl destroy [-f]: end the domain at once, as pulling the plug.

    ``-f`` is xl's leave to destroy domain 0, which only a toolstack running
    apart from domain 0 could use; xenlike's runs in it, so dom0 refuses
    Domain-0 whatever the flag.
    """
    call(args, "destroy", domain=args.domain)
    return 0


def main_shutdown(args: argparse.Namespace) -> int:
    """xl shutdown [-a] [-w] [-F]: write ``control/shutdown = poweroff``; ``-w`` waits until the domains have
    shut down. ``-F`` (an ACPI power event for an HVM guest without PV drivers) is never needed: every xenlike
    guest is PV, which ``libxl_domain_shutdown`` always asks through the control node."""
    return _request(args, "shutdown")


def main_reboot(args: argparse.Namespace) -> int:
    """xl reboot [-a] [-w] [-F]: write ``control/shutdown = reboot``; the domain's ``on_reboot`` decides what
    follows. ``-w`` waits until the domains have shut down to reboot; ``-F`` as for shutdown."""
    return _request(args, "reboot")


def _request(args: argparse.Namespace, request: str) -> int:
    """main_shutdown_or_reboot (xl_vmcontrol.c): one domain, or every one with ``-a``."""
    if not args.all and args.domain is None:
        raise XlError(f"{request} needs a domain (or -a for all)")
    every, wait = args.all, args.wait
    result = call(args, request, timeout=FOREVER_S if wait else None, domain=args.domain, all=every, wait=wait)
    who = "domains " + ", ".join(map(str, result["domids"])) if every else args.domain
    print(f"xenlike: {who} {_DONE[request] if wait else _ASKED[request]}")
    return 0


def main_pause(args: argparse.Namespace) -> int:
    """xl pause: the domain keeps its memory and gets no CPU until unpaused."""
    call(args, "pause", domain=args.domain)
    return 0


def main_unpause(args: argparse.Namespace) -> int:
    """xl unpause."""
    call(args, "unpause", domain=args.domain)
    return 0


def main_rename(args: argparse.Namespace) -> int:
    """xl rename: the domain's new name, in the toolstack and in xenstore."""
    call(args, "rename", domain=args.domain, name=args.new_name)
    return 0
