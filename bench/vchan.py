"""vchan between two guests against a UNIX socketpair between two host processes, in the same run.

Two domUs, a vchan server (1 MiB rings) and its client, and the same traffic
over ``socket.socketpair()`` between this process and a forked child:

* ``vchan_mbps`` / ``socketpair_mbps``: one direction, 256 KiB writes, timed by
  the receiver from its first byte to its last;
* ``vchan_rtt_us`` / ``socketpair_rtt_us``: a 64-byte message and its echo, one
  at a time (``send_packet``/``recv_packet`` on the vchan).

``measure(quick)`` returns the figures (``bench/net.py`` adds them to its own).

    python bench/vchan.py [--json] [--quick]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import parser, report  # noqa: E402
from xenlike.kernel.rundir import RunDir  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

WORKLOAD = f"{Path(__file__).parent / 'vchan_workload.py'}:run"
CHUNK = 1 << 18
MESSAGE = 64
PORT = 7000


def _sizes(quick: bool) -> tuple[int, int]:
    return (256 << 20, 2_000) if quick else (1 << 30, 20_000)


def guests(total: int, rounds: int) -> dict[str, float]:
    """The two guests' figures, from their consoles."""
    with tempfile.TemporaryDirectory(prefix="xl-", dir="/tmp") as tmp:
        xl = [sys.executable, "-m", "xenlike", "--run-dir", tmp]
        subprocess.run([*xl, "up", "-d", "--memory", "512", "/dev/null"], check=True, stdout=subprocess.DEVNULL)
        try:
            with ToolstackClient(RunDir(tmp)) as client:
                for name, args, extra in (
                    ("vbench-server", ["server", str(PORT)], {"vchan": [f"vbench-client:{PORT}"]}),
                    ("vbench-client", ["client", "vbench-server", str(PORT)], {}),
                ):
                    config = {
                        "name": name,
                        "memory": 64,
                        "workload": WORKLOAD,
                        "workload_args": [*args, str(total), str(rounds)],
                        **extra,
                    }
                    client.call("create", config=config)
            figures: dict[str, float] = {}
            for name in ("vbench-server", "vbench-client"):
                figures.update(_console_figures(Path(tmp) / "logs" / f"{name}.log"))
            return figures
        finally:
            subprocess.run([*xl, "down"], stdout=subprocess.DEVNULL)


def _console_figures(log: Path, timeout: float = 300) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith("VCHANBENCH "):
                return json.loads(line[len("VCHANBENCH ") :])
        time.sleep(0.2)
    raise RuntimeError(f"the guest reported nothing; see {log}")


def socketpair(total: int, rounds: int) -> dict[str, float]:
    """The same stream and ping-pong between two processes over a UNIX socketpair."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        block = memoryview(bytes(range(256)) * (CHUNK // 256))
        sent = 0
        while sent < total:
            sent += child.send(block[: min(CHUNK, total - sent)])
        for _ in range(rounds):
            message = _recv_exactly(child, MESSAGE)
            child.sendall(message)
        os._exit(0)
    child.close()
    try:
        received = len(parent.recv(CHUNK))
        start = time.perf_counter()
        while received < total:
            received += len(parent.recv(CHUNK))
        mbps = total / (time.perf_counter() - start) / 1e6
        message = bytes(MESSAGE)
        parent.sendall(message)
        _recv_exactly(parent, MESSAGE)
        start = time.perf_counter()
        for _ in range(rounds - 1):
            parent.sendall(message)
            _recv_exactly(parent, MESSAGE)
        rtt = (time.perf_counter() - start) / (rounds - 1) * 1e6
    finally:
        parent.close()
        os.waitpid(pid, 0)
    return {"socketpair_mbps": mbps, "socketpair_rtt_us": rtt}


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise EOFError("the peer closed")
        data += part
    return data


def measure(quick: bool = False) -> dict[str, float]:
    """``vchan_mbps``, ``vchan_rtt_us`` and their socketpair baselines, measured now."""
    total, rounds = _sizes(quick)
    figures = guests(total, rounds)
    figures.update(socketpair(total, rounds))
    return {key: figures[key] for key in ("vchan_mbps", "socketpair_mbps", "vchan_rtt_us", "socketpair_rtt_us")}


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    figures = measure(args.quick)
    ratios = {
        "vchan_mbps / socketpair": figures["vchan_mbps"] / figures["socketpair_mbps"],
        "vchan_rtt_us / socketpair": figures["vchan_rtt_us"] / figures["socketpair_rtt_us"],
    }
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
