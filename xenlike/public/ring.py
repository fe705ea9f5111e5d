"""Shared I/O rings, with the semantics of ``xen/include/public/io/ring.h``.

A shared ring is one or more pages holding a 64-byte header and a power-of-two
array of slots; each slot is the union of a request and a response::

    struct name_sring {                       byte offset
        RING_IDX req_prod, req_event;         0, 4     (free-running uint32)
        RING_IDX rsp_prod, rsp_event;         8, 12
        uint8_t  pvt[4], __pad[44];           16..63
        union name_sring_entry ring[];        64..
    };

The front end produces requests and consumes responses; the back end the
reverse. Each side keeps its own private indices (:class:`FrontRing`:
``req_prod_pvt``/``rsp_cons``; :class:`BackRing`: ``rsp_prod_pvt``/``req_cons``) and
publishes them with one aligned 32-bit store. Notifications are suppressed with
the event-index trick: a producer notifies only if the consumer's ``*_event`` lies
in the window of indices it has just published, and a consumer that runs out of
work re-arms ``*_event`` and checks again after a full barrier
(``RING_FINAL_CHECK_FOR_*``), so no wake-up is ever lost.

Memory ordering (see :mod:`xenlike.public.atomic`): slot contents are written before the
index store that publishes them and read after the index load that reveals them;
x86-64 keeps those orders. The two store→load sequences (publish an index, then
read the peer's event; write our event, then re-read the peer's index) go through
:func:`xenlike.public.atomic.mb`.

Requests are copied out of the shared slots once, before anything looks at them
(``RING_COPY_REQUEST``): a front end can rewrite shared memory at any moment, so a
back end only ever validates and uses its private copy.

Every push, consume and re-arm is a trace point of class ``ring``
(:mod:`xenlike.kernel.trace`): a push records the slots it published and whether
the event index asked for a notification (``notify``) or suppressed it, a
consume the slots it took, a final check the event index it re-armed and
whether work had arrived meanwhile; each says how many slots are in use as its
end sees them (``used``: the front's requests without a response yet, the
back's requests not yet answered). With the class off each costs one load of
the enable mask and a test. This module sits below the kernel layer, so
:mod:`xenlike.kernel.trace` hands it the mask word and the writer
(:func:`set_trace_hook`) when the process attaches its buffer, and the test
reads a global of this module.

Byte rings (:class:`ByteRing`, at the end of this module) are the other shape:
one producer, one consumer, a power-of-two buffer of bytes and two free-running
indices somewhere in a shared page, laid out by :class:`PageLayout`. Each page
sits beside its protocol: ``xenstore_domain_interface`` in
:mod:`xenlike.public.xs_wire`, ``xencons_interface`` in
:mod:`xenlike.public.console`. :mod:`xenlike.kernel.byte_channel` is the
endpoint every byte-ring user builds on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from xenlike.public.atomic import mb
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "RING_IDX_MASK",
    "SRING_HEADER_SIZE",
    "RingError",
    "RingFull",
    "RingProtocol",
    "ring_size",
    "init_shared_ring",
    "FrontRing",
    "BackRing",
    "PageLayout",
    "ByteRing",
    "set_trace_hook",
]

RING_IDX_MASK = 0xFFFFFFFF
SRING_HEADER_SIZE = 64

# The header as uint32 words.
_REQ_PROD, _REQ_EVENT, _RSP_PROD, _RSP_EVENT = 0, 1, 2, 3
_RING = TraceClass.RING.value  # a plain int: the trace points' test is one load and one AND
_PUSH, _CONSUME, _ARM = Event.RING_PUSH.value, Event.RING_CONSUME.value, Event.RING_ARM.value
_NO_TRACE = memoryview(bytearray(4)).cast("I")
_tmask: memoryview = _NO_TRACE  # this process's enable-mask word (xenlike.kernel.trace.mask)


def _no_emit(event: int, fields: dict[str, Any]) -> None:
    pass


_temit: Callable[[int, dict[str, Any]], None] = _no_emit


def set_trace_hook(mask: memoryview | None, emit: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Trace this process's rings through ``mask`` (a one-word view) and ``emit``; None, None: trace none."""
    global _tmask, _temit
    _tmask = _NO_TRACE if mask is None else mask
    _temit = _no_emit if emit is None else emit


