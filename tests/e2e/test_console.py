"""Console output reaches the log and an attached client; keyboard input reaches the guest."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from .conftest import wait_for
from .test_lifecycle import write_cluster


def read_until(proc: subprocess.Popen, needle: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} never came; got {seen[-300:]!r}"
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"the console client exited; got {seen[-300:]!r}"
            seen += chunk
    return seen


@contextmanager
def console_client(host, name: str) -> Iterator[subprocess.Popen]:
    """``xenlike console NAME`` as a user runs it; detached with Ctrl-] at the end of the block."""
    client = subprocess.Popen(
        [sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "console", name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        yield client
        client.stdin.write(b"\x1d")  # Ctrl-] detaches
        client.stdin.flush()
        assert client.wait(10) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_console_attach_streams_output_and_sends_input(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "e", "workload": "echo"}])))
    wait_for(lambda: "type a line" in host.log("e"), what="the echo prompt in the log")
    with console_client(host, "e") as client:
        read_until(client, b"type a line")  # the history a late client gets
        client.stdin.write(b"hello xen\n")
        client.stdin.flush()
        read_until(client, b"echo: hello xen")  # the guest read it and answered, live
    domid = host.domains()["e"]["domid"]
    assert host.xs_read(f"/local/domain/{domid}/data/last-line") == "hello xen"
    assert "echo: hello xen" in host.log("e")


def test_console_attached_mid_stream_loses_and_repeats_nothing(host, tmp_path):
    """A client attaching while the guest prints sees history and live output as one stream."""
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker", "workload_args": ["--interval", "0.005"]}])))
    wait_for(lambda: "tick 20" in host.log("t"), what="the ticker running")
    with console_client(host, "t") as client:
        first = int(host.xs_read(f"/local/domain/{host.domains()['t']['domid']}/data/ticks"))
        seen = read_until(client, f"tick {first + 100}\n".encode())
    ticks = [int(line.split()[1]) for line in seen.decode().splitlines()[1:] if line.startswith("tick ")]
    assert ticks == list(range(ticks[0], ticks[-1] + 1)), "a line was lost or repeated"
    assert seen.decode().splitlines()[-1] in host.log("t")


def test_console_line_discipline_echoes_and_erases(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "e", "workload": "echo"}])))
    wait_for(lambda: "type a line" in host.log("e"), what="the echo prompt")
    host.call("console_input", domain="e", data=b"abx\x7fc\r")
    wait_for(lambda: "echo: abc" in host.log("e"), what="the edited line echoed")
