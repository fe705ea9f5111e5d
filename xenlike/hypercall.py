"""Messages with file descriptors over an AF_UNIX socket: the hypercall channel's transport.

Each domain talks to the hypervisor over a private ``SOCK_SEQPACKET`` socket it
inherits at spawn. One packet is one msgpack-encoded message; file descriptors
(memory, event channels) ride along as ``SCM_RIGHTS`` ancillary data, so the
kernel duplicates them into the receiver. Sequenced packets keep message
boundaries and never split a message from its descriptors.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Sequence

import msgpack

__all__ = ["MAX_MESSAGE", "MAX_FDS", "ChannelClosed", "socketpair", "send_message", "recv_message"]

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


def recv_message(sock: socket.socket) -> tuple[Any, list[int]]:
    """Receive one message and the fds that came with it (the caller owns them).

    Raises ChannelClosed at end of stream.
    """
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ValueError("a message came with more file descriptors than accepted; they were closed")
    if not data and not fds:
        raise ChannelClosed("the peer closed the channel")
    return msgpack.unpackb(data, raw=False, strict_map_key=False), fds