class RingError(Exception):
    """The peer broke the ring protocol (an index that cannot be right)."""


class RingFull(RingError):
    """No free slot: the producer must wait for the consumer."""


def ring_size(nr_bytes: int, entry_size: int) -> int:
    """Slots in a ring of ``nr_bytes`` (``__RING_SIZE``): rounded down to a power of two."""
    fit = (nr_bytes - SRING_HEADER_SIZE) // entry_size
    if fit < 1:
        raise ValueError(f"{nr_bytes} bytes hold no {entry_size}-byte ring entry")
    return 1 << (fit.bit_length() - 1)


def _wrapping_copy_out(slots: memoryview, start: int, length: int) -> bytes:
    """Copy ``length`` bytes out of a circular area from ``start`` (already masked)."""
    end = start + length
    if end <= len(slots):
        return slots[start:end].tobytes()
    return slots[start:].tobytes() + slots[: end - len(slots)].tobytes()


def _wrapping_copy_in(slots: memoryview, start: int, data: bytes | bytearray | memoryview) -> None:
    """Copy ``data`` into a circular area from ``start`` (already masked)."""
    first = len(slots) - start
    if len(data) <= first:
        slots[start : start + len(data)] = data
    else:
        slots[start:] = data[:first]
        slots[: len(data) - first] = data[first:]


class RingProtocol:
    """A ring's request and response layouts, declared once for both ends.

    The counterpart of ``DEFINE_RING_TYPES(name, request_t, response_t)``: each
    layout is a ``struct.Struct`` with an explicit byte order and no implicit
    padding, and ``entry_size`` is ``sizeof(union name_sring_entry)`` as the C
    compiler lays it out (pass it when alignment makes it larger than both).
    """

    def __init__(
        self,
        name: str,
        request: struct.Struct,
        response: struct.Struct,
        entry_size: int | None = None,
    ) -> None:
        self.name = name
        self.request = request
        self.response = response
        self.entry_size = entry_size or max(request.size, response.size)
        if self.entry_size < max(request.size, response.size):
            raise ValueError(f"{name}: entry size {self.entry_size} is smaller than a request or response")
        # Whole-slot layouts, so a batch of slots unpacks with one iter_unpack.
        self.request_slot = struct.Struct(request.format + f"{self.entry_size - request.size}x")
        self.response_slot = struct.Struct(response.format + f"{self.entry_size - response.size}x")

    def pack_requests(self, requests: Iterable[Sequence]) -> bytes:
        """Lay out a batch of request tuples slot by slot."""
        pack = self.request_slot.pack
        return b"".join(pack(*r) for r in requests)

    def pack_responses(self, responses: Iterable[Sequence]) -> bytes:
        """Lay out a batch of response tuples slot by slot."""
        pack = self.response_slot.pack
        return b"".join(pack(*r) for r in responses)

    def unpack_requests(self, data: bytes) -> Iterator[tuple]:
        """Iterate over the request tuples of a batch copied off the ring."""
        return self.request_slot.iter_unpack(data)

    def unpack_responses(self, data: bytes) -> Iterator[tuple]:
        """Iterate over the response tuples of a batch copied off the ring."""
        return self.response_slot.iter_unpack(data)

    def __repr__(self) -> str:
        return f"RingProtocol({self.name!r}, entry_size={self.entry_size})"


def init_shared_ring(shared: memoryview) -> None:
    """``SHARED_RING_INIT``: indices 0, events 1 (the first message notifies), pad zeroed.

    Only the front end initialises a ring; the back end attaches to what it finds.
    """
    header = shared[:SRING_HEADER_SIZE]
    header[:] = bytes(SRING_HEADER_SIZE)
    idx = header.cast("I")
    idx[_REQ_EVENT] = 1
    idx[_RSP_EVENT] = 1
    idx.release()


