"""Messages with file descriptors over an AF_UNIX socket: the hypercall channel's transport.

Each domain talks to the hypervisor over a private ``SOCK_SEQPACKET`` socket it
inherits at spawn. One packet is one msgpack-encoded message; file descriptors
(memory, event channels) ride along as ``SCM_RIGHTS`` ancillary data, so the
kernel duplicates them into the receiver. Sequenced packets keep message
boundaries and never split a message from its descriptors.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

__all__ = [
    "MAX_MESSAGE",
    "MAX_FDS",
    "ChannelClosed",
    "HypercallError",
    "HypercallClient",
    "socketpair",
    "send_message",
    "recv_message",
]

MAX_MESSAGE = 1 << 20
MAX_FDS = 64


class ChannelClosed(ConnectionError):
    """The peer closed the channel (or died)."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of close-on-exec sequenced-packet sockets."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_message(sock: socket.socket, message: Any, fds: Sequence[int] = ()) -> None:
    """Send one message and, with it, duplicates of ``fds`` (the caller keeps its own)."""
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


_FD_ARRAY = array.array("i")
_ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_ARRAY.itemsize)


def recv_message(sock: socket.socket, flags: int = 0) -> tuple[Any, list[int]]:
    """Receive one message and the fds that came with it (the caller owns them).

    ``flags`` go to ``recvmsg`` (``socket.recv_fds`` of Python 3.11 drops them,
    so it is not used). Raises ChannelClosed at end of stream, BlockingIOError
    with ``MSG_DONTWAIT`` when nothing is waiting.
    """
    data, ancillary, msg_flags, _ = sock.recvmsg(MAX_MESSAGE, _ANCILLARY_SPACE, flags | socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    if msg_flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ValueError("a message came with more file descriptors than accepted; they were closed")
    if not data and not fds:
        raise ChannelClosed("the peer closed the channel")
    return msgpack.unpackb(data, raw=False, strict_map_key=False), fds


class HypercallError(OSError):
    """A hypercall the hypervisor refused: the errno and the hypervisor's reason.

    ``strerror`` is the hypervisor's own sentence, fit to show a user. For a
    refusal inside a multicall, ``call_index`` and ``call_op`` say which call
    it was (Xen's ``multicall_entry`` whose ``result`` is an error), ``results``
    holds the results of the calls before it (empty otherwise); ``str()`` adds
    the index and op, for logs.
    """

    def __init__(
        self,
        err: int,
        message: str,
        call_index: int | None = None,
        call_op: str | None = None,
        results: list[Any] | None = None,
    ) -> None:
        super().__init__(err, message)
        self.call_index = call_index
        self.call_op = call_op
        self.results: list[Any] = [] if results is None else results

    def __str__(self) -> str:
        text = super().__str__()
        if self.call_index is None:
            return text
        return f"{text} (call {self.call_index} of a multicall, {self.call_op})"

    @classmethod
    def from_reply(cls, reply: dict) -> HypercallError:
        return cls(getattr(errno, reply.get("errno", "EINVAL"), errno.EINVAL), reply.get("error", "refused"))


EventHandler = Callable[[dict, list[int]], None]


class HypercallClient:
    """A domain's end of its hypercall channel.

    ``call(op, **args)`` sends one request and waits for its reply; messages the
    hypervisor sends on its own (an event channel's peer bound or closed) may
    arrive before the reply and go to ``on_event``. Safe to call from several
    threads: one call is on the wire at a time.

    Wire format: request ``{"id", "op", "args"}``; reply ``{"id", "ok": True,
    "result"}`` or ``{"id", "ok": False, "errno": "EPERM", "error": "..."}`` with
    any fds attached; event ``{"event": name, ...}`` with any fds attached.
    """

    def __init__(self, sock: socket.socket, on_event: EventHandler) -> None:
        self.sock = sock
        self.on_event = on_event
        self._lock = threading.Lock()
        self._next_id = 0

    def call(self, op: str, fds: Sequence[int] = (), **args: Any) -> tuple[Any, list[int]]:
        """Make hypercall ``op``; returns (result, fds). Raises HypercallError."""
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            send_message(self.sock, {"id": call_id, "op": op, "args": args}, fds)
            while True:
                message, got_fds = recv_message(self.sock)
                if "event" in message:
                    self.on_event(message, got_fds)
                    continue
                if message.get("id") != call_id:
                    for fd in got_fds:
                        os.close(fd)
                    continue
                if not message.get("ok"):
                    for fd in got_fds:
                        os.close(fd)
                    raise HypercallError.from_reply(message)
                return message.get("result"), got_fds

    def multicall(self, calls: list[dict]) -> list[tuple[Any, list[int]]]:
        """Several hypercalls in one round trip (see ``multicall`` in the hypervisor).

        ``calls`` are ``{"op": ..., "args": {...}}``; an argument
        ``{"$result": [i, "key"]}`` takes ``key`` from the ``i``-th result. Returns
        (result, fds) per call. If one fails, HypercallError is raised after the
        fds of the calls before it were closed; its ``results`` attribute holds
        those calls' results, so the caller can undo them; its ``strerror`` is
        the hypervisor's sentence and ``call_index``/``call_op`` say which call failed.
        """
        reply, fds = self.call("multicall", calls=calls)
        results = [(r["result"], [fds[i] for i in r["fds"]]) for r in reply["results"]]
        error = reply.get("error")
        if error:
            for fd in fds:
                os.close(fd)
            index = error["index"]
            cmd = (calls[index].get("args") or {}).get("cmd") if 0 <= index < len(calls) else None
            exc = HypercallError(
                getattr(errno, error["errno"], errno.EINVAL),
                error["message"],
                call_index=index,
                call_op=f"{error['op']} {cmd}" if cmd else error["op"],
                results=[r for r, _ in results],
            )
            raise exc
        return results

    def drain_events(self) -> None:
        """Deliver events waiting on the socket, without blocking.

        Called when the socket polls readable outside a call; does nothing if a
        call in another thread is reading the socket right now.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            while True:
                try:
                    message, fds = recv_message(self.sock, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
                if "event" in message:
                    self.on_event(message, fds)
                else:
                    for fd in fds:
                        os.close(fd)
        finally:
            self._lock.release()
