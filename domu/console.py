"""The guest's console front end over its ``xencons_interface`` page (Linux ``hvc_xen.c``).

The guest writes ``out`` and reads ``in``; xenconsoled does the reverse. A
:class:`~xenlike.kernel.byte_channel.ByteChannel` moves the bytes and signals
the console event channel; this module adds the tty on top.
:class:`ConsoleStream` turns the console into ``sys.stdout``/``sys.stderr`` and
``sys.stdin`` for the workload.

Input goes through a minimal canonical line discipline, as a Linux tty on hvc0
would: keys are echoed, Enter (CR or LF) ends a line, Backspace/DEL erases, and
a reader gets whole lines.
"""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING

from xenlike.kernel.byte_channel import ByteChannel
from xenlike.kernel.events import EventLoop
from xenlike.public.console import ConsoleInterface

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["ConsoleFront", "ConsoleStream"]

# Output the guest may queue beyond what the ring holds before a writer waits.
MAX_QUEUED_OUTPUT = 64 * 1024


class ConsoleFront:
    """Console output and input of one domain (``ctx.console``; ``sys.stdout``, ``sys.stderr`` and ``sys.stdin`` too).

    Output never blocks the event-loop thread (echo, a handler's print); any
    other writer waits while more than :data:`MAX_QUEUED_OUTPUT` bytes are
    queued, until xenconsoled makes room or the console closes.
    """

    def __init__(self, interface: ConsoleInterface, loop: EventLoop, port: int) -> None:
        self.interface = interface
        self.loop = loop
        self.port = port
        self.loop_thread: int | None = None
        self._cond = threading.Condition()  # input lines, and writers waiting for room
        self._line = bytearray()  # input being edited
        self._ready = bytearray()  # completed input lines
        self._closed = False
        self._hung_up = False
        self._channel = ByteChannel(interface.output, interface.input, lambda: loop.notify(port), self._on_keys)
        loop.set_handler(port, self._on_event)

    def write(self, data: bytes) -> int:
        """Queue ``data`` for xenconsoled; waits (outside the loop thread) while much is queued."""
        self._channel.write(data)
        if threading.get_ident() != self.loop_thread:
            with self._cond:
                while self._channel.pending_out() > MAX_QUEUED_OUTPUT and not self._closed:
                    self._cond.wait(0.5)
                    self._channel.flush()
        return len(data)

    def read(self, max_count: int, block: bool = True) -> bytes:
        """Up to ``max_count`` bytes of completed input lines; waits for a line unless ``block`` is False.

        ``b""`` when nothing is there and ``block`` is False, or once the console
        is hung up (a shutdown request) or closed.
        """
        with self._cond:
            while not self._ready:
                if not block or self._closed or self._hung_up:
                    return b""
                self._cond.wait(0.5)
            data = bytes(self._ready[:max_count])
            del self._ready[:max_count]
            return data

    def drain(self, timeout: float = 2.0) -> None:
        """Wait until queued output is in the ring (before the domain shuts down)."""
        self._channel.flush()
        with self._cond:
            self._cond.wait_for(lambda: not self._channel.pending_out(), timeout)

    def hangup(self) -> None:
        """End of input for readers (the domain is shutting down), as a tty hangup."""
        with self._cond:
            self._hung_up = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop: readers get ``b""`` and writers stop waiting for room (output still queued may be lost)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _on_event(self, port: int) -> None:
        """Upcall: xenconsoled consumed output or produced keys."""
        self._channel.on_event()
        with self._cond:
            self._cond.notify_all()  # room for writers, lines for readers

    def _on_keys(self, keys: bytes) -> None:
        with self._cond:
            echo = self._discipline(keys)
        if echo:
            self._channel.write(echo)

    def _discipline(self, keys: bytes) -> bytes:
        """Apply the line discipline to ``keys``; returns the echo."""
        echo = bytearray()
        for key in keys:
            if key in (0x0D, 0x0A):
                self._ready += self._line + b"\n"
                self._line.clear()
                echo += b"\r\n"
            elif key in (0x7F, 0x08):
                if self._line:
                    self._line.pop()
                    echo += b"\b \b"
            elif key >= 0x20 or key == 0x09:
                self._line.append(key)
                echo.append(key)
        return bytes(echo)


class ConsoleStream(io.RawIOBase):
    """A raw file over the console: writable (stdout/stderr) or readable (stdin)."""

    def __init__(self, console: ConsoleFront, mode: str) -> None:
        super().__init__()
        self.console = console
        self.mode = mode

    def readable(self) -> bool:
        """Whether this is the input side (``mode == "r"``)."""
        return self.mode == "r"

    def writable(self) -> bool:
        """Whether this is the output side (``mode == "w"``)."""
        return self.mode == "w"

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Wait for input (:meth:`ConsoleFront.read`) and copy it into ``buffer``; 0 at end of input."""
        view = memoryview(buffer).cast("B")
        data = self.console.read(len(view))
        view[: len(data)] = data
        return len(data)

    def write(self, data: ReadableBuffer) -> int:
        """:meth:`ConsoleFront.write`."""
        return self.console.write(bytes(data))

    def isatty(self) -> bool:
        """True: the console is a terminal, as hvc0 is."""
        return True