class _RingEnd:
    """What both ends share: the header words, the slots, the geometry.

    ``name`` is what this ring's trace records call it (the protocol's name
    unless the driver gives one, such as the device).
    """

    side = ""

    def __init__(self, shared: memoryview, protocol: RingProtocol, name: str | None = None) -> None:
        if len(shared) % PAGE_SIZE:
            raise ValueError(f"a shared ring is whole pages, not {len(shared)} bytes")
        self.protocol = protocol
        self.name = name or protocol.name
        self.entry_size = protocol.entry_size
        self.nr_ents = ring_size(len(shared), self.entry_size)
        self._mask = self.nr_ents - 1
        self._idx = shared[:SRING_HEADER_SIZE].cast("I")
        self._slots = shared[SRING_HEADER_SIZE : SRING_HEADER_SIZE + self.nr_ents * self.entry_size]

    def _slot_offset(self, index: int) -> int:
        return (index & self._mask) * self.entry_size

    def _push(self, prod: int, event: int, new: int) -> bool:
        """Publish ``new`` at header word ``prod``; True if the peer must be notified."""
        idx = self._idx
        old = idx[prod]
        idx[prod] = new  # one aligned store; the slots were written before it
        mb()  # the store above must be visible before we read the peer's event
        peer_event = idx[event]
        notify = ((new - peer_event) & RING_IDX_MASK) < ((new - old) & RING_IDX_MASK)
        if _tmask[0] & _RING:
            self._trace(_PUSH, {"slots": (new - old) & RING_IDX_MASK, "notify": notify, "event": peer_event})
        return notify

    def used(self) -> int:
        """Slots in use as this end sees them (the ``used`` of its trace records)."""
        raise NotImplementedError

    def _trace(self, event: int, fields: dict[str, object]) -> None:
        fields["ring"], fields["side"], fields["used"] = self.name, self.side, self.used()
        _temit(event, fields)

    def shared_indices(self) -> dict[str, int]:
        """The four header words as the peer sees them (for diagnostics)."""
        idx = self._idx
        return {
            "req_prod": idx[_REQ_PROD],
            "req_event": idx[_REQ_EVENT],
            "rsp_prod": idx[_RSP_PROD],
            "rsp_event": idx[_RSP_EVENT],
        }

    def shared_req_prod(self) -> int:
        """The published request producer index (one aligned load)."""
        return self._idx[_REQ_PROD]

    def shared_rsp_prod(self) -> int:
        """The published response producer index (one aligned load)."""
        return self._idx[_RSP_PROD]

    def release(self) -> None:
        """Drop the views of the shared pages (before unmapping them)."""
        self._idx.release()
        self._slots.release()


