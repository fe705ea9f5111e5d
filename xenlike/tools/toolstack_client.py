"""A client of dom0's toolstack API (what the CLI, benchmarks and tests use).

One DEALER socket to the run directory's ``toolstack.sock``; requests and replies
as :mod:`xenlike.public.toolstack_wire` describes them. A host that is not running is detected
before anything is sent, so no call hangs on a missing socket.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import zmq

from xenlike.kernel.rundir import RunDir
from xenlike.public import toolstack_wire

__all__ = ["ToolstackClient", "ToolstackError", "HostNotRunning"]


class ToolstackError(Exception):
    """The toolstack refused a request; the message says why."""


class HostNotRunning(ToolstackError):
    """No xenlike host runs for this run directory."""


class ToolstackClient:
    """Talk to the toolstack of the host in ``run_dir``."""

    def __init__(self, run_dir: RunDir, timeout: float = 60.0) -> None:
        self.run_dir = run_dir
        self.timeout = timeout
        if run_dir.running_pid() is None or not (run_dir.path / "toolstack.sock").exists():
            raise HostNotRunning(
                f"no xenlike host is running in {run_dir.path}; start one with `xenlike up` "
                "(or pick another with --run-dir / XENLIKE_RUN_DIR)"
            )
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock: zmq.Socket[bytes] = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(run_dir.endpoint("toolstack"))
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ToolstackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, **args: Any) -> int:
        """Send a request without waiting; returns its id."""
        call_id = next(self._ids)
        self.sock.send(toolstack_wire.pack({"id": call_id, "op": op, "args": args}))
        return call_id

    def receive(self, timeout: float | None = None) -> dict | None:
        """The next message from the toolstack, or None after ``timeout`` seconds."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while not self.sock.poll(int(min(1.0, max(0.0, deadline - time.monotonic())) * 1000)):
            if time.monotonic() >= deadline:
                return None
            if self.run_dir.running_pid() is None:
                raise HostNotRunning(f"the xenlike host in {self.run_dir.path} stopped")
        return toolstack_wire.unpack(self.sock.recv())

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        """One request, one reply; ToolstackError if refused or if the host stops answering."""
        call_id = self.send(op, **args)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            message = self.receive(max(0.0, remaining))
            if message is None:
                if self.run_dir.running_pid() is None:
                    raise HostNotRunning(f"the xenlike host in {self.run_dir.path} stopped")
                raise ToolstackError(
                    f"the toolstack did not answer {op} within {self.timeout if timeout is None else timeout:g}s"
                )
            if message.get("id") != call_id or "event" in message:
                continue
            if not message.get("ok"):
                raise ToolstackError(message.get("error", "refused"))
            return message.get("result")

    def stream(self, op: str, **args: Any) -> Iterator[dict]:
        """Send a streaming request (a watch); yields its events until the caller stops."""
        call_id = self.send(op, **args)
        first = True
        while True:
            message = self.receive(1.0)
            if message is None:
                if self.run_dir.running_pid() is None:
                    raise HostNotRunning(f"the xenlike host in {self.run_dir.path} stopped")
                continue
            if message.get("id") != call_id:
                continue
            if "event" in message:
                yield message["event"]
            elif first:
                first = False
                if not message.get("ok"):
                    raise ToolstackError(message.get("error", "refused"))
                yield {"started": message.get("result"), "watch_id": call_id}
