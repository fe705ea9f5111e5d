"""Messages with file descriptors over an AF_UNIX socket: the hypercall channel's transport.

Each domain talks to the hypervisor over a private ``SOCK_SEQPACKET`` socket it
inherits at spawn. One packet is one msgpack-encoded message; file descriptors
(memory, event channels) ride along as ``SCM_RIGHTS`` ancillary data, so the
kernel duplicates them into the receiver. Sequenced packets keep message
boundaries and never split a message from its descriptors. A message larger
than a packet may be (the socket's send buffer, about 208 KiB by default: a
``getdomaininfo`` of ~900 domains) goes as fragments, in order, the fds on the
first, and is joined again by the receiver; one over MAX_MESSAGE is refused
before anything is sent.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

__all__ = [
    "MAX_MESSAGE",
    "MAX_DATAGRAM",
    "MAX_REQUEST",
    "MAX_FDS",
    "ChannelClosed",
    "Fragments",
    "MessageIncomplete",
    "MessageTooLarge",
    "Outbox",
    "HypercallError",
    "HypercallClient",
    "socketpair",
    "send_message",
    "recv_message",
    "MSGPACK_DECODE_ERRORS",
    "fragment_size",
]

MAX_MESSAGE = 16 << 20
"""The largest message, once reassembled: what a sender refuses (MessageTooLarge) and a receiver drops."""
MAX_REQUEST = 1 << 20
"""The largest hypercall request the hypervisor takes (its replies may be up to MAX_MESSAGE)."""
MAX_DATAGRAM = 1 << 20
"""The receive buffer: a message this size or smaller may travel as one datagram."""
MAX_FDS = 64

# A message that does not fit one datagram travels as fragments, each a datagram
# of its own: the two bytes FRAGMENT + MORE (more follow) or FRAGMENT + LAST,
# then a slice of the packed message; the fds ride on the first. 0xc1 is the one
# byte msgpack never writes, so a whole message can never be read as a fragment.
FRAGMENT = 0xC1
_MORE = bytes([FRAGMENT, 1])
_LAST = bytes([FRAGMENT, 0])
_UNIX_DGRAM_OVERHEAD = 32  # af_unix refuses a datagram larger than SO_SNDBUF - 32 (EMSGSIZE)


class ChannelClosed(ConnectionError):
    """The peer closed the channel (or died)."""


class MessageTooLarge(ValueError):
    """A message over :data:`MAX_MESSAGE` bytes or :data:`MAX_FDS` descriptors: refused, never sent."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of close-on-exec sequenced-packet sockets."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_message(sock: socket.socket, message: Any, fds: Sequence[int] = (), limit: int | None = None) -> None:
    """Send one message and, with it, duplicates of ``fds`` (the caller keeps its own).

    A message is one datagram when it fits the socket's send buffer (one
    ``sendmsg``); a larger one goes as fragments (see :func:`fragment_size`),
    which the receiver's :func:`recv_message` joins again. Raises
    MessageTooLarge, naming the limit, over ``limit`` bytes (MAX_MESSAGE by
    default) or MAX_FDS fds.
    """
    data = _packed(message, fds, limit)
    if len(data) <= MAX_DATAGRAM:
        try:
            if fds:
                socket.send_fds(sock, [data], list(fds))
            else:
                sock.sendall(data)
            return
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            # Over the send buffer: nothing was sent (fds included); fragment it.
    _send_fragments(sock, data, fds)


def _packed(message: Any, fds: Sequence[int], limit: int | None) -> bytes:
    """``message`` packed; MessageTooLarge, naming the limit, over ``limit`` bytes (MAX_MESSAGE) or MAX_FDS fds."""
    data = msgpack.packb(message, use_bin_type=True)
    limit = MAX_MESSAGE if limit is None else limit
    if len(data) > limit:
        raise MessageTooLarge(f"a message of {len(data)} bytes exceeds the channel's limit of {limit}")
    if len(fds) > MAX_FDS:
        raise MessageTooLarge(f"a message with {len(fds)} file descriptors exceeds the channel's limit of {MAX_FDS}")
    return data


