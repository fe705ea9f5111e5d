"""Scheduler parameters (``tools/xl/xl_sched.c``): sched-credit."""

from __future__ import annotations

import argparse

from xenlike.tools.xl.utils import XlError, call
from xenlike.tools.xl_format import format_sched_credit

__all__ = ["main_sched_credit"]


def main_sched_credit(args: argparse.Namespace) -> int:
    """xl sched-credit: with -w/-c set a domain's weight/cap (printing nothing), else show them."""
    if (args.weight is not None or args.cap is not None) and args.domain is None:
        raise XlError("-w and -c need a domain: sched-credit -d DOMAIN -w WEIGHT")
    result = call(args, "sched_credit", domain=args.domain, weight=args.weight, cap=args.cap)
    if "set" not in result:
        print(format_sched_credit(result["pool"] if args.domain is None else None, result["domains"]))
    return 0
