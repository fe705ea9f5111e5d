"""A guest's console log is bounded, and a log that cannot be written stops only the log.

The guest writes what it likes to its console; xenconsoled appends it to
``logs/<name>.log``. Unbounded, a chatty guest filled the disk; and the OSError of
a full disk escaped the console's upcall into dom0's loop, which stopped the host.
The guest's side is a producer on the same page, as the guest's hvc driver is.
"""

from __future__ import annotations

import os

import pytest
import zmq

from dom0 import xenconsoled
from dom0.xenconsoled import Xenconsoled
from xenlike.public.console import ConsoleInterface


class _Loop:
    def __init__(self) -> None:
        self.handlers: dict = {}

    def set_handler(self, port: int, handler) -> None:
        self.handlers[port] = handler

    def notify(self, port: int) -> None:
        pass

    def fire(self, port: int) -> None:
        self.handlers[port](port)  # as the event loop runs an upcall: nothing catches what it raises


@pytest.fixture
def consoles(tmp_path):
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.bind("inproc://console-test")
    loop = _Loop()
    yield Xenconsoled(loop, publisher, tmp_path), loop, tmp_path
    publisher.close(linger=0)
    context.term()


def _print(page: memoryview, loop: _Loop, port: int, nbytes: int) -> None:
    guest = ConsoleInterface(page)
    line = b"A" * 1023 + b"\n"
    while nbytes > 0:
        nbytes -= guest.output.write(line[: min(len(line), nbytes)])
        loop.fire(port)


def test_a_long_log_is_moved_aside_and_begun_again(consoles, monkeypatch):
    daemon, loop, logs = consoles
    monkeypatch.setattr(xenconsoled, "LOG_MAX_BYTES", 64 << 10)
    page = memoryview(bytearray(4096))
    daemon.add(1, "chatty", ConsoleInterface(page), port=7)
    _print(page, loop, 7, 300 << 10)
    daemon.remove(1)
    assert os.path.getsize(logs / "chatty.log") <= 64 << 10
    assert os.path.getsize(logs / "chatty.log.1") <= 64 << 10
    assert not (logs / "chatty.log.2").exists()


def test_a_log_that_cannot_be_written_stops_and_the_console_goes_on(consoles):
    daemon, loop, logs = consoles
    os.symlink("/dev/full", logs / "full.log")  # a full disk
    page = memoryview(bytearray(4096))
    console = daemon.add(2, "full", ConsoleInterface(page), port=8)
    _print(page, loop, 8, 2048)  # would have raised ENOSPC out of the upcall
    assert console.logfile is None and bytes(console.history).endswith(b"A\n")
    _print(page, loop, 8, 2048)
    daemon.remove(2)
