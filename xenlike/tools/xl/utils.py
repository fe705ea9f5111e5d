"""What every verb family shares (``tools/xl/xl_utils.c``): the error a verb reports,
its toolstack connection, registered plugins, and the terminal's raw mode.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable
from typing import Any

from xenlike.kernel.rundir import RunDir
from xenlike.tools.toolstack_client import ToolstackClient

__all__ = ["XlError", "toolstack", "call", "registered", "raw_terminal", "restore_terminal"]


class XlError(Exception):
    """A verb's failure, reported in one line and a non-zero exit (xl's ``fprintf(stderr, ...); return 1``)."""


def toolstack(args: argparse.Namespace, timeout: float = 60.0) -> ToolstackClient:
    """A client of the toolstack of the host in ``--run-dir``; HostNotRunning when none runs."""
    return ToolstackClient(RunDir(args.run_dir), timeout=timeout)


def call(args: argparse.Namespace, op: str, timeout: float | None = None, **kw: Any) -> Any:
    """One toolstack request on a connection of its own; ToolstackError when it is refused."""
    with toolstack(args) as client:
        return client.call(op, timeout=timeout, **kw)


def registered(group: str) -> dict[str, str]:
    """The names registered in an entry-point group and the ``module:attr`` each stands for.

    The CLI reads the groups (``xenlike.workloads``, ``xenlike.schedulers``)
    itself rather than importing the guest or hypervisor code that loads them.
    """
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}


def raw_terminal(mode: Callable[[int], None] | None = None) -> list:
    """Put stdin's terminal in raw mode (or ``mode``, e.g. ``tty.setcbreak``); returns the settings to restore.

    The change takes effect at once (``TCSANOW``), so keys already typed are kept, not flushed.
    """
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    if mode is None:
        tty.setraw(fd, termios.TCSANOW)
    else:
        mode(fd)
    return saved


def restore_terminal(saved: list) -> None:
    """Give stdin's terminal back the settings :func:`raw_terminal` returned."""
    import termios

    termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
