"""The xenstore-* tools (``xenstore_client.c``) as verbs: xenstore-ls, -read, -write, -rm, -watch."""

from __future__ import annotations

import argparse

from xenlike.tools.toolstack_client import ToolstackClient, ToolstackError
from xenlike.tools.xl.utils import call, toolstack

__all__ = ["main_xenstore_ls", "main_xenstore_read", "main_xenstore_write", "main_xenstore_rm", "main_xenstore_watch"]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def main_xenstore_ls(args: argparse.Namespace) -> int:
    """xenstore-ls [-p] [PATH]: the tree below PATH, one ``name = "value"`` per node, indented by depth."""
    for node in call(args, "xenstore_ls", path=args.path):
        perms = f"  . . . . ({node['perms']})" if args.perms else ""
        print(f'{" " * node["depth"]}{node["name"]} = "{_text(node["value"])}"{perms}')
    return 0


def main_xenstore_read(args: argparse.Namespace) -> int:
    """xenstore-read PATH."""
    print(_text(call(args, "xenstore_read", path=args.path)))
    return 0


def main_xenstore_write(args: argparse.Namespace) -> int:
    """xenstore-write PATH VALUE."""
    call(args, "xenstore_write", path=args.path, value=args.value)
    return 0


def main_xenstore_rm(args: argparse.Namespace) -> int:
    """xenstore-rm PATH: the node and its children."""
    call(args, "xenstore_rm", path=args.path)
    return 0


def main_xenstore_watch(args: argparse.Namespace) -> int:
    """xenstore-watch PATH: print the path of every change at or below PATH until Ctrl-C, then unwatch."""
    with toolstack(args) as client:
        watch_id = None
        try:
            for event in client.stream("xenstore_watch", path=args.path):
                if "started" in event:
                    watch_id = event["watch_id"]
                else:
                    print(event["path"], flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            if watch_id is not None:
                _unwatch(client, watch_id)
    return 0


def _unwatch(client: ToolstackClient, watch_id: int) -> None:
    try:
        client.call("xenstore_unwatch", timeout=2, watch_id=watch_id)
    except ToolstackError:
        pass  # the host went away: so did the watch
