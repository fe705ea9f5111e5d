"""The console stream: how xenconsoled publishes console output, and how a client follows it.

Xen's xenconsoled gives each domain a pty; xenlike publishes each console on one
zmq PUB socket (``console.sock`` in the run directory) instead, so ``xenlike up``
can follow every console at once and ``xenlike console`` one of them. This module
holds the wire format, imported by both ends, and the subscriber.

A message is three frames:

- topic: the domain's name (UTF-8), so a SUB socket can filter by domain;
- header: ``domid`` (u32) and ``offset`` (u64), big-endian: how many bytes that
  domain's console published before this message;
- data: console bytes (``\\r\\n`` already folded to ``\\n``), or nothing for a mark.

A zmq subscription takes effect some time after ``connect``; whatever is published
until then never reaches the subscriber. :meth:`ConsoleSubscriber.attach` closes
that gap: it asks the toolstack (``console_attach``) to publish a mark, again until
one arrives, since from then on every message reaches it in order. The offsets then
splice the history that the same request returned with the live stream, so a client
sees every byte once.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from xenlike.kernel.rundir import RunDir

__all__ = ["HEADER", "ALL_CONSOLES", "ConsoleMessage", "encode", "decode", "Splice", "ConsoleSubscriber"]

HEADER = struct.Struct(">IQ")  # domid, offset

# The topic of a mark meant for clients that follow every console (``xenlike up``).
# No domain can have an empty name, so no console publishes under it.
ALL_CONSOLES = ""

# How long attach() waits for a mark before it asks for another.
MARK_WAIT_S = 0.05


@dataclass(frozen=True)
class ConsoleMessage:
    """One published message: ``data`` starts at byte ``offset`` of ``name``'s console."""

    name: str
    domid: int
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def encode(name: str, domid: int, offset: int, data: bytes = b"") -> list[bytes]:
    """The frames of one message (a mark when ``data`` is empty)."""
    return [name.encode(), HEADER.pack(domid, offset), data]


def decode(frames: list[bytes]) -> ConsoleMessage:
    """The message in ``frames``; ValueError if they are not one."""
    if len(frames) != 3 or len(frames[1]) != HEADER.size:
        raise ValueError(f"not a console message: {len(frames)} frame(s)")
    domid, offset = HEADER.unpack(frames[1])
    return ConsoleMessage(frames[0].decode(errors="replace"), domid, offset, frames[2])


class Splice:
    """Which console bytes a client has shown: each byte once, whatever arrives twice.

    Per console name it keeps the domain it belongs to and the offset of the next
    byte to show. A message of another domain under the same name (the name's
    domain rebooted) starts that console anew.
    """

    def __init__(self, only: str | None = None) -> None:
        self.only = only
        self._next: dict[str, tuple[int, int]] = {}  # name -> (domid, next offset to show)

    def shown_until(self, name: str, domid: int, end: int) -> None:
        """The client has shown ``name``'s console (domain ``domid``) up to byte ``end``."""
        self._next[name] = (domid, end)

    def unseen(self, message: ConsoleMessage) -> ConsoleMessage | None:
        """The part of ``message`` not shown yet, or None (a mark, another console, a repeat)."""
        if not message.data or (self.only is not None and message.name != self.only):
            return None
        domid, start = self._next.get(message.name, (message.domid, message.offset))
        if domid != message.domid:
            start = message.offset
        self._next[message.name] = (message.domid, max(start, message.end))
        if message.end <= start:
            return None
        skip = max(0, start - message.offset)
        return ConsoleMessage(message.name, message.domid, message.offset + skip, message.data[skip:])


class ConsoleSubscriber:
    """A SUB socket on a host's console stream that loses and repeats nothing once attached.

    ``name`` None follows every console. Call :meth:`attach` before relying on the
    stream, then :meth:`receive`; ``sock`` is there for a ``zmq.Poller``.
    """

    def __init__(self, run_dir: RunDir, name: str | None = None) -> None:
        self.name = name
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A prefix filter: "e" would also pass "echo"; Splice keeps to the name exactly.
        self.sock.setsockopt(zmq.SUBSCRIBE, name.encode() if name is not None else b"")
        self.sock.connect(run_dir.endpoint("console"))
        self._splice = Splice(name)
        self._pending: list[ConsoleMessage] = []

    def close(self) -> None:
        self.sock.close()

    def attach(self, request_mark: Callable[[], dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the subscription is live; return the reply of the request that proved it.

        ``request_mark`` sends ``console_attach`` to the toolstack, which publishes a
        mark and replies (for one console) with its ``history`` up to ``end``. The
        reply of the last request is spliced: the stream continues where its history
        stops.
        """
        deadline = time.monotonic() + timeout
        while True:
            reply = request_mark()
            if self._wait_for_live(reply, MARK_WAIT_S):
                break
            if time.monotonic() >= deadline:
                raise TimeoutError("the console stream never answered; is the host overloaded?")
        if self.name is not None:
            self._splice.shown_until(reply["name"], reply["domid"], reply["end"])
        return reply

    def receive(self, timeout_ms: int) -> list[ConsoleMessage]:
        """The new console bytes that arrived within ``timeout_ms``, each shown once."""
        messages, self._pending = self._pending, []
        if not messages and self.sock.poll(timeout_ms):
            messages.append(decode(self.sock.recv_multipart()))
        while self.sock.poll(0):
            messages.append(decode(self.sock.recv_multipart()))
        return [fresh for fresh in map(self._splice.unseen, messages) if fresh is not None]

    def _wait_for_live(self, reply: dict[str, Any], timeout_s: float) -> bool:
        """Queue what arrives within ``timeout_s``; True once a message proves the subscription was live at ``reply``.

        For one console, only a message that starts at or before the reply's ``end``
        proves it (its mark, or output published before the mark): a later one
        may have come after bytes that were published while the subscription was
        not yet live, which neither the history nor the stream would then hold.
        For every console (``name`` None), any message does.
        """
        deadline = time.monotonic() + timeout_s
        while self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            message = decode(self.sock.recv_multipart())
            self._pending.append(message)
            if self.name is None:
                return True
            if (
                message.name == self.name
                and message.domid == reply.get("domid")
                and message.offset <= reply.get("end", 0)
            ):
                return True
        return False
