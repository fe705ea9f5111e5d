"""One end of a byte stream over a pair of byte rings and an event channel.

The xenstore ring (``io/xs_wire.h``), the console ring (``io/console.h``) and a
vchan (``tools/libvchan``) are the same thing seen from either end: a ring this
end produces into, a ring it consumes from, one event channel, and the rule
"whoever moves an index signals the peer". Linux writes that rule out in
``xenbus_comms.c`` (``xb_write``/``xb_read``), ``hvc_xen.c``
(``__write_console``/``domU_read_console``) and ``libxenvchan.c``
(``do_send``/``do_recv``); xenlike writes it once, here, for all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from xenlike.public.ring import ByteRing, RingError

__all__ = ["ByteChannel"]


class ByteChannel:
    """One end of a pair of byte rings and its event channel.

    Writes go to an outbox and into ``tx`` as room appears; :meth:`on_event`
    drains ``rx`` into ``on_data`` and notifies the peer whenever an index moved.

    The contract for users (the xenstore client and server, the console front
    and back, vchan):

    * **Framing is the user's.** The channel moves bytes, in order, exactly
      once; it knows nothing of messages or lines. ``on_data`` gets whatever
      the ring held, which may end in the middle of a message: the user keeps
      the remainder (an ``xs_wire.MessageReader``, a line discipline).
    * **Threads.** :meth:`on_event` is the port's upcall: call it from the
      thread that runs the event loop, one call at a time, on every event of
      the port. :meth:`write`, :meth:`flush`, :meth:`pending_out` and
      :meth:`close` may be called from any thread, ``on_data`` included.
    * **Locking.** An internal lock serialises the outbox and ``tx``; a write
      is appended whole, so concurrent writers never interleave inside one
      call. ``rx`` has a single consumer, the upcall. ``on_data`` runs with no
      lock of the channel held, so it may write and take the user's own locks.
    * **Notifications.** The peer is notified once per :meth:`on_event` in
      which an index moved (bytes read off ``rx``, or written into ``tx`` by the
      upcall or by ``on_data``), and once per :meth:`write` or :meth:`flush` from
      another thread that wrote into ``tx``; never when nothing moved. The
      peer notifies back when it consumes, which is when :meth:`on_event`
      moves the outbox on: nothing waits on a timer.
    * **Flow control.** With ``max_queued`` set, :meth:`write` accepts only what
      fits in ``tx`` now plus what keeps the outbox at or under ``max_queued``
      bytes, and returns how much it accepted; the user decides whether to
      wait (the next :meth:`on_event` is when room appears), retry or drop.
      Without it the outbox grows as needed. :meth:`pending_out` is the
      outbox's size, for users that wait on their own terms. With ``may_read``,
      :meth:`on_event` leaves ``rx`` unread while it returns False (a server
      whose peer has not taken its replies: the peer's requests wait in its
      ring), and looks again on the next event, which the peer's taking of
      replies sends.
    * **A hostile peer.** ``tx`` and ``rx`` refuse indices that cannot be right
      with :class:`~xenlike.public.ring.RingError`, raised from whichever call
      met them; the channel is closed first, so it moves nothing more. An
      exception from ``on_data`` (a framing error) propagates out of
      :meth:`on_event` after the peer has been notified of what moved; the
      user decides whether that ends the connection (:meth:`close`).
    * **Teardown.** :meth:`close` stops all I/O; later writes accept nothing
      and later events do nothing. The rings' pages belong to the user, who
      releases them after closing.
    """

    def __init__(
        self,
        tx: ByteRing,
        rx: ByteRing,
        notify: Callable[[], None],
        on_data: Callable[[bytes], None],
        *,
        max_queued: int | None = None,
        may_read: Callable[[], bool] | None = None,
    ) -> None:
        if max_queued is not None and max_queued < 0:
            raise ValueError(f"max_queued must be 0 or more, not {max_queued}")
        self.tx = tx
        self.rx = rx
        self.max_queued = max_queued
        self._may_read = may_read
        self._notify = notify
        self._on_data = on_data
        self._lock = threading.Lock()
        self._out = bytearray()
        self._closed = False
        # The thread inside on_event: its writes are signalled once, when the upcall ends.
        self._upcall_thread: int | None = None

    @property
    def closed(self) -> bool:
        """True after :meth:`close`, or once a ring's indices were found corrupt."""
        return self._closed

    def pending_out(self) -> int:
        """Bytes accepted by :meth:`write` and not yet in ``tx``."""
        return len(self._out)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` after everything written before; returns the bytes accepted.

        All of ``data`` unless ``max_queued`` bounds the outbox (or the channel is
        closed: 0). Whatever was accepted reaches the peer in order.
        """
        with self._lock:
            if self._closed:
                return 0
            moved = self._flush_locked()
            view = memoryview(data).cast("B")
            written = 0
            if not self._out:
                written = self._tx_write(view)
                moved = moved or written > 0
            rest = view[written:]
            queued = len(rest)
            if self.max_queued is not None:
                queued = min(queued, max(0, self.max_queued - len(self._out)))
            self._out += rest[:queued]
        if moved and self._upcall_thread != threading.get_ident():
            self._notify()
        return written + queued

    def flush(self) -> None:
        """Move what the outbox holds into ``tx`` now; notifies if anything went in."""
        with self._lock:
            moved = not self._closed and self._flush_locked()
        if moved and self._upcall_thread != threading.get_ident():
            self._notify()

    def on_event(self) -> None:
        """The upcall: fill ``tx`` from the outbox, drain ``rx`` into ``on_data``, notify once."""
        if self._closed:
            return
        with self._lock:
            moved = self._flush_locked()
        data = self._rx_read() if self._may_read is None or self._may_read() else b""
        if not data:
            if moved:
                self._notify()
            return
        self._upcall_thread = threading.get_ident()
        try:
            self._on_data(data)
        finally:
            self._upcall_thread = None
            with self._lock:
                closed = self._closed
                if not closed:
                    self._flush_locked()  # what on_data wrote goes with the one notification
            if not closed:
                self._notify()  # rx moved: room again for the peer

    def close(self) -> None:
        """Stop moving bytes; the outbox is dropped."""
        with self._lock:
            self._closed = True
            self._out.clear()

    # -- internals (called with the lock held, except _rx_read) ----------------------

    def _flush_locked(self) -> bool:
        if not self._out:
            return False
        written = self._tx_write(self._out)
        if written:
            del self._out[:written]
        return written > 0

    def _tx_write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self.tx.write(data)
        except RingError:
            self._closed = True
            self._out.clear()
            raise

    def _rx_read(self) -> bytes:
        try:
            return self.rx.read()
        except RingError:
            with self._lock:
                self._closed = True
                self._out.clear()
            raise
