"""Console operations: ``xl console``'s attach and keyboard input (``tools/xl/xl_console.c``), through xenconsoled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .request import Request

if TYPE_CHECKING:
    from .server import Toolstack

__all__ = ["console_attach", "console_input"]


def console_attach(ts: Toolstack, request: Request) -> Any:
    """Mark the console stream for an attaching client and return the recent output (``domain`` None: every console)."""
    if request.args.get("domain") is None:
        return ts.xenconsoled.attach(None)
    built = ts.lifecycle.find(request.args["domain"])
    return {"name": built.name, "domid": built.domid, **ts.xenconsoled.attach(built.domid)}


def console_input(ts: Toolstack, request: Request) -> Any:
    built = ts.lifecycle.find(request.args["domain"])
    data = request.args["data"]
    data = data if isinstance(data, bytes) else str(data).encode()
    return {"written": ts.xenconsoled.send_input(built.domid, data)}
