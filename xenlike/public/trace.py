"""Trace buffers and records: the layout every writer and ``xenlike trace`` share (Xen's ``public/trace.h``).

Each process (the hypervisor, dom0, a back-end worker, a domU) writes records
into a trace buffer of its own, a shared-memory file the hypervisor creates and
holds, as Xen keeps one ``t_buf`` per pCPU. A buffer is one header page and then
a data area of ``size`` bytes (a power of two)::

    struct t_buf (xenlike)            offset   Xen's struct t_buf / t_info
    u32 magic    "XLTB"                 0
    u32 version                         4
    u32 size     data bytes             8      t_info.tbuf_size (in pages there)
    u32 prod     bytes written         12      t_buf.prod
    u32 cons     bytes read            16      t_buf.cons
    u32 lost     records dropped       20      trace.c's per-CPU lost_records
    u32 mask     classes enabled       24      trace.c's tb_event_mask
    u32 domid    the writer's domain   28
    u32 faults   armed entries below   32
    ...
    fault[16]    u32 port, u32 action, u32 delay_ms (from word 16)

The fault table is not tracing's: the header page is the one page the
hypervisor shares with every process, so it also carries the event-channel
faults injected into that process (``xenlike inject evtchn-drop``/``-delay``):
an ``EventLoop.notify`` on a port listed there is dropped or delayed. Only the
hypervisor writes it, ``faults`` last, then bit 0 of ``mask`` (``FAULTS_ARMED``),
so a send tests one word for both tracing and faults.

``prod`` and ``cons`` run freely modulo 2**32 (Xen's run modulo twice the
size); ``prod - cons`` is what is waiting. Only the writer stores ``prod`` and
``lost``, only the reader ``cons``, only the hypervisor ``mask``: each is one
aligned 32-bit store, never torn. A writer fills the record's bytes and then
stores ``prod`` (x86-64's TSO publishes them in that order, as the rings rely
on); a record that does not fit in ``size - (prod - cons)`` is dropped and
counted in ``lost``, so a writer never waits for a reader.

A record (``struct t_rec``; Xen's begins with a header word of event, extra
word count and a TSC flag, then the TSC, then up to seven data words)::

    u32 length   of the whole record, header included, a multiple of 4
    u32 event    class | subclass | number, as TRC_* ids
    u64 ns       CLOCK_MONOTONIC, the same clock in every process (Xen: the TSC)
    u16 domid    the domain the record is about
    u16 vcpu     its vCPU
    ...          the fields: one msgpack map (Xen: extra_u32[0..7])

A record may wrap around the end of the data area; the reader copies it out in
two pieces. ``length`` is padded to 4 bytes so a header never straddles less
than a word.

Event ids keep trace.h's shape: the class is a bit in bits 16-27
(``TRC_CLS_SHIFT``), the subclass bits 12-15, the number bits 0-11. Classes Xen
has keep Xen's bit (``TRC_GEN``, ``TRC_SCHED``, ``TRC_DOM0OP`` for the domain
lifecycle, ``TRC_MEM`` for grants, ``TRC_PV`` for hypercalls); xenlike's own
(event channels, xenbus, xenstore, rings, device I/O, injected faults) take bits
that mean nothing here (Xen's HVM, SHADOW and HW) and the ones trace.h leaves free.
"""

from __future__ import annotations

import enum
import struct
import threading
from typing import Any

import msgpack

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_BYTES",
    "DEFAULT_SIZE",
    "Word",
    "RECORD",
    "RECORD_BYTES",
    "MAX_RECORD",
    "TraceClass",
    "Event",
    "CLASS_NAMES",
    "parse_classes",
    "class_of",
    "pack_record",
    "unpack_record",
    "split_records",
    "TraceRecord",
    "RecordError",
    "TRACE_SOCKET",
    "MAX_FAULTS",
    "FAULT_WORDS",
    "FAULTS_ARMED",
    "FaultAction",
]

MAGIC = 0x42544C58  # "XLTB" little-endian
VERSION = 1
HEADER_BYTES = 4096  # the header page; the data area starts at the next page
DEFAULT_SIZE = 1 << 20  # 1 MiB per process: sparse, only the pages written cost memory
TRACE_SOCKET = "trace.sock"  # in the run directory: where ``xenlike trace`` asks the hypervisor for buffers


class Word(enum.IntEnum):
    """Index of each header field in the header viewed as 32-bit words."""

    MAGIC = 0
    VERSION = 1
    SIZE = 2
    PROD = 3
    CONS = 4
    LOST = 5
    MASK = 6
    DOMID = 7
    FAULTS = 8
    FAULT_TABLE = 16


