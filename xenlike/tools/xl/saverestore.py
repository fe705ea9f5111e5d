"""Save and restore (``tools/xl/xl_saverestore.c``): a domain to an image file and back.

The image is Xen's migration stream v2 laid out as ``xenlike.public.migration_stream``
says; dom0 writes and reads it, so FILE is a path on the host (a relative one is the
caller's, taken from the current directory).
"""

from __future__ import annotations

import argparse
import os
import sys

from xenlike.tools.xl.utils import XlError, call

__all__ = ["main_save", "main_restore", "summary_line", "SAVE_TIMEOUT_S"]

# A save waits for the guest to suspend (30 s at most), then for its image to be written.
SAVE_TIMEOUT_S = 600.0


def summary_line(verb: str, result: dict) -> str:
    """The one line every save, restore and migration ends with: rounds, pages, MiB, total time, downtime."""
    parts = [f"{result.get('rounds', 1)} round(s)", f"{result['pages']} pages"]
    if result.get("bytes") is not None:
        parts.append(f"{result['bytes'] / (1 << 20):.1f} MiB")
    parts.append(f"total {result['total_ms']:.0f} ms")
    if result.get("downtime_ms") is not None:
        parts.append(f"downtime {result['downtime_ms']:.0f} ms")
    return f"xenlike: {verb} {result['name']}: " + ", ".join(parts)


def main_save(args: argparse.Namespace) -> int:
    """xl save [-c] [-p] DOMAIN FILE: suspend the domain, write its image to FILE, destroy it.

    ``-c`` leaves it running (a checkpoint), ``-p`` leaves it paused. A guest that
    refuses or does not suspend runs on, and the save fails saying why.
    """
    if args.checkpoint and args.paused:
        raise XlError("save takes -c (keep it running) or -p (keep it paused), not both")
    result = call(
        args,
        "save",
        timeout=SAVE_TIMEOUT_S,
        domain=args.domain,
        file=args.file,
        cwd=os.getcwd(),
        checkpoint=args.checkpoint,
        paused=args.paused,
    )
    print(summary_line("saved", result))
    if result["kept"]:
        print(f"xenlike: {result['name']} {'is paused' if args.paused else 'runs on'}", file=sys.stderr)
    return 0


def main_restore(args: argparse.Namespace) -> int:
    """xl restore [-p] FILE: build the domain FILE holds and let it run on where it was saved (``-p``: paused)."""
    result = call(args, "restore", timeout=SAVE_TIMEOUT_S, file=args.file, cwd=os.getcwd(), paused=args.paused)
    start = result.get("start")
    if start is not None and start["state"] == "failed":
        raise XlError(start["message"])
    if start is not None and start["message"]:
        print(f"xenlike: warning: {start['message']}", file=sys.stderr)
    for record in result.get("skipped", []):
        print(f"xenlike: warning: the image's optional record {record} is unknown here; skipped", file=sys.stderr)
    print(summary_line("restored", result) + f" (domain {result['domid']})")
    return 0