def fragment_size(sock: socket.socket) -> int:
    """The payload of one fragment on ``sock``: half its send buffer, so one fragment always fits."""
    sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return max(512, min(MAX_DATAGRAM, sndbuf // 2) - _UNIX_DGRAM_OVERHEAD - len(_MORE))


def _send_fragments(sock: socket.socket, data: bytes, fds: Sequence[int]) -> None:
    size = fragment_size(sock)
    view = memoryview(data)
    for start in range(0, len(data), size):
        end = start + size
        header = _MORE if end < len(data) else _LAST
        if start == 0 and fds:
            socket.send_fds(sock, [header, view[start:end]], list(fds))
        else:
            sock.sendmsg([header, view[start:end]])


_Frame = tuple[list[bytes | memoryview], list[int]]  # one datagram: its buffers and the fds that ride on it


class Outbox:
    """Messages for one socket, sent without ever blocking the sender: what the peer has not taken waits here.

    The hypervisor answers every domain from one loop; a domain that stops reading
    its socket must not stop that loop. :meth:`put` packs a message (refusing it,
    as :func:`send_message` does, before anything is kept), sends what the socket
    takes now and keeps the rest, in order, with duplicates of its fds; :meth:`flush`
    sends more once the socket is writable. ``nbytes`` is what waits, for the
    owner's bound. OSError from either is the peer's end (it is gone).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._frames: deque[_Frame] = deque()
        self.nbytes = 0

    def __len__(self) -> int:
        """Datagrams still to send."""
        return len(self._frames)

    def put(self, message: Any, fds: Sequence[int] = (), limit: int | None = None) -> None:
        """Queue ``message`` with duplicates of ``fds`` (the caller keeps its own) and send what can go now."""
        data = _packed(message, fds, limit)
        if not self._frames and len(data) <= MAX_DATAGRAM and self._send_now(data, fds):
            return  # the common case: nothing waits and the socket takes it
        kept = [os.dup(fd) for fd in fds]
        frames: list[_Frame] = [([data], kept)] if len(data) <= MAX_DATAGRAM else self._fragments(data, kept)
        self._frames.extend(frames)
        self.nbytes += sum(_frame_size(frame) for frame in frames)
        self.flush()

    def flush(self) -> bool:
        """Send what the socket takes now; True once nothing waits."""
        frames = self._frames
        while frames:
            buffers, fds = frames[0]
            try:
                self._sendmsg(buffers, fds)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE or len(buffers) != 1:
                    raise
                # Over the send buffer, nothing sent: it goes as fragments instead.
                fragments = self._fragments(bytes(buffers[0]), fds)
                self.nbytes += sum(_frame_size(frame) for frame in fragments) - _frame_size(frames.popleft())
                frames.extendleft(reversed(fragments))
                continue
            self.nbytes -= _frame_size(frames.popleft())
            for fd in fds:
                os.close(fd)
        return True

    def _send_now(self, data: bytes, fds: Sequence[int]) -> bool:
        """One datagram, if the socket takes it now; False if it must wait (or be fragmented)."""
        try:
            self._sendmsg([data], fds)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return False
            raise
        return True

    def _sendmsg(self, buffers: Sequence[bytes | memoryview], fds: Sequence[int]) -> None:
        """One datagram, with ``fds``, without waiting (BlockingIOError if the socket has no room)."""
        if not fds and len(buffers) == 1:
            self.sock.send(buffers[0], socket.MSG_DONTWAIT)  # the common reply: send() costs less than sendmsg()
            return
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg(buffers, ancillary, socket.MSG_DONTWAIT)

    def discard(self) -> None:
        """Drop what waits (the peer went), closing the fds kept for it."""
        for _, fds in self._frames:
            for fd in fds:
                os.close(fd)
        self._frames.clear()
        self.nbytes = 0

    def _fragments(self, data: bytes, fds: list[int]) -> list[_Frame]:
        size = fragment_size(self.sock)
        view = memoryview(data)
        return [
            ([_MORE if start + size < len(data) else _LAST, view[start : start + size]], fds if start == 0 else [])
            for start in range(0, len(data), size)
        ]


def _frame_size(frame: _Frame) -> int:
    return sum(len(buffer) for buffer in frame[0])


_FD_ARRAY = array.array("i")
_ANCILLARY_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_ARRAY.itemsize)


class MessageIncomplete(BlockingIOError):
    """A fragment was received and kept (:class:`Fragments`); the rest of its message has not come yet."""


class Fragments:
    """The fragments of a message received so far on one socket, for a reader that must not wait.

    The hypervisor keeps one per domain channel: a domain that sends the first
    fragment of a request and no more stalls nothing. ``limit`` bounds the
    message's size; :meth:`discard` closes the fds a dropped message came with.
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.fds: list[int] = []
        self.dropping = False  # a message refused part-way: its later fragments are skipped

    def add(self, data: bytes, fds: list[int]) -> bytes | None:
        """Take one fragment; the whole message once its last fragment came, else None.

        Raises ValueError (and forgets the message, closing its fds) if the
        fragments break the rules: fds on a later fragment, or over ``limit``;
        the message's later fragments are then skipped, up to its last.
        """
        last = data[1] == _LAST[1]
        if self.dropping:
            for fd in fds:
                os.close(fd)
            self.dropping = not last
            return None
        if fds and self.chunks:
            for fd in fds:
                os.close(fd)
            self.discard()
            self.dropping = not last
            raise ValueError("a message's later fragment came with file descriptors; the message was dropped")
        self.fds.extend(fds)
        self.size += len(data) - len(_MORE)
        if self.size > self.limit:
            self.discard()
            self.dropping = not last
            raise ValueError(f"a fragmented message exceeds the channel's limit of {self.limit} bytes; it was dropped")
        self.chunks.append(data[len(_MORE) :])
        if not last:
            return None
        whole = b"".join(self.chunks)
        self.chunks, self.size = [], 0
        return whole

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds

    def discard(self) -> None:
        """Forget a partial message and close its fds (its later fragments are not skipped)."""
        for fd in self.take_fds():
            os.close(fd)
        self.chunks, self.size = [], 0


def _recv_datagram(sock: socket.socket, flags: int) -> tuple[bytes, list[int]]:
    data, ancillary, msg_flags, _ = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE, flags | socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    if msg_flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        if msg_flags & socket.MSG_TRUNC:
            raise ValueError(f"a datagram larger than {MAX_DATAGRAM} bytes came and was cut; it was dropped")
        raise ValueError("a message came with more file descriptors than accepted; they were closed")
    if not data and not fds:
        raise ChannelClosed("the peer closed the channel")
    return data, fds


def recv_message(sock: socket.socket, flags: int = 0, pending: Fragments | None = None) -> tuple[Any, list[int]]:
    """Receive one message and the fds that came with it (the caller owns them).

    ``flags`` go to ``recvmsg`` (``socket.recv_fds`` of Python 3.11 drops them,
    so it is not used). Raises ChannelClosed at end of stream, BlockingIOError
    with ``MSG_DONTWAIT`` when nothing is waiting, ValueError for a message that
    is malformed (whatever its bytes; its fds closed). A fragmented message is
    joined again: without ``pending``, by waiting for the rest of it once its
    first fragment came; with it, one fragment per call, raising
    MessageIncomplete until the last one is in.
    """
    data, fds = _recv_datagram(sock, flags)
    if data[:1] != _MORE[:1]:
        return _decoded(data, fds)
    if len(data) < len(_MORE):
        for fd in fds:
            os.close(fd)
        raise ValueError("a fragment without its header; it was dropped")
    if pending is not None:
        whole = pending.add(data, fds)
        if whole is None:
            raise MessageIncomplete("a fragment of a message came; the rest has not")
        return _decoded(whole, pending.take_fds())
    fragments = Fragments()
    try:
        whole = fragments.add(data, fds)
        while whole is None:
            data, fds = _recv_datagram(sock, flags & ~socket.MSG_DONTWAIT)
            if data[:1] != _MORE[:1] or len(data) < len(_MORE):
                for fd in fds:
                    os.close(fd)
                raise ValueError("a fragmented message was cut short by another message; it was dropped")
            whole = fragments.add(data, fds)
    except BaseException:
        fragments.discard()
        raise
    return _decoded(whole, fragments.take_fds())


# What msgpack raises for bytes that do not decode: ValueError (and its subclasses) for most, TypeError for a map
# keyed by a list or a map, which strict_map_key=False lets it parse and it cannot build.
MSGPACK_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def _decoded(data: bytes, fds: list[int]) -> tuple[Any, list[int]]:
    """The message ``data`` holds, with its fds; ValueError (the fds closed) for bytes that are not one.

    Keys may be any msgpack scalar (``strict_map_key=False``: domids key many
    maps); a peer's message must fail one way, as malformed, whatever its bytes
    (:data:`MSGPACK_DECODE_ERRORS`).
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False), fds
    except MSGPACK_DECODE_ERRORS as exc:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a message that does not decode: {exc}") from None


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
            send_message(self.sock, {"id": call_id, "op": op, "args": args}, fds, limit=MAX_REQUEST)
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
