"""xenconsoled: every domain's console ring, logged and streamed.

For each domU it reads the ``out`` half of the guest's ``xencons_interface`` page
whenever the console event channel fires, appends the bytes to
``logs/<name>.log`` in the run directory, and publishes them on a zmq PUB socket
for ``xenlike console`` and ``xenlike up`` (the format: ``xenlike.tools.console_stream``).
Keyboard input from an attached client goes into the ``in`` half. A
:class:`~xenlike.kernel.byte_channel.ByteChannel` per console moves the bytes
and signals the event channel; everything here runs in dom0's loop thread.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zmq

from xenlike.kernel.byte_channel import ByteChannel
from xenlike.kernel.events import EventLoop
from xenlike.public.console import ConsoleInterface
from xenlike.public.ring import RingError
from xenlike.tools import console_stream

__all__ = ["Xenconsoled", "ConsoleBackend"]

log = logging.getLogger("dom0.xenconsoled")

# How much output of a domain is kept in memory for a client that attaches late.
HISTORY_BYTES = 16 * 1024
# Keyboard input kept for a guest whose ``in`` ring is full; more is refused
# (``send_input`` says how much was taken), so a guest that never reads costs
# dom0 no more than this.
INPUT_QUEUE_BYTES = 4 * 1024


@dataclass
class ConsoleBackend:
    """One domain's console as xenconsoled serves it."""

    domid: int
    name: str
    interface: ConsoleInterface
    port: int
    logfile: BinaryIO | None  # None once writing it failed (a full disk): the ring is still served
    history: bytearray
    published: int = 0  # bytes published so far: the offset of the next message
    channel: ByteChannel = field(init=False)  # dom0 produces ``in``, consumes ``out``


LOG_MAX_BYTES = 32 << 20
"""A console log this long is moved to ``NAME.log.1`` (replacing the one before) and begun again."""


class Xenconsoled:
    """Console back ends of all domUs."""

    def __init__(self, loop: EventLoop, publisher: zmq.Socket, log_dir: Path) -> None:
        self.loop = loop
        self.publisher = publisher
        self.log_dir = log_dir
        self._consoles: dict[int, ConsoleBackend] = {}

    def add(self, domid: int, name: str, interface: ConsoleInterface, port: int) -> ConsoleBackend:
        logfile = open(self.log_dir / f"{name}.log", "ab", buffering=0)
        console = ConsoleBackend(domid, name, interface, port, logfile, bytearray())
        console.channel = ByteChannel(
            interface.input,
            interface.output,
            lambda: self.loop.notify(port),
            lambda data: self._on_output(console, data),
            max_queued=INPUT_QUEUE_BYTES,
        )
        self._consoles[domid] = console
        self.loop.set_handler(port, lambda _port: self._on_event(console))
        return console

    def remove(self, domid: int) -> None:
        """Read what is left, then stop serving the console."""
        console = self._consoles.pop(domid, None)
        if console is None:
            return
        self._on_event(console)
        console.channel.close()
        self._close_log(console)
        console.interface.release()

    def rename(self, domid: int, name: str) -> None:
        console = self._consoles.get(domid)
        if console is not None:
            console.name = name

    def attach(self, domid: int | None) -> dict:
        """Publish a mark for a client that is attaching; return the console's recent output.

        ``domid`` None marks the stream of every console (``xenlike up``). The reply's
        ``history`` is the output that ends at byte ``end`` of the console, where
        the live stream goes on (see ``xenlike.tools.console_stream``).
        """
        if domid is None:
            self.publisher.send_multipart(console_stream.encode(console_stream.ALL_CONSOLES, 0, 0), zmq.NOBLOCK)
            return {}
        console = self._consoles.get(domid)
        if console is None:
            return {"history": b"", "end": 0}
        self.publisher.send_multipart(console_stream.encode(console.name, domid, console.published), zmq.NOBLOCK)
        return {"history": bytes(console.history), "end": console.published}

    def history(self, domid: int) -> bytes:
        """The console's recent output (at most HISTORY_BYTES), with what is still in its ring: what a save or
        a migration carries (the stream's CONSOLE_HISTORY)."""
        console = self._consoles.get(domid)
        if console is None:
            return b""
        self._on_event(console)
        return bytes(console.history)

    def restore_history(self, domid: int, data: bytes) -> None:
        """Output the domain printed before a save or a migration, put before what it printed here.

        An attaching client sees it as history; offsets move on by its length, so the
        live stream still splices at the end (``console_stream``). It is not written
        to the log again: that file is the output printed on this host.
        """
        console = self._consoles.get(domid)
        if console is None or not data:
            return
        data = data[-HISTORY_BYTES:]
        console.history[:0] = data
        del console.history[:-HISTORY_BYTES]
        console.published += len(data)

    def send_input(self, domid: int, data: bytes) -> int:
        """Keyboard bytes for the guest; returns how many were taken (ring and queue)."""
        console = self._consoles.get(domid)
        if console is None:
            return 0
        try:
            return console.channel.write(data)
        except RingError as exc:
            self._dropped(console, exc)
            return 0

    def _on_event(self, console: ConsoleBackend) -> None:
        """Upcall: the guest produced output or consumed keys."""
        try:
            console.channel.on_event()
        except RingError as exc:
            self._dropped(console, exc)

    def _write_log(self, console: ConsoleBackend, data: bytes) -> None:
        """Append to the guest's log, which is kept under :data:`LOG_MAX_BYTES` (and one older part)."""
        logfile = console.logfile
        if logfile is None:
            return
        try:
            if logfile.tell() + len(data) > LOG_MAX_BYTES:
                logfile = self._rotate(console, logfile)
            logfile.write(data)
        except OSError as exc:  # the guest's output must not stop dom0: the ring goes on, the log stops
            log.error("d%d (%s): its console log stops here: %s", console.domid, console.name, exc)
            self._close_log(console)

    def _rotate(self, console: ConsoleBackend, logfile: BinaryIO) -> BinaryIO:
        path = Path(logfile.name)  # opened by path
        logfile.close()
        console.logfile = None
        os.replace(path, path.with_name(path.name + ".1"))
        console.logfile = open(path, "ab", buffering=0)
        return console.logfile

    @staticmethod
    def _close_log(console: ConsoleBackend) -> None:
        if console.logfile is not None:
            try:
                console.logfile.close()
            except OSError:
                pass
            console.logfile = None

    def _dropped(self, console: ConsoleBackend, exc: RingError) -> None:
        # The channel closed itself: the guest's indices cannot be trusted any more.
        log.warning("d%d (%s): console ring dropped: %s", console.domid, console.name, exc)

    def _on_output(self, console: ConsoleBackend, data: bytes) -> None:
        """Bytes off ``out``: the log, the history, the PUB stream."""
        data = data.replace(b"\r\n", b"\n")
        self._write_log(console, data)
        console.history += data
        del console.history[:-HISTORY_BYTES]
        frames = console_stream.encode(console.name, console.domid, console.published, data)
        console.published += len(data)
        self.publisher.send_multipart(frames, zmq.NOBLOCK)
