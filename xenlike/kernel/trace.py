"""Trace buffers: this process's writer and the reader's side (Xen's ``common/trace.c`` and xentrace's reader).

The hypervisor creates every buffer (:meth:`TraceBuffer.create`: a sealed memfd,
so a holder can neither shrink nor grow it) and hands each process its own at
spawn; the process maps it with :func:`attach`. A trace point is::

    if trace.mask[0] & TraceClass.HYPERCALL:
        trace.emit(Event.HYPERCALL, {...})

``mask`` is a view of the buffer's ``mask`` word, so with tracing off a trace
point costs one load and one test (trace.c's ``tb_init_done`` check); before a
process attaches, and in any child it forks, it is a zero word of its own.
:func:`emit` never waits for the reader: a record that does not fit is counted
in ``lost`` and dropped. Threads of one process share its buffer under a lock
that only they take; the reader takes none.

The layout is :mod:`xenlike.public.trace`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from xenlike.kernel.memory import SharedMapping
from xenlike.public import ring
from xenlike.public.trace import (
    ALL_CLASSES,
    DEFAULT_SIZE,
    FAULT_WORDS,
    FAULTS_ARMED,
    HEADER_BYTES,
    MAGIC,
    MAX_FAULTS,
    MAX_RECORD,
    VERSION,
    FaultAction,
    Word,
    class_of,
    pack_record,
    split_records,
)

__all__ = [
    "TraceBuffer",
    "TraceBufferError",
    "attach",
    "detach",
    "emit",
    "emit_at",
    "on",
    "span",
    "summary",
    "mask",
    "attached",
    "fault_for",
]

_U32 = 0xFFFFFFFF
_monotonic_ns = time.monotonic_ns
_PROD, _CONS, _LOST = int(Word.PROD), int(Word.CONS), int(Word.LOST)  # plain ints: an enum member costs a lookup
SUMMARY_STR = 64  # characters of a string a record keeps
SUMMARY_ITEMS = 8  # items of a list or map a record keeps


class TraceBufferError(ValueError):
    """A trace buffer that is not one: wrong magic, version, size, or a file of the wrong length."""


class TraceBuffer:
    """One process's trace buffer mapped here: its header words and its data area."""

    def __init__(self, fd: int) -> None:
        """Map the buffer in ``fd`` (the fd may be closed afterwards); TraceBufferError if it is not one."""
        length = os.fstat(fd).st_size
        if length <= HEADER_BYTES:
            raise TraceBufferError(f"a trace buffer of {length} bytes has no data area")
        self._map = SharedMapping(fd, length)  # no copy of the fd kept: the hypervisor holds every buffer's
        self.words = self._map.view[:HEADER_BYTES].cast("I")
        size = self.words[Word.SIZE]
        if self.words[Word.MAGIC] != MAGIC or self.words[Word.VERSION] != VERSION:
            self.close()
            raise TraceBufferError("not a xenlike trace buffer (magic or version)")
        if size != length - HEADER_BYTES or size & (size - 1):
            self.close()
            raise TraceBufferError(f"trace buffer size {size}: not its file's {length - HEADER_BYTES}, a power of 2")
        self.size = size
        self.data = self._map.view[HEADER_BYTES:]
        self._lock = threading.Lock()
        self._last_lost = self.words[Word.LOST]

    @staticmethod
    def create(name: str, domid: int, size: int = DEFAULT_SIZE, mask: int = 0) -> int:
        """A new sealed memfd holding an empty buffer of ``size`` data bytes; returns its fd."""
        if size < MAX_RECORD or size & (size - 1) or size > 1 << 31:
            raise ValueError(f"trace buffer size {size} must be a power of 2 from {MAX_RECORD} to 2 GiB")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, HEADER_BYTES + size)
            header = bytearray(32)
            words = memoryview(header).cast("I")
            words[Word.MAGIC], words[Word.VERSION], words[Word.SIZE] = MAGIC, VERSION, size
            words[Word.MASK], words[Word.DOMID] = mask, domid
            os.pwrite(fd, header, 0)
            # Nobody who holds it may change its length: a shrunk buffer would fault every mapper.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- the writer ----------------------------------------------------------------

    def write(self, record: bytes) -> bool:
        """Append one record (``pack_record``'s bytes); False, and ``lost`` counted, if it does not fit."""
        words, n, size = self.words, len(record), self.size
        with self._lock:
            prod = words[_PROD]
            if n > size - ((prod - words[_CONS]) & _U32):
                words[_LOST] = (words[_LOST] + 1) & _U32
                return False
            offset = prod & (size - 1)
            if offset + n <= size:
                self.data[offset : offset + n] = record
            else:
                first = size - offset
                self.data[offset:] = record[:first]
                self.data[: n - first] = record[first:]
            words[_PROD] = (prod + n) & _U32  # publishes the bytes above (TSO)
        return True

    # -- the reader ----------------------------------------------------------------

    def read(self) -> tuple[list[bytes], int, str | None]:
        """Take what is waiting: ``(records, lost since the last read, why the rest was thrown away)``.

        The writer may be hostile (a guest writes its own buffer): indices that
        say more is waiting than the buffer holds, and a record whose length is
        impossible, end the read there; what was left is skipped, and the
        reason is the third item.
        """
        words = self.words
        prod, cons = words[Word.PROD], words[Word.CONS]
        lost = words[Word.LOST]
        new_lost, self._last_lost = (lost - self._last_lost) & _U32, lost
        waiting = (prod - cons) & _U32
        if waiting > self.size:
            words[Word.CONS] = prod
            return [], new_lost, f"its indices say {waiting} bytes wait in a buffer of {self.size}"
        offset = cons & (self.size - 1)
        first = min(waiting, self.size - offset)
        chunk = bytes(self.data[offset : offset + first]) + bytes(self.data[: waiting - first])
        words[Word.CONS] = prod  # the bytes are ours now: the writer may reuse them
        records, why = split_records(chunk)
        return records, new_lost, why

    def discard(self) -> None:
        """Drop what is waiting without reading it (the hypervisor never parses a guest's records)."""
        self.words[Word.CONS] = self.words[Word.PROD]
        self._last_lost = self.words[Word.LOST]

    def set_faults(self, entries: list[tuple[int, int, int]]) -> None:
        """The event-channel faults of this buffer's process: ``(port, action, delay_ms)``, at most MAX_FAULTS."""
        words = self.words
        words[Word.FAULTS] = 0  # no reader sees a half-written table
        for index, (port, action, delay_ms) in enumerate(entries[:MAX_FAULTS]):
            base = Word.FAULT_TABLE + index * FAULT_WORDS
            words[base], words[base + 1], words[base + 2] = port, action, delay_ms
        words[Word.FAULTS] = min(len(entries), MAX_FAULTS)
        armed = FAULTS_ARMED if entries else 0
        words[Word.MASK] = (words[Word.MASK] & ~FAULTS_ARMED & _U32) | armed

    def set_mask(self, value: int) -> None:
        """The classes this buffer's writer records (the hypervisor's to set); ``FAULTS_ARMED`` stays as it was."""
        self.words[Word.MASK] = (value & ALL_CLASSES) | (self.words[Word.MASK] & FAULTS_ARMED)

    @property
    def lost(self) -> int:
        return self.words[Word.LOST]

    @property
    def waiting(self) -> int:
        return (self.words[Word.PROD] - self.words[Word.CONS]) & _U32

    def close(self) -> None:
        """Unmap (every view of the mapping is released first)."""
        for name in ("data", "words"):
            view = self.__dict__.pop(name, None)
            if view is not None:
                view.release()
        self._map.close()


