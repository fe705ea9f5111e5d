"""Live migration (``tools/xl/xl_migrate.c``): a running domain to another host.

The target is another xenlike host started with ``up --listen ADDR:PORT``; its
key (``xenlike info`` there) proves to it that the stream comes from someone it
trusts. On a terminal a progress line follows the rounds; every migration ends
with one summary line.
"""

from __future__ import annotations

import argparse
import sys

from xenlike.tools.toolstack_client import ToolstackError
from xenlike.tools.xl.saverestore import summary_line
from xenlike.tools.xl.utils import XlError, toolstack

__all__ = ["main_migrate", "MIGRATE_TIMEOUT_S", "progress_line"]

MIGRATE_TIMEOUT_S = 600.0


def progress_line(row: dict) -> str:
    """One round as the progress line shows it."""
    what = "stop-and-copy" if row.get("final") else f"round {row['round']}"
    return (
        f"xenlike: {what}: {row['pages']} pages ({row['pages'] * 4096 / (1 << 20):.1f} MiB) at "
        f"{row['mib_s']:.0f} MiB/s, {row['dirty']} dirtied meanwhile"
    )


def main_migrate(args: argparse.Namespace) -> int:
    """xl migrate DOMAIN HOST: pre-copy rounds while the guest runs, then a short stop-and-copy."""
    tty = sys.stderr.isatty()
    with toolstack(args) as client:
        call_id = client.send(
            "migrate",
            domain=args.domain,
            host=args.host,
            key=args.key,
            stop_and_copy=args.stop_and_copy,
            max_rounds=args.max_rounds,
            target_dirty=args.target_dirty,
        )
        while True:
            message = client.receive(MIGRATE_TIMEOUT_S)
            if message is None:
                raise XlError(f"the toolstack did not finish the migration within {MIGRATE_TIMEOUT_S:g}s")
            if message.get("id") != call_id:
                continue
            event = message.get("event")
            if event is not None:
                if "note" in event:
                    print(f"xenlike: {event['note']}", file=sys.stderr)
                elif tty:
                    print("\r\033[K" + progress_line(event["progress"]), end="", file=sys.stderr, flush=True)
                continue
            if tty:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            if not message.get("ok"):
                raise ToolstackError(message.get("error", "refused"))
            result = message["result"]
            break
    line = summary_line("migrated", result)
    ratio = result["pages"] / max(1, result["nr_frames"])
    print(f"{line}, {ratio:.2f} of its memory, now domain {result['domid']} on {args.host}")
    return 0
