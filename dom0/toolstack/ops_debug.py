"""Debugging operations: ``debug-keys``, ``dump-core``, ``sysrq``, ``trigger`` (``tools/xl/xl_misc.c``,
``xl_vmcontrol.c``'s ``main_dump_core``, libxl's ``libxl_send_debug_keys``, ``libxl_send_sysrq``,
``libxl_send_trigger``, ``libxl_domain_core_dump``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from xenlike.public.xs_wire import XsError, home_path

from ..dumpcore import write_core
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from .server import Toolstack

__all__ = ["debug_keys", "dump_core", "sysrq", "trigger"]

log = logging.getLogger("dom0.toolstack")


def debug_keys(ts: Toolstack, request: Request) -> Any:
    """xl debug-keys KEYS: the hypervisor dumps its state into its console ring (``xl dmesg``)."""
    return ts.hypercall("sysctl", cmd="debug_keys", keys=str(request.args["keys"]))[0]


def dump_core(ts: Toolstack, request: Request) -> Any:
    """xl dump-core DOMAIN FILE: the domain's memory as an ELF core, written by dom0, which maps it.

    The domain is paused while its memory is copied (unless it already was), so
    the core is one moment's; FILE is taken from the caller's directory.
    """
    built = ts.lifecycle.find(request.args["domain"])
    path = str(request.args["file"])
    cwd = request.args.get("cwd")
    if isinstance(cwd, str) and os.path.isabs(cwd) and not os.path.isabs(path):
        path = os.path.normpath(os.path.join(cwd, path))  # the caller's, not dom0's
    info = ts.hypercall("domctl", cmd="getdomaininfo", domid=built.domid)[0][0]
    paused_here = not info.get("paused")
    if paused_here:
        ts.hypercall("domctl", cmd="pausedomain", domid=built.domid)
    try:
        runs = write_core(
            path,
            built.memory.fd,
            built.memory.nr_frames,
            {"domid": built.domid, "name": built.name, "uuid": built.uuid},
        )
    except OSError as exc:
        raise ToolstackError(f"cannot write the core of {built.name!r} to {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ToolstackError(f"cannot dump {built.name!r}: {exc}") from None
    finally:
        if paused_here:
            ts.hypercall("domctl", cmd="unpausedomain", domid=built.domid)
    frames = sum(run.count for run in runs)
    log.info("%s: core dumped to %s (%d frames in %d runs)", built.label, path, frames, len(runs))
    return {"file": path, "frames": frames, "segments": len(runs)}


def sysrq(ts: Toolstack, request: Request) -> Any:
    """xl sysrq DOMAIN LETTER: the letter goes to the guest's ``control/sysrq``; its kernel handles it."""
    built = ts.lifecycle.find(request.args["domain"])
    letter = str(request.args["letter"])
    if len(letter) != 1 or not letter.isprintable():
        raise ToolstackError(f"a sysrq is one letter, not {letter!r} (h: the guest prints the letters it knows)")
    try:
        ts.xs.write(f"{home_path(built.domid)}/control/sysrq", letter)
    except XsError as exc:
        raise ToolstackError(f"cannot send sysrq to {built.name!r}: {exc}") from None
    return {}


def trigger(ts: Toolstack, request: Request) -> Any:
    """xl trigger DOMAIN TRIGGER [VCPU]: XEN_DOMCTL_sendtrigger (an NMI; the others are HVM's)."""
    built = ts.lifecycle.find(request.args["domain"])
    return ts.hypercall(
        "domctl",
        cmd="sendtrigger",
        domid=built.domid,
        trigger=str(request.args["trigger"]),
        vcpu=int(request.args.get("vcpu") or 0),
    )[0]