# -- this process's writer -------------------------------------------------------------

_OFF = memoryview(bytearray(4)).cast("I")  # the mask of a process with no buffer: nothing is traced
mask: memoryview = _OFF
_buffer: TraceBuffer | None = None
_domid = 0
_vcpu = 0


def fault_for(port: int) -> tuple[int, int]:
    """``(action, delay_ms)`` armed for ``port`` in this process's header (``FaultAction.NONE``: none)."""
    buffer = _buffer
    if buffer is None:
        return FaultAction.NONE, 0
    words = buffer.words
    for index in range(min(words[Word.FAULTS], MAX_FAULTS)):
        base = Word.FAULT_TABLE + index * FAULT_WORDS
        if words[base] == port:
            return words[base + 1], words[base + 2]
    return FaultAction.NONE, 0


def attach(fd: int, domid: int, vcpu: int = 0) -> None:
    """Write this process's records into the buffer in ``fd`` (closed here), as ``domid``'s ``vcpu``."""
    global mask, _buffer, _domid, _vcpu
    detach()
    try:
        buffer = TraceBuffer(fd)
    finally:
        os.close(fd)
    _buffer, _domid, _vcpu = buffer, domid, vcpu
    mask = buffer.words[Word.MASK : Word.MASK + 1]
    ring.set_trace_hook(mask, emit)


