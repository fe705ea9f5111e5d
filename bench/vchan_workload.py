"""The guests of ``bench/vchan.py``: a vchan server and client measuring a stream and a ping-pong.

``workload_args``: ``server PORT BYTES ROUNDS`` or ``client SERVER PORT BYTES ROUNDS``.
The client streams BYTES to the server in 256 KiB writes, then sends ROUNDS
64-byte packets, each echoed by the server before the next goes. The server
times the stream from its first byte to its last; the client times the rounds.
Each prints ``VCHANBENCH {...}``.
"""

from __future__ import annotations

import json
import time

RING = 1 << 20
CHUNK = 1 << 18
MESSAGE = 64


def _server(ctx, port: int, total: int, rounds: int) -> dict:
    with ctx.vchan.listen(port, read_min=RING, write_min=RING, timeout=60) as chan:
        received = len(chan.recv(CHUNK))
        start = time.perf_counter()
        while received < total:
            received += len(chan.recv(CHUNK))
        seconds = time.perf_counter() - start
        for _ in range(rounds):
            chan.send_packet(chan.recv_packet(MESSAGE))
        chan.recv(1)  # until the client closes
    return {"vchan_mbps": total / seconds / 1e6}


def _client(ctx, server: str, port: int, total: int, rounds: int) -> dict:
    block = memoryview(bytes(range(256)) * (CHUNK // 256))
    with ctx.vchan.connect(server, port, timeout=60) as chan:
        sent = 0
        while sent < total:
            sent += chan.send(block[: min(CHUNK, total - sent)])
        message = bytes(MESSAGE)
        chan.send_packet(message)  # one untimed round: both ends are awake and in the loop
        chan.recv_packet(MESSAGE)
        start = time.perf_counter()
        for _ in range(rounds - 1):
            chan.send_packet(message)
            chan.recv_packet(MESSAGE)
        seconds = time.perf_counter() - start
    return {"vchan_rtt_us": seconds / (rounds - 1) * 1e6}


def run(ctx):
    role, *rest = ctx.args
    if role == "server":
        figures = _server(ctx, int(rest[0]), int(rest[1]), int(rest[2]))
    else:
        figures = _client(ctx, rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    print(f"VCHANBENCH {json.dumps(figures)}", flush=True)
