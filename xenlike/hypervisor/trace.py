"""The host's trace buffers and the socket `xenlike trace` reaches them by (Xen's `common/trace.c`).

The hypervisor creates every process's buffer and keeps its fd: its own, each
domain's (at spawn, beside its memfd), each back-end worker's (with its channel,
``domctl open_channel``). A process gets only its own buffer, so a guest can write
and spoil nothing but its own records, and the reader checks those as it would
any guest's bytes.

``xenlike trace`` is a process on the host, not a domain: it connects to
``trace.sock`` in the run directory (mode 0700, hidden from jailed guests), as
xentrace asks Xen for the buffers' frames with ``XEN_SYSCTL_tbuf_op``. One reader
at a time (the buffers have one ``cons`` each); a process of a domain is refused.
Requests, :mod:`xenlike.kernel.hypercall` messages:

* ``{"op": "open", "mask": M}``: become the reader and trace the classes ``M``;
  the reply lists every buffer (``id``, ``name``, ``domid``, ``role``) with its fd.
* ``{"op": "poll", "known": [ids]}``: buffers made since (with fds) and the
  ``gone`` ids, whose writers ended (the reader drains and drops them).
* ``{"op": "mask", "mask": M}``: change the classes.

When the reader's connection closes, the mask goes back to 0 in every buffer:
nothing is traced when nobody reads.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenlike.kernel import trace
from xenlike.kernel.hypercall import ChannelClosed, recv_message, send_message
from xenlike.kernel.trace import TraceBuffer
from xenlike.public.trace import ALL_CLASSES, DEFAULT_SIZE, MAX_FAULTS, TRACE_SOCKET, FaultAction
from xenlike.public.xen import DOMID_XEN

__all__ = ["TraceHost", "BufferEntry"]

log = logging.getLogger("xenlike.hypervisor.trace")

BATCH = 32  # buffers (fds) per answer, well under a message's MAX_FDS
GUEST_SIZE = 256 << 10  # a domU's buffer; dom0's, a worker's and the hypervisor's are DEFAULT_SIZE
MAX_REFUSED = 8  # refused callers' sockets kept open until they close them


@dataclass
class BufferEntry:
    """One process's buffer as the hypervisor keeps it."""

    id: int
    name: str
    domid: int
    role: str  # xen, dom0, worker, domu
    fd: int
    buffer: TraceBuffer

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "domid": self.domid, "role": self.role}


