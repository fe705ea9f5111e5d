"""xl's debugging verbs (``tools/xl/xl_misc.c``, ``xl_info.c``, ``xl_vmcontrol.c``): domid, domname,
debug-keys, dump-core, sysrq, trigger."""

from __future__ import annotations

import argparse
import os

from xenlike.tools.xl.utils import XlError, call

__all__ = ["main_domid", "main_domname", "main_debug_keys", "main_dump_core", "main_sysrq", "main_trigger"]

TRIGGERS = ("nmi", "reset", "init", "power", "sleep", "s3resume")


def _rows(args: argparse.Namespace) -> list[dict]:
    return list(call(args, "list"))


def main_domid(args: argparse.Namespace) -> int:
    """xl domid NAME: the domain's id."""
    for row in _rows(args):
        if row["name"] == args.name:
            print(row["domid"])
            return 0
    raise XlError(f"no domain named {args.name!r}; `xenlike list` shows the domains")


def main_domname(args: argparse.Namespace) -> int:
    """xl domname ID: the domain's name."""
    for row in _rows(args):
        if str(row["domid"]) == args.domid:
            print(row["name"])
            return 0
    raise XlError(f"no domain with id {args.domid!r}; `xenlike list` shows the domains")


def main_debug_keys(args: argparse.Namespace) -> int:
    """xl debug-keys KEYS: the hypervisor dumps its state into its console ring; `xenlike dmesg` shows it."""
    call(args, "debug_keys", keys=args.keys)
    return 0


def main_dump_core(args: argparse.Namespace) -> int:
    """xl dump-core DOMAIN FILE: the domain's memory as an ELF core (one PT_LOAD per run of frames)."""
    result = call(args, "dump_core", domain=args.domain, file=args.file, cwd=os.getcwd())
    print(f"{result['file']}: {result['frames']} frames in {result['segments']} PT_LOAD segments")
    return 0


def main_sysrq(args: argparse.Namespace) -> int:
    """xl sysrq DOMAIN LETTER: the guest's kernel handles a magic SysRq letter."""
    call(args, "sysrq", domain=args.domain, letter=args.letter)
    return 0


def main_trigger(args: argparse.Namespace) -> int:
    """xl trigger DOMAIN TRIGGER [VCPU]: nmi dumps the guest's threads; the ACPI triggers are HVM's."""
    call(args, "trigger", domain=args.domain, trigger=args.trigger, vcpu=args.vcpu)
    return 0