MAX_FAULTS = 16  # event-channel faults one process can carry
FAULTS_ARMED = 0x1  # in the mask word, beside the classes: the process has faults in its table, so a
# notification has one word to test whether it must look at either
FAULT_WORDS = 3  # port, action, delay_ms


class FaultAction(enum.IntEnum):
    """What an armed entry does to a notification on its port."""

    NONE = 0
    DROP = 1  # the notification is lost, as if the eventfd write never happened
    DELAY = 2  # sent delay_ms later, from another thread


RECORD = struct.Struct("<IIQHH")  # length, event, ns, domid, vcpu
RECORD_BYTES = RECORD.size  # 20
MAX_RECORD = 4096  # a record's whole length at most: fields are short (a trace is not a data dump)


class TraceClass(enum.IntFlag):
    """The classes a trace point belongs to; the enable mask is their OR (``tb_event_mask``)."""

    GEN = 0x0001_0000  # TRC_GEN: the buffers themselves (lost records)
    SCHED = 0x0002_0000  # TRC_SCHED: scheduler decisions
    LIFECYCLE = 0x0004_0000  # TRC_DOM0OP: domains built, started, destroyed
    XENSTORE = 0x0008_0000  # (Xen's TRC_HVM): xenstore operations and watches fired
    GRANT = 0x0010_0000  # TRC_MEM: grant map, unmap, copy
    HYPERCALL = 0x0020_0000  # TRC_PV: every hypercall
    XENBUS = 0x0040_0000  # (Xen's TRC_SHADOW): xenbus state changes, both buses
    EVTCHN = 0x0080_0000  # (Xen's TRC_HW): event-channel sends and upcalls
    RING = 0x0100_0000  # (free in trace.h): ring pushes and consumes
    IO = 0x0200_0000  # (free in trace.h): device requests
    FAULT = 0x0400_0000  # (free in trace.h): injected faults taking effect


ALL_CLASSES = 0x0FFF_0000  # TRC_ALL's class bits
CLASS_NAMES: dict[str, TraceClass] = {cls.name.lower(): cls for cls in TraceClass if cls.name}


def class_of(event: int) -> int:
    """The class bits of an event id (``TRC_CLS``)."""
    return event & ALL_CLASSES


def parse_classes(text: str) -> int:
    """A mask from ``hypercall,xenbus`` (or ``all``); ValueError naming the unknown class and the known ones."""
    mask = 0
    for word in (part.strip().lower() for part in text.split(",")):
        if not word:
            continue
        if word == "all":
            mask |= ALL_CLASSES
            continue
        cls = CLASS_NAMES.get(word)
        if cls is None:
            raise ValueError(f"unknown trace class {word!r}: known are all, {', '.join(CLASS_NAMES)}")
        mask |= cls
    if not mask:
        raise ValueError("no trace class named: give one or more of all, " + ", ".join(CLASS_NAMES))
    return mask


