"""Memory (``tools/xl/xl_mem.c``): a domain's balloon target and its maximum."""

from __future__ import annotations

import argparse
import re

from xenlike.tools.xl.utils import XlError, call

__all__ = ["main_mem_set", "main_mem_max", "parse_mem_size_kb"]

_UNITS = {"t": 1 << 30, "g": 1 << 20, "": 1 << 10, "m": 1 << 10, "k": 1}


def parse_mem_size_kb(text: str) -> int:
    """xl's ``parse_mem_size_kb``: a number with an optional unit t, g, m (the default), k or b; in KiB."""
    match = re.fullmatch(r"(\d+)([tgmkbTGMKB]?)", text.strip())
    if match is None:
        raise XlError(f"{text!r} is not a memory size (a number, then t, g, m, k or b; m if none)")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number // 1024 if unit == "b" else number * _UNITS[unit]


def main_mem_set(args: argparse.Namespace) -> int:
    """xl mem-set DOMAIN MEM: the balloon's target; the guest gives memory back or takes it again."""
    result = call(args, "mem_set", domain=args.domain, kb=parse_mem_size_kb(args.mem))
    print(f"xenlike: {args.domain}'s target is {result['target_kb'] // 1024} MiB")
    return 0


def main_mem_max(args: argparse.Namespace) -> int:
    """xl mem-max DOMAIN MEM: the most the domain may hold."""
    result = call(args, "mem_max", domain=args.domain, kb=parse_mem_size_kb(args.mem))
    print(f"xenlike: {args.domain}'s maximum is {result['max_kb'] // 1024} MiB")
    return 0
