"""``xenlike console`` (``tools/xl/xl_console.c``): attach the terminal to a domain's console.

The console's history is shown first, then its live output; keys go to the
guest's console ring. Ctrl-] (xl console's escape character, or the one
``-e`` gives) or Ctrl-C detaches; the verb fails if the host stops meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from xenlike.kernel.rundir import RunDir
from xenlike.tools.console_stream import ConsoleSubscriber
from xenlike.tools.toolstack_client import ToolstackClient
from xenlike.tools.xl.utils import XlError, raw_terminal, restore_terminal, toolstack

__all__ = ["CTRL_RIGHT_BRACKET", "CONSOLE_TYPES", "attach_consoles", "main_console", "parse_escape"]

CTRL_RIGHT_BRACKET = b"\x1d"  # xl console's escape character
CONSOLE_TYPES = ("pv", "serial", "vuart")  # xl_console.c's -t


def attach_consoles(
    run_dir: RunDir, client: ToolstackClient, domain: str | None
) -> tuple[ConsoleSubscriber, dict[str, Any]]:
    """A live console subscription (one domain's, or every one's) and the toolstack's ``console_attach`` reply."""
    name = None if domain is None else client.call("console_attach", domain=domain)["name"]
    sub = ConsoleSubscriber(run_dir, name)
    try:
        return sub, sub.attach(lambda: client.call("console_attach", domain=name))
    except BaseException:
        sub.close()
        raise


def main_console(args: argparse.Namespace) -> int:
    """xl console [-t TYPE] [-n NUM] [-e CHAR] DOMAIN: output streams, keys go to the guest, Ctrl-] detaches.

    A xenlike guest has one console, a pv one numbered 0 (``hvc_xen``'s), so
    ``-t pv`` and ``-n 0`` name it and anything else is refused. ``create -c``
    comes here with create's arguments, which have none of these options.
    """
    _check_console(getattr(args, "type", None), getattr(args, "num", None))
    escape = parse_escape(getattr(args, "escape", None))
    run_dir = RunDir(args.run_dir)
    with toolstack(args) as client:
        sub, attached = attach_consoles(run_dir, client, args.domain)
        try:
            _attached(run_dir, client, sub, attached, escape)
        finally:
            sub.close()
    return 0


def _check_console(kind: str | None, num: int | None) -> None:
    """xl_console.c's ``-t pv|serial|vuart`` and ``-n NUM``, of which xenlike has pv console 0."""
    if kind is not None and kind not in CONSOLE_TYPES:
        raise XlError(f"-t {kind}: console types are {', '.join(CONSOLE_TYPES)}")
    if kind not in (None, "pv"):
        raise XlError(f"-t {kind}: xenlike guests have one pv console (use -t pv, or no -t)")
    if num not in (None, 0):
        raise XlError(f"-n {num}: xenlike guests have one pv console, number 0")


def parse_escape(text: str | None) -> bytes:
    """xenconsole's ``--escape``: one character, or ``^X`` for a control character; default Ctrl-]."""
    if text is None:
        return CTRL_RIGHT_BRACKET
    raw = text.encode()
    if len(raw) == 2 and raw[:1] == b"^":
        return bytes([raw[1] & 0x1F])
    if len(raw) == 1:
        return raw
    raise XlError(f"-e {text}: expected one character, or ^ and a letter for a control character (e.g. ^])")


def _writer(tty: bool) -> Callable[[bytes], None]:
    """Console bytes to stdout; a raw terminal needs CR LF where the guest wrote LF."""
    out = sys.stdout.buffer

    def show(data: bytes) -> None:
        out.write(data.replace(b"\n", b"\r\n") if tty else data)
        out.flush()

    return show


def _attached(
    run_dir: RunDir, client: ToolstackClient, sub: ConsoleSubscriber, attached: dict[str, Any], escape: bytes
) -> None:
    """The history, then output and keys on a raw terminal until the escape or Ctrl-C; the terminal is restored."""
    tty = sys.stdin.isatty()
    show = _writer(tty)
    saved = raw_terminal() if tty else None  # first: keys typed while the history shows reach the guest
    try:
        show(attached["history"])
        for message in sub.receive(0):
            show(message.data)
        _relay(run_dir, client, sub, attached["name"], show, escape)
    except KeyboardInterrupt:
        pass
    finally:
        if saved is not None:
            restore_terminal(saved)
            print()


def _relay(
    run_dir: RunDir,
    client: ToolstackClient,
    sub: ConsoleSubscriber,
    name: str,
    show: Callable[[bytes], None],
    escape: bytes,
) -> None:
    """Move output to the terminal and keys to the guest until the escape character; XlError if the host stops."""
    import zmq

    stdin_fd = sys.stdin.fileno()
    poller = zmq.Poller()
    poller.register(sub.sock, zmq.POLLIN)
    poller.register(stdin_fd, zmq.POLLIN)
    while True:
        ready = dict(poller.poll(500))
        if sub.sock in ready:
            for message in sub.receive(0):
                show(message.data)
        if stdin_fd in ready and not _forward_keys(client, name, stdin_fd, poller, escape):
            return
        if not ready and run_dir.running_pid() is None:
            raise XlError("the host stopped")


def _forward_keys(
    client: ToolstackClient, name: str, stdin_fd: int, poller: Any, escape: bytes = CTRL_RIGHT_BRACKET
) -> bool:
    """Send what was typed to the guest; False once the escape character was typed (what came before it is sent).

    At the end of stdin's input the console stays attached, output only.
    """
    keys = os.read(stdin_fd, 1024)
    if not keys:
        poller.unregister(stdin_fd)
        return True
    keys, escaped, _ = keys.partition(escape)
    if keys:
        client.call("console_input", domain=name, data=keys)
    return not escaped