class Event(enum.IntEnum):
    """Every event id a trace point writes: ``class | subclass << 12 | number``.

    Where Xen has the event, the same id (``TRC_LOST_RECORDS``,
    ``TRC_MEM_PAGE_GRANT_MAP``/``UNMAP``, ``TRC_PV_HYPERCALL``,
    ``TRC_DOM0_DOM_ADD``/``REM``).
    """

    LOST_RECORDS = TraceClass.GEN | 0xF001  # TRC_LOST_RECORDS: fields n
    HYPERCALL = TraceClass.HYPERCALL | 0x1001  # TRC_PV_HYPERCALL: op, args, ok, result or errno, dur (ns)
    DOM_ADD = TraceClass.LIFECYCLE | 0x1001  # TRC_DOM0_DOM_ADD: step, name, dur
    DOM_REM = TraceClass.LIFECYCLE | 0x1002  # TRC_DOM0_DOM_REM
    DOM_STEP = TraceClass.LIFECYCLE | 0x1003  # a builder step (a span): step, dur
    GRANT_MAP = TraceClass.GRANT | 0xF001  # TRC_MEM_PAGE_GRANT_MAP: granter, ref, handle, readonly
    GRANT_UNMAP = TraceClass.GRANT | 0xF002  # TRC_MEM_PAGE_GRANT_UNMAP: handle
    GRANT_COPY = TraceClass.GRANT | 0x1001  # ops, bytes, failed (a subclass trace.h does not use)
    SCHED_PRIO = TraceClass.SCHED | 0x2001  # a vCPU's priority changed: prio (BOOST, UNDER, OVER), credit
    SCHED_STOP = TraceClass.SCHED | 0x2002  # SIGSTOP: why
    SCHED_CONT = TraceClass.SCHED | 0x2003  # SIGCONT: pcpu
    SCHED_MIGRATE = TraceClass.SCHED | 0x2004  # moved to another pCPU: pcpu
    EVTCHN_SEND = TraceClass.EVTCHN | 0x1001  # port
    EVTCHN_UPCALL = TraceClass.EVTCHN | 0x1002  # port, dur (the handler's)
    XENBUS_STATE = TraceClass.XENBUS | 0x1001  # end (front, back), node, state
    XS_OP = TraceClass.XENSTORE | 0x1001  # conn, op, path, ok or errno, dur
    XS_WATCH = TraceClass.XENSTORE | 0x1002  # conn, path, token
    # A ring's records all carry ring (its name), side (front, back) and used (slots in use as that end sees them).
    RING_PUSH = TraceClass.RING | 0x1001  # RING_PUSH_*_AND_CHECK_NOTIFY: slots, notify, event (the peer's)
    RING_CONSUME = TraceClass.RING | 0x1002  # slots taken off the ring
    RING_ARM = TraceClass.RING | 0x1003  # RING_FINAL_CHECK_FOR_*: event (re-armed), more (work found after it)
    # A device request, about the front end's domain (domid): dev, id, op (read, write...), sector.
    IO_REQUEST = TraceClass.IO | 0x1001  # decoded: segments
    IO_DONE = TraceClass.IO | 0x1002  # completed (a span from its decoding): status, dur
    FAULT = TraceClass.FAULT | 0x1001  # kind, target, what happened


EVENT_NAMES = {int(event): event.name.lower() for event in Event}


class RecordError(ValueError):
    """A record that does not parse: a buffer its writer corrupted (a guest may write anything in its own)."""


class TraceRecord(dict[str, Any]):
    """A record as the reader hands it on: ``ns``, ``event`` (its name), ``cls``, ``domid``, ``vcpu``, fields."""


_packers = threading.local()  # a Packer is not safe to share across threads, and making one per record costs


def _pack_fields(fields: dict[str, Any]) -> bytes:
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(default=repr)
    return packer.pack(fields)


def pack_record(event: int, ns: int, domid: int, vcpu: int, fields: dict[str, Any]) -> bytes:
    """One record's bytes, padded to 4; ValueError if it would be longer than :data:`MAX_RECORD`."""
    payload = _pack_fields(fields)
    length = RECORD_BYTES + len(payload)
    length += -length % 4
    if length > MAX_RECORD:
        raise ValueError(f"trace record of {length} bytes is over {MAX_RECORD}")
    return RECORD.pack(length, event, ns, domid & 0xFFFF, vcpu & 0xFFFF) + payload + b"\0" * (-len(payload) % 4)


def split_records(chunk: bytes) -> tuple[list[bytes], str | None]:
    """``chunk`` (records back to back, as a buffer holds them) cut into records.

    The second item is None, or why the rest of ``chunk`` is not records: a
    length that is impossible or runs past the end. Each record's fields are
    not looked at (:func:`unpack_record` does that).
    """
    records: list[bytes] = []
    pos, end = 0, len(chunk)
    header = RECORD.unpack_from
    while pos < end:
        if end - pos < RECORD_BYTES:
            return records, f"{end - pos} bytes at the end are not a record"
        length = header(chunk, pos)[0]
        if length < RECORD_BYTES or length > MAX_RECORD or length % 4 or pos + length > end:
            return records, f"a record says it is {length} bytes"
        records.append(chunk[pos : pos + length])
        pos += length
    return records, None


def unpack_record(data: bytes | memoryview) -> tuple[int, int, int, int, dict[str, Any]]:
    """``(event, ns, domid, vcpu, fields)`` of one whole record; RecordError if it is not one."""
    if len(data) < RECORD_BYTES:
        raise RecordError(f"a record of {len(data)} bytes is shorter than its header")
    length, event, ns, domid, vcpu = RECORD.unpack_from(data)
    if length != len(data):
        raise RecordError(f"a record says it is {length} bytes in {len(data)}")
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_RECORD, strict_map_key=False)
        unpacker.feed(bytes(data[RECORD_BYTES:]))
        fields = unpacker.unpack()
    except Exception as exc:  # msgpack raises several types for bad bytes
        raise RecordError(f"a record's fields do not decode: {exc}") from exc
    if not isinstance(fields, dict):
        raise RecordError("a record's fields are not a map")
    return event, ns, domid, vcpu, fields
