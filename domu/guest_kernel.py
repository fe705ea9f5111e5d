"""What a front-end driver may use of its guest kernel (Linux: a driver's ``xenbus_device`` plus the kernel's services).

Written down as :class:`typing.Protocol` classes, so a front end (and the
front-end bus) names the interface it depends on, not ``domu.kernel.Kernel``,
and tests can drive it with something smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from xenlike.kernel.events import EventLoop
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import HypercallClient
from xenlike.kernel.memory import GuestMemory, PageAllocator

__all__ = ["GuestKernel", "GuestXenstore", "GuestTransaction", "WatchCallback"]

WatchCallback = Callable[[str, str], None]  # (path, token)


class GuestTransaction(Protocol):
    """One xenstore transaction (``xenbus_transaction_start`` .. ``_end``)."""

    def read(self, path: str) -> bytes: ...

    def write(self, path: str, value: bytes | str) -> None: ...


class GuestXenstore(Protocol):
    """The guest's xenstore client (``xenbus_xs.c``), paths relative to its home or absolute.

    Blocking calls are for threads other than the event loop's; the ``*_async``
    ones are for the loop thread, which delivers the replies.
    """

    def read_str(self, path: str) -> str | None: ...

    def write(self, path: str, value: bytes | str) -> None: ...

    def directory(self, path: str) -> list[str]: ...

    def watch(self, path: str, token: str, callback: WatchCallback) -> None: ...

    def watch_async(self, path: str, token: str, callback: WatchCallback) -> None: ...

    def unwatch(self, path: str, token: str) -> None: ...

    def request_async(self, msg_type: int, payload: bytes, callback: Callable[[int, bytes], None]) -> None: ...

    def transaction(self) -> AbstractContextManager[Any]: ...


class GuestKernel(Protocol):
    """The members of a domU kernel that its front ends use."""

    # Read-only (properties), so a kernel's own, more specific types satisfy them.
    @property
    def domid(self) -> int: ...

    @property
    def label(self) -> str: ...  # "d3 (web)", for every log line

    @property
    def memory(self) -> GuestMemory: ...

    @property
    def pages(self) -> PageAllocator: ...

    @property
    def grant_table(self) -> GrantTable: ...

    @property
    def loop(self) -> EventLoop: ...

    @property
    def hypercall(self) -> HypercallClient: ...

    @property
    def xenbus(self) -> GuestXenstore: ...