def detach() -> None:
    """Trace nothing more from this process (and from a child it forks, which must not share the buffer)."""
    global mask, _buffer
    buffer, _buffer = _buffer, None
    ring.set_trace_hook(None, None)
    if mask is not _OFF:
        old, mask = mask, _OFF
        old.release()
    if buffer is not None:
        buffer.close()


def _detach_in_child() -> None:
    # A forked child shares the parent's mapping: two unsynchronised writers would corrupt it.
    global mask, _buffer
    mask, _buffer = _OFF, None
    ring.set_trace_hook(None, None)


os.register_at_fork(after_in_child=_detach_in_child)


def summary(value: Any, depth: int = 2) -> Any:
    """``value`` in short, for a record's fields: long strings and lists cut, bytes as their length."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value if len(value) <= SUMMARY_STR else value[: SUMMARY_STR - 1] + "…"
    if isinstance(value, dict):
        if depth == 0:
            return f"<{len(value)} keys>"
        items = list(value.items())[:SUMMARY_ITEMS]
        return {str(k): summary(v, depth - 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        if depth == 0 or len(value) > SUMMARY_ITEMS:
            return f"<{len(value)} items>"
        return [summary(v, depth - 1) for v in value]
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return repr(value)[:SUMMARY_STR]


@contextlib.contextmanager
def span(event: int, fields: dict[str, Any], *, domid: int | None = None) -> Iterator[dict[str, Any]]:
    """Record the ``with`` body as one record: its start, its ``dur``, and ``fields`` (which it may add to).

    For code off the hot paths (a domain's build steps): with the event's class
    off it costs a context manager and nothing else.
    """
    if not mask[0] & class_of(event):
        yield fields
        return
    started = time.monotonic_ns()
    try:
        yield fields
    except BaseException as exc:
        fields["error"] = type(exc).__name__
        raise
    finally:
        fields["dur"] = time.monotonic_ns() - started
        emit_at(event, started, fields, domid=domid)


def attached() -> bool:
    """Whether this process has a trace buffer."""
    return _buffer is not None


def on(cls: int) -> bool:
    """Whether ``cls`` is being traced (for code off the hot paths; those test ``mask[0]`` themselves)."""
    return bool(mask[0] & cls)


def emit(event: int, fields: dict[str, Any], *, domid: int | None = None, vcpu: int | None = None) -> None:
    """Write one record now (CLOCK_MONOTONIC); dropped and counted if the buffer is full, never waiting."""
    buffer = _buffer
    if buffer is None:
        return
    try:
        record = pack_record(
            event, _monotonic_ns(), _domid if domid is None else domid, _vcpu if vcpu is None else vcpu, fields
        )
    except ValueError:  # fields too long for one record: the event is kept, its fields are not
        emit_at(event, _monotonic_ns(), {"truncated": True}, domid=domid, vcpu=vcpu)
        return
    buffer.write(record)


def emit_at(event: int, ns: int, fields: dict[str, Any], *, domid: int | None = None, vcpu: int | None = None) -> None:
    """As :func:`emit`, for a record timestamped ``ns`` (a span's start, written when it ends)."""
    buffer = _buffer
    if buffer is None:
        return
    domid = _domid if domid is None else domid
    vcpu = _vcpu if vcpu is None else vcpu
    try:
        record = pack_record(event, ns, domid, vcpu, fields)
    except ValueError:  # fields too long for one record: the event is kept, its fields are not
        record = pack_record(event, ns, domid, vcpu, {"truncated": True})
    buffer.write(record)
