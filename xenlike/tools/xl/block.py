"""Virtual block devices (``tools/xl/xl_block.c``): block-attach, block-detach, block-list."""

from __future__ import annotations

import argparse
import os

from xenlike.tools.xl.utils import call
from xenlike.tools.xl_format import format_block_list

__all__ = ["main_block_attach", "main_block_detach", "main_block_list"]

DETACH_TIMEOUT_S = 60


def main_block_attach(args: argparse.Namespace) -> int:
    """xl block-attach DOMAIN SPEC: hotplug a disk given in xl-disk-configuration(5) syntax.

    A relative ``target`` is the caller's: it is taken relative to the current directory, as
    xl (which runs where libxl opens the image) takes it.
    """
    result = call(args, "block_attach", domain=args.domain, spec=args.spec, cwd=os.getcwd())
    print(f"xenlike: attached {result['vdev']} to {args.domain}")
    return 0


def main_block_detach(args: argparse.Namespace) -> int:
    """xl block-detach DOMAIN VDEV: close the device with the front end, forcing it if the front end does not."""
    result = call(args, "block_detach", domain=args.domain, vdev=args.vdev, timeout=DETACH_TIMEOUT_S)
    print(f"xenlike: detached {result['vdev']} from {args.domain}" + (" (forced)" if result.get("forced") else ""))
    return 0


def main_block_list(args: argparse.Namespace) -> int:
    """xl block-list DOMAIN: ``Vdev BE handle state evt-ch ring-ref BE-path``."""
    print(format_block_list(call(args, "block_list", domain=args.domain)))
    return 0
