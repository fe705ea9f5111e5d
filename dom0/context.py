"""What a dom0 service may use, handed to it by ``dom0.main`` (as Linux hands a driver its ``xenbus_device``).

A back end gets a :class:`BackendContext`, not the whole dom0: hypercalls, dom0's
event loop, xenstore, and, by domid, the one thing of another domain a privileged
back end may reach, its memory (``xenforeignmemory``), and its name for logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenlike.kernel.events import EventLoop

from .xenstored import LocalXenstore

if TYPE_CHECKING:
    from .netback.forward import Forwards
    from .xenbus_backend import XenbusBackend
    from .xenconsoled import Xenconsoled
    from .xenstore_service import XenstoreService

__all__ = ["BackendContext", "BuilderContext"]


@dataclass(frozen=True)
class BackendContext:
    """The services a back-end bus and its drivers may use."""

    hypercall: Callable[..., tuple[Any, list[int]]]  # dom0's hypercall(op, **args) -> (result, fds)
    loop: EventLoop  # dom0's event loop: workers' control sockets are read from it
    xs: LocalXenstore  # dom0's xenstore connection
    watcher: LocalXenstore  # the bus's own connection, whose watch events it pops
    foreign_memory_fd: Callable[[int], int]  # a domain's memfd (dom0 keeps it; dup it to hand it on)
    domain_name: Callable[[int], str]  # a domain's name, for logs ("?" if unknown)
    log_path: Path  # where a worker logs (dom0's log)


@dataclass(frozen=True)
class BuilderContext:
    """The services the domain builder uses (libxl's ``libxl__gc`` and its ctx, in spirit)."""

    hypercall: Callable[..., tuple[Any, list[int]]]
    multicall: Callable[..., list[tuple[Any, list[int]]]]  # (calls, undo=None) -> results
    adopt_port: Callable[[dict, list[int]], int]  # install a port dom0 bound on its loop
    close_port: Callable[[int], None]
    xs: LocalXenstore
    xenstore_service: XenstoreService  # introduces a domain's xenstore ring
    xenconsoled: Xenconsoled
    backends: XenbusBackend  # the back-end bus: a domain's devices go with it
    forwards: Forwards | None = None  # the relays of domains' ``ports`` (None: no back-end network)