class TraceHost:
    """Every buffer of the host, the enable mask, and the reader's socket."""

    def __init__(self, run_dir: Path, selector: selectors.BaseSelector, pids_of_domains: Any) -> None:
        self.mask = 0
        self.entries: dict[int, BufferEntry] = {}
        self.faults: dict[int, dict[int, tuple[int, int]]] = {}  # domid -> port -> (action, delay_ms)
        self._next_id = 0
        self._selector = selector
        self._pids_of_domains = pids_of_domains  # () -> set of process-group ids of every domain
        self._reader: socket.socket | None = None
        self._refused = 0  # refused callers' sockets kept open
        self.path = run_dir / TRACE_SOCKET
        self.path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._listener.listen(4)
        selector.register(self._listener, selectors.EVENT_READ, self._on_connect)
        fd = self.new_buffer("xen", DOMID_XEN, "xen")[1]
        trace.attach(os.dup(fd), DOMID_XEN)

    def new_buffer(self, name: str, domid: int, role: str) -> tuple[int, int]:
        """A buffer for a new process: its id and the fd to hand it (the hypervisor keeps the fd).

        A domU's is smaller (:data:`GUEST_SIZE`): its pages are the guest's to pay
        for once written, and a guest writes less than dom0 or the hypervisor.
        """
        self._next_id += 1
        size = GUEST_SIZE if role == "domu" else DEFAULT_SIZE
        fd = TraceBuffer.create(f"xenlike-trace-{name}", domid, size, mask=self.mask)
        try:
            buffer = TraceBuffer(fd)
        except BaseException:
            os.close(fd)
            raise
        self.entries[self._next_id] = BufferEntry(self._next_id, name, domid, role, fd, buffer)
        if self.faults.get(domid):
            buffer.set_faults(self._fault_entries(domid))
        return self._next_id, fd

    def set_evtchn_fault(self, domid: int, port: int, action: int, delay_ms: int = 0) -> None:
        """Arm (or, with ``FaultAction.NONE``, disarm) a fault on ``domid``'s sends on ``port``, in each of
        its processes' headers (dom0's and its back-end workers' for dom0)."""
        ports = self.faults.setdefault(domid, {})
        if action == FaultAction.NONE:
            ports.pop(port, None)
        elif port not in ports and len(ports) >= MAX_FAULTS:
            raise ValueError(f"d{domid} has {MAX_FAULTS} event-channel faults already: clear one first")
        else:
            ports[port] = (action, delay_ms)
        for entry in self.entries.values():
            if entry.domid == domid:
                entry.buffer.set_faults(self._fault_entries(domid))

    def forget_domain(self, domid: int) -> None:
        """A domain is gone: its faults go with it (its id may name another domain later)."""
        self.faults.pop(domid, None)

    def _fault_entries(self, domid: int) -> list[tuple[int, int, int]]:
        return [(port, action, delay) for port, (action, delay) in sorted(self.faults.get(domid, {}).items())]

    def release(self, buffer_id: int | None) -> None:
        """The buffer's writer ended: close it here (a reader holds its own fd and drains it)."""
        entry = self.entries.pop(buffer_id, None) if buffer_id is not None else None
        if entry is not None:
            entry.buffer.close()
            os.close(entry.fd)

    def set_mask(self, mask: int) -> None:
        self.mask = mask & ALL_CLASSES
        for entry in self.entries.values():
            entry.buffer.set_mask(self.mask)

    def close(self) -> None:
        if self._reader is not None:
            self._drop_reader()
        self._selector.unregister(self._listener)
        self._listener.close()
        self.path.unlink(missing_ok=True)
        trace.detach()
        for buffer_id in list(self.entries):
            self.release(buffer_id)

    # -- the reader's socket ---------------------------------------------------------

    def _on_connect(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        pid, uid, _gid = _peer(sock)
        why = self._refusal(pid, uid)
        if why is not None:
            log.warning("trace: refused a reader (pid %d, uid %d): %s", pid, uid, why)
            refusal = {"ok": False, "errno": "EPERM", "error": why}
            _answer(sock, refusal)
            if self._refused >= MAX_REFUSED:
                sock.close()  # a caller that keeps connecting gets no more of the hypervisor's fds
                return
            # Kept open until the caller closes it, each request answered alike: closing a socket
            # with a request unread would reset it, and the refusal would be lost.
            self._refused += 1
            self._selector.register(sock, selectors.EVENT_READ, lambda s: self._refuse_again(s, refusal))
            return
        self._selector.register(sock, selectors.EVENT_READ, self._on_request)

    def _refuse_again(self, sock: socket.socket, refusal: dict) -> None:
        try:
            _message, fds = recv_message(sock)
        except (ChannelClosed, ConnectionError, ValueError):
            self._refused -= 1
            self._close_client(sock)
            return
        for fd in fds:
            os.close(fd)
        _answer(sock, refusal)

    def _refusal(self, pid: int, uid: int) -> str | None:
        if uid not in (0, os.getuid()):
            return f"uid {uid} does not own this host"
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return "the process is gone"
        if group in self._pids_of_domains():
            return "a domain's process may not read the host's trace buffers"
        return None

    def _on_request(self, sock: socket.socket) -> None:
        try:
            message, fds = recv_message(sock)
        except (ChannelClosed, ConnectionError, ValueError):
            self._close_client(sock)
            return
        for fd in fds:
            os.close(fd)
        op = message.get("op") if isinstance(message, dict) else None
        if op == "open":
            self._open(sock, message)
        elif sock is not self._reader:
            _answer(sock, {"ok": False, "errno": "EINVAL", "error": "send open first"})
        elif op == "poll":
            known = set(message.get("known") or [])
            new = [entry for entry in self.entries.values() if entry.id not in known]
            gone = sorted(known - set(self.entries))
            _answer(sock, *self._listing(new, gone))
        elif op == "mask" and isinstance(message.get("mask"), int):
            self.set_mask(message["mask"])
            _answer(sock, {"ok": True, "mask": self.mask})
        else:
            _answer(sock, {"ok": False, "errno": "EINVAL", "error": f"no trace request {op!r}"})

    def _open(self, sock: socket.socket, message: dict) -> None:
        if self._reader is not None and self._reader is not sock:
            _answer(sock, {"ok": False, "errno": "EBUSY", "error": "another `xenlike trace` is reading this host"})
            return
        mask = message.get("mask")
        if not isinstance(mask, int):
            _answer(sock, {"ok": False, "errno": "EINVAL", "error": "open needs a mask"})
            return
        self._reader = sock
        for entry in self.entries.values():
            entry.buffer.discard()  # what was written before this reader came is not its (and none is, mask 0)
        self.set_mask(mask)
        log.info("trace: a reader opened the buffers, classes %#x", self.mask)
        _answer(sock, *self._listing(list(self.entries.values()), []))

    def _listing(self, entries: list[BufferEntry], gone: list[int]) -> tuple[dict[str, Any], list[int]]:
        """The answer naming ``entries`` (at most :data:`BATCH`; ``more`` says the reader should poll again)."""
        batch = entries[:BATCH]
        answer = {
            "ok": True,
            "mask": self.mask,
            "buffers": [e.describe() for e in batch],
            "gone": gone,
            "more": len(entries) > BATCH,
        }
        return answer, [e.fd for e in batch]

    def _close_client(self, sock: socket.socket) -> None:
        if sock is self._reader:
            self._drop_reader()
            return
        self._selector.unregister(sock)
        sock.close()

    def _drop_reader(self) -> None:
        sock, self._reader = self._reader, None
        assert sock is not None
        self.set_mask(0)
        log.info("trace: the reader closed; tracing off")
        self._selector.unregister(sock)
        sock.close()


def _peer(sock: socket.socket) -> tuple[int, int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def _answer(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    try:
        send_message(sock, message, fds or [])
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            log.warning("trace: an answer to the reader was lost: %s", exc)
