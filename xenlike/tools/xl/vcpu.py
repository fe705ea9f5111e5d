"""vCPUs (``tools/xl/xl_vcpu.c``): vcpu-list, vcpu-pin and vcpu-set."""

from __future__ import annotations

import argparse

from xenlike.tools.xl.utils import XlError, call
from xenlike.tools.xl_format import format_vcpu_list

__all__ = ["main_vcpu_list", "main_vcpu_pin", "main_vcpu_set"]


def main_vcpu_list(args: argparse.Namespace) -> int:
    """xl vcpu-list [DOMAIN...]: ``Name ID VCPU CPU State Time(s) Affinity (Hard / Soft)``."""
    result = call(args, "vcpu_list", domains=args.domains)
    print(format_vcpu_list(result["vcpus"], result["nr_cpus"]))
    return 0


def main_vcpu_pin(args: argparse.Namespace) -> int:
    """xl vcpu-pin DOMAIN VCPU CPUS: the pCPUs the vCPU (or ``all``) may run on, its hard affinity."""
    call(args, "vcpu_pin", domain=args.domain, vcpu=args.vcpu, cpus=args.cpus)
    return 0


def main_vcpu_set(args: argparse.Namespace) -> int:
    """xl vcpu-set DOMAIN N: N vCPUs online (1 to its maxvcpus); the guest brings them up or down."""
    try:
        count = int(args.count)
    except ValueError:
        raise XlError(
            f"{args.count!r} is not a number of vCPUs (a whole number from 1 to the domain's maxvcpus)"
        ) from None
    call(args, "vcpu_set", domain=args.domain, count=count)
    return 0
