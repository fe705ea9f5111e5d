"""``xenlike top``: xentop (``tools/xentop/xentop.c``, which ``xl top`` runs).

A frame every ``-d`` seconds, ``-i`` times (default: until q or Ctrl-C). On a
terminal each frame replaces the last on the alternate screen (as curses'
``initscr``/``endwin``); with ``-b``, or when stdin or stdout is not a
terminal, frames are printed one after the other without the summary lines.
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Iterable

from xenlike.tools.toolstack_client import ToolstackClient
from xenlike.tools.xl.utils import XlError, raw_terminal, restore_terminal, toolstack
from xenlike.tools.xl_format import format_xentop

__all__ = ["main_top"]

ENTER_SCREEN, LEAVE_SCREEN, CLEAR_SCREEN = "\x1b[?1049h", "\x1b[?1049l", "\x1b[H\x1b[2J"


def main_top(args: argparse.Namespace) -> int:
    """xentop [-d SECONDS] [-b] [-i N] [-f] [-n] [-x]."""
    if args.delay < 0:
        raise XlError(f"-d {args.delay:g}: the delay cannot be negative")
    if args.iterations is not None and args.iterations < 1:
        raise XlError(f"-i {args.iterations}: expected at least one iteration")
    on_screen = not args.batch and sys.stdin.isatty() and sys.stdout.isatty()
    frames = range(args.iterations) if args.iterations is not None else itertools.count()
    with toolstack(args) as client:
        next_frame = _sampler(client, args.full_name, summary=on_screen, networks=args.networks, vbds=args.vbds)
        try:
            if on_screen:
                _screen(next_frame, frames, args.delay)
            else:
                _batch(next_frame, frames, args.delay)
        except KeyboardInterrupt:
            pass  # as xentop's SIGINT handler: stop, successfully
    return 0


def _sampler(
    client: ToolstackClient, full_names: bool, summary: bool, networks: bool = False, vbds: bool = False
) -> Callable[[], str]:
    """A function returning the next frame: one ``top`` request, CPU(%) against the sample before."""
    previous: dict | None = None

    def next_frame() -> str:
        nonlocal previous
        sample = client.call("top")
        frame = format_xentop(sample, previous, full_names=full_names, summary=summary, networks=networks, vbds=vbds)
        previous = sample
        return frame

    return next_frame


def _batch(next_frame: Callable[[], str], frames: Iterable[int], delay: float) -> None:
    """xentop -b: frames printed one after the other, ``delay`` seconds apart."""
    for number in frames:
        if number:
            time.sleep(delay)
        print(next_frame(), flush=True)


def _screen(next_frame: Callable[[], str], frames: Iterable[int], delay: float) -> None:
    """xentop on a terminal: each frame replaces the last; any key redraws at once, q or Esc quits."""
    import tty

    stdin_fd = sys.stdin.fileno()
    saved = raw_terminal(tty.setcbreak)  # keys one at a time, unechoed; Ctrl-C still interrupts
    sys.stdout.write(ENTER_SCREEN)
    try:
        for number in frames:
            if number and _quit_pressed(stdin_fd, delay):
                break
            height = shutil.get_terminal_size().lines
            sys.stdout.write(CLEAR_SCREEN + "\n".join(next_frame().splitlines()[: max(1, height - 1)]))
            sys.stdout.flush()
    finally:
        sys.stdout.write(LEAVE_SCREEN)
        sys.stdout.flush()
        restore_terminal(saved)


def _quit_pressed(stdin_fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for a key: True for q, Q or a lone Esc (an arrow key's Esc sequence is not one)."""
    ready, _, _ = select.select([stdin_fd], [], [], timeout)
    if not ready:
        return False
    keys = os.read(stdin_fd, 64)
    return keys[:1] in (b"q", b"Q") or keys == b"\x1b"
