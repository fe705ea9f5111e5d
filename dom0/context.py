"""What a dom0 service may use, handed to it by ``dom0.main`` (as Linux hands a driver its ``xenbus_device``).

A back end gets a :class:`BackendContext`, not the whole dom0: hypercalls, dom0's
event loop, xenstore, and, by domid, the one thing of another domain a privileged
back end may reach, its memory (``xenforeignmemory``), and its name for logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xenlike.kernel.events import EventLoop

from .xenstored import LocalXenstore

__all__ = ["BackendContext"]


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