class FrontRing(_RingEnd):
    """The front end of a ring: ``struct name_front_ring``.

    ``init=True`` (the default) initialises the shared page as ``SHARED_RING_INIT`` +
    ``FRONT_RING_INIT``; ``init=False`` attaches to a page set up elsewhere.
    """

    side = "front"

    def __init__(
        self, shared: memoryview, protocol: RingProtocol, *, init: bool = True, name: str | None = None
    ) -> None:
        if init:
            init_shared_ring(shared)
        super().__init__(shared, protocol, name)
        self.req_prod_pvt = self._idx[_REQ_PROD]
        self.rsp_cons = self._idx[_RSP_PROD] if not init else 0

    def used(self) -> int:
        """Requests made whose responses are not taken yet."""
        return (self.req_prod_pvt - self.rsp_cons) & RING_IDX_MASK

    # -- requests ---------------------------------------------------------------

    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``: slots we may fill before a response frees one."""
        return self.nr_ents - ((self.req_prod_pvt - self.rsp_cons) & RING_IDX_MASK)

    def full(self) -> bool:
        """``RING_FULL``."""
        return self.free_requests() == 0

    def put_request(self, *fields: object) -> None:
        """Write one request into the next private slot (published by a later push)."""
        if self.full():
            raise RingFull(f"{self.protocol.name} ring is full ({self.nr_ents} requests outstanding)")
        self.protocol.request.pack_into(self._slots, self._slot_offset(self.req_prod_pvt), *fields)
        self.req_prod_pvt = (self.req_prod_pvt + 1) & RING_IDX_MASK

    def put_requests(self, slots: bytes | memoryview) -> int:
        """Copy a batch of whole slots (``protocol.pack_requests``) in; returns the count."""
        count = len(slots) // self.entry_size
        if count * self.entry_size != len(slots):
            raise ValueError(f"a batch is whole {self.entry_size}-byte slots, not {len(slots)} bytes")
        if count > self.free_requests():
            raise RingFull(f"{count} requests do not fit: {self.free_requests()} slots free")
        _wrapping_copy_in(self._slots, self._slot_offset(self.req_prod_pvt), slots)
        self.req_prod_pvt = (self.req_prod_pvt + count) & RING_IDX_MASK
        return count

    def push_requests(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: publish; True if the back must be kicked."""
        return self._push(_REQ_PROD, _REQ_EVENT, self.req_prod_pvt)

    # -- responses --------------------------------------------------------------

    def unconsumed_responses(self) -> int:
        """``RING_HAS_UNCONSUMED_RESPONSES``, refusing a back end that answers too much."""
        rsp_prod = self._idx[_RSP_PROD]
        pending = (rsp_prod - self.rsp_cons) & RING_IDX_MASK
        if pending > ((self.req_prod_pvt - self.rsp_cons) & RING_IDX_MASK):
            raise RingError(
                f"{self.protocol.name}: back end produced responses up to {rsp_prod}, "
                f"beyond the {self.req_prod_pvt} requests made"
            )
        return pending

    def get_responses(self, max_count: int | None = None) -> tuple[bytes, int]:
        """Copy out up to ``max_count`` responses (all available by default).

        Returns the slot bytes (unpack with ``protocol.unpack_responses``) and the count.
        """
        count = self.unconsumed_responses()
        if max_count is not None:
            count = min(count, max_count)
        if count == 0:
            return b"", 0
        data = _wrapping_copy_out(self._slots, self._slot_offset(self.rsp_cons), count * self.entry_size)
        self.rsp_cons = (self.rsp_cons + count) & RING_IDX_MASK
        if _tmask[0] & _RING:
            self._trace(_CONSUME, {"slots": count})
        return data, count

    def disable_response_events(self) -> None:
        """Leave ``rsp_event`` behind ``rsp_cons``: the back end's pushes stop notifying until
        :meth:`final_check_for_responses` re-arms it.

        For a front end that polls the ring while it waits (virtio's
        ``VRING_AVAIL_F_NO_INTERRUPT``): ``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``
        notifies only for an event index past the responses it had pushed before,
        and the back end has pushed at least up to ``rsp_cons``. Whoever disables
        must re-arm (with the final check) before it stops looking.
        """
        self._idx[_RSP_EVENT] = self.rsp_cons

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: re-arm rsp_event, then look once more.

        Returns True if responses are waiting; False means the next response will
        raise a notification.
        """
        if self.unconsumed_responses():
            return True
        self._idx[_RSP_EVENT] = (self.rsp_cons + 1) & RING_IDX_MASK
        mb()  # our event store must be visible before we re-read rsp_prod
        more = self.unconsumed_responses() > 0
        if _tmask[0] & _RING:
            self._trace(_ARM, {"event": self._idx[_RSP_EVENT], "more": more})
        return more


class BackRing(_RingEnd):
    """The back end of a ring: ``struct name_back_ring`` (``BACK_RING_ATTACH``).

    The back end never initialises the shared page. It attaches at the producer
    indices it finds, so a back end that reconnects to a live front end resumes
    where the last one stopped.
    """

    side = "back"

    def __init__(self, shared: memoryview, protocol: RingProtocol, *, name: str | None = None) -> None:
        super().__init__(shared, protocol, name)
        self.rsp_prod_pvt = self._idx[_RSP_PROD]
        self.req_cons = self.rsp_prod_pvt

    def used(self) -> int:
        """Requests published and not answered yet (as far as a ring's worth: the rest is the front's fault)."""
        return min((self._idx[_REQ_PROD] - self.rsp_prod_pvt) & RING_IDX_MASK, self.nr_ents)

    # -- requests ---------------------------------------------------------------

    def unconsumed_requests(self) -> int:
        """``RING_HAS_UNCONSUMED_REQUESTS``, refusing an overflowing front end.

        Raises RingError when req_prod is more than a ring ahead of our responses
        (``RING_REQUEST_PROD_OVERFLOW``): such a front end is broken or hostile,
        and the back end must stop serving it.
        """
        req_prod = self._idx[_REQ_PROD]
        if ((req_prod - self.rsp_prod_pvt) & RING_IDX_MASK) > self.nr_ents:
            raise RingError(
                f"{self.protocol.name}: front end published req_prod {req_prod}, more than "
                f"{self.nr_ents} ahead of rsp_prod {self.rsp_prod_pvt}"
            )
        unconsumed = (req_prod - self.req_cons) & RING_IDX_MASK
        room = self.nr_ents - ((self.req_cons - self.rsp_prod_pvt) & RING_IDX_MASK)
        return min(unconsumed, room)

    def get_requests(self, max_count: int | None = None) -> tuple[bytes, int]:
        """Copy out up to ``max_count`` requests (``RING_COPY_REQUEST`` for a batch).

        Returns private slot bytes (unpack with ``protocol.unpack_requests``) and
        the count; the shared slots are not looked at again.
        """
        count = self.unconsumed_requests()
        if max_count is not None:
            count = min(count, max_count)
        if count == 0:
            return b"", 0
        data = _wrapping_copy_out(self._slots, self._slot_offset(self.req_cons), count * self.entry_size)
        self.req_cons = (self.req_cons + count) & RING_IDX_MASK
        if _tmask[0] & _RING:
            self._trace(_CONSUME, {"slots": count})
        return data, count

    def get_request(self) -> tuple | None:
        """The next request, copied and unpacked, or None if there is none."""
        if not self.unconsumed_requests():
            return None
        offset = self._slot_offset(self.req_cons)
        private = self._slots[offset : offset + self.entry_size].tobytes()
        self.req_cons = (self.req_cons + 1) & RING_IDX_MASK
        if _tmask[0] & _RING:
            self._trace(_CONSUME, {"slots": 1})
        return self.protocol.request.unpack_from(private)

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: re-arm req_event, then look once more."""
        if self.unconsumed_requests():
            return True
        self._idx[_REQ_EVENT] = (self.req_cons + 1) & RING_IDX_MASK
        mb()  # our event store must be visible before we re-read req_prod
        more = self.unconsumed_requests() > 0
        if _tmask[0] & _RING:
            self._trace(_ARM, {"event": self._idx[_REQ_EVENT], "more": more})
        return more

    # -- responses --------------------------------------------------------------

    def _check_response_room(self, count: int) -> None:
        # One response per consumed request: never overwrite a request not yet read.
        outstanding = (self.req_cons - self.rsp_prod_pvt) & RING_IDX_MASK
        if count > outstanding:
            raise RingFull(f"{count} responses for {outstanding} consumed requests")

    def put_response(self, *fields: object) -> None:
        """Write one response into the next private slot (published by a later push)."""
        self._check_response_room(1)
        self.protocol.response.pack_into(self._slots, self._slot_offset(self.rsp_prod_pvt), *fields)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & RING_IDX_MASK

    def put_responses(self, slots: bytes | bytearray | memoryview) -> int:
        """Copy a batch of whole response slots in; returns the count."""
        count = len(slots) // self.entry_size
        if count * self.entry_size != len(slots):
            raise ValueError(f"a batch is whole {self.entry_size}-byte slots, not {len(slots)} bytes")
        self._check_response_room(count)
        _wrapping_copy_in(self._slots, self._slot_offset(self.rsp_prod_pvt), slots)
        self.rsp_prod_pvt = (self.rsp_prod_pvt + count) & RING_IDX_MASK
        return count

    def push_responses(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: publish; True if the front must be kicked."""
        return self._push(_RSP_PROD, _RSP_EVENT, self.rsp_prod_pvt)


# ---------------------------------------------------------------------------------
# Byte rings: one producer, one consumer, free-running uint32 indices, byte x at x mod size.


class PageLayout:
    """A shared page's C struct, field by field: ``offsetof`` and ``sizeof``.

    ``fields`` are ``(name, struct format)`` pairs in declaration order. They are
    laid out packed (``=``): the byte-ring pages have no padding, each field
    already sits at its natural alignment, so this is also the C compiler's layout.
    """

    def __init__(self, name: str, fields: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self._offsets: dict[str, int] = {}
        fmt = "="
        for field, code in fields:
            self._offsets[field] = struct.calcsize(fmt)
            fmt += code
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size

    def offsetof(self, field: str) -> int:
        """``offsetof(struct name, field)``."""
        return self._offsets[field]

    def word(self, field: str) -> int:
        """The field's position as a uint32 word of the page (for :class:`ByteRing` indices)."""
        offset = self._offsets[field]
        if offset % 4:
            raise ValueError(f"{self.name}.{field} at {offset} is not a 32-bit word")
        return offset // 4

    def __repr__(self) -> str:
        return f"PageLayout({self.name!r}, size={self.size})"


class ByteRing:
    """One direction of a byte-stream ring inside a shared page.

    ``data_offset``/``size`` locate the buffer (a power of two); ``cons_word`` and
    ``prod_word`` are the positions of its consumer and producer indices as uint32
    words of the page. The producer calls :meth:`write`, the consumer :meth:`read`;
    both check the peer's index, since the peer may be hostile.

    ``data``, when given, is a buffer of its own (pages granted apart from the page
    holding the indices, as a vchan's larger rings are) and ``data_offset`` is
    taken inside it.
    """

    def __init__(
        self,
        page: memoryview,
        data_offset: int,
        size: int,
        cons_word: int,
        prod_word: int,
        *,
        data: memoryview | None = None,
    ) -> None:
        if size & (size - 1):
            raise ValueError(f"byte ring size {size} is not a power of two")
        self.size = size
        buffer = page if data is None else data
        if data_offset + size > len(buffer):
            raise ValueError(f"a byte ring of {size} bytes at {data_offset} overruns its {len(buffer)}-byte buffer")
        self._data = buffer[data_offset : data_offset + size]
        self._words = page[: len(page) - len(page) % 4].cast("I")
        self._cons = cons_word
        self._prod = prod_word

    def _indices(self) -> tuple[int, int]:
        cons, prod = self._words[self._cons], self._words[self._prod]
        if ((prod - cons) & RING_IDX_MASK) > self.size:
            raise RingError(f"byte ring indices are corrupt: prod {prod} is more than {self.size} past cons {cons}")
        return cons, prod

    def available(self) -> int:
        """Bytes waiting to be read."""
        cons, prod = self._indices()
        return (prod - cons) & RING_IDX_MASK

    def space(self) -> int:
        """Bytes that can be written now."""
        return self.size - self.available()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Producer: copy in as much of ``data`` as fits; returns the bytes written."""
        cons, prod = self._indices()
        count = min(len(data), self.size - ((prod - cons) & RING_IDX_MASK))
        if count:
            _wrapping_copy_in(self._data, prod & (self.size - 1), data[:count])
            self._words[self._prod] = (prod + count) & RING_IDX_MASK
        return count

    def read(self, max_count: int | None = None) -> bytes:
        """Consumer: copy out up to ``max_count`` waiting bytes (all by default)."""
        cons, prod = self._indices()
        count = (prod - cons) & RING_IDX_MASK
        if max_count is not None:
            count = min(count, max_count)
        if not count:
            return b""
        data = _wrapping_copy_out(self._data, cons & (self.size - 1), count)
        self._words[self._cons] = (cons + count) & RING_IDX_MASK
        return data

    def reset(self) -> None:
        """Set both indices to zero (only while the peer is not using the ring)."""
        self._words[self._cons] = 0
        self._words[self._prod] = 0

    def release(self) -> None:
        self._data.release()
        self._words.release()
