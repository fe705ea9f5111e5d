"""xenlike inject: break one part of the host on purpose, with a documented outcome (no xl counterpart).

Each fault is injected by dom0's toolstack (``dom0/faults.py`` documents what it
does and what follows) and stays until ``--clear``; ``--list`` shows them.
"""

from __future__ import annotations

import argparse

from xenlike.tools.xl.utils import XlError, call

__all__ = ["main_inject", "KINDS", "KINDS_HELP"]

KINDS = {
    "backend-kill": "DOMAIN DEVICE: SIGKILL the device's back-end worker (a vbd's is restarted and blkfront "
    "re-issues what was in flight; a vif closes)",
    "backend-freeze": "DOMAIN DEVICE: SIGSTOP it until --clear (requests wait, none lost)",
    "evtchn-drop": "DOMAIN PORT: lose what DOMAIN sends on its port PORT",
    "evtchn-delay": "DOMAIN PORT MS: deliver it MS later",
    "xs-refuse": "PATH [ERRNO]: guests' xenstore requests at or below PATH fail (default EACCES)",
    "xs-delay": "PATH MS: ...are handled MS later, in order",
    "vcpu-freeze": "DOMAIN VCPU: keep one vCPU stopped until --clear",
    "sector-eio": "DOMAIN DEVICE FIRST[-LAST]: blkback fails requests touching those sectors with EIO "
    "until --clear (split disks)",
    "ring-corrupt": "DOMAIN DEVICE slot|index: scribble the next request slot (answered EOPNOTSUPP, the ring "
    "goes on) or req_prod (blkback stops serving the ring: the disk closes)",
}
KINDS_HELP = "; ".join(f"{kind} {text}" for kind, text in KINDS.items())


def main_inject(args: argparse.Namespace) -> int:
    """xenlike inject KIND ARGS... | --list | --clear [ID]."""
    if args.list:
        for fault in call(args, "inject_list"):
            _show(fault)
        return 0
    if args.clear:
        fault_id = args.kind
        if fault_id is not None and not fault_id.isdigit():
            raise XlError(f"--clear takes a fault's id (`xenlike inject --list`), not {fault_id!r}")
        cleared = call(args, "inject_clear", id=int(fault_id) if fault_id else None)["cleared"]
        print(f"cleared {', '.join(f'#{i}' for i in cleared) or 'nothing'}")
        return 0
    if args.kind is None:
        raise XlError("name a fault to inject (`xenlike inject --help` lists them), or --list, or --clear")
    if args.kind not in KINDS:
        raise XlError(f"no fault {args.kind!r}: the faults are {', '.join(KINDS)}")
    _show(call(args, "inject", kind=args.kind, words=args.words))
    return 0


def _show(fault: dict) -> None:
    state = "" if fault.get("active", True) else " (done)"
    print(f"#{fault['id']} {fault['kind']} {fault['target']}{state}\n    {fault['outcome']}")
