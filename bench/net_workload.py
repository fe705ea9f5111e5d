"""The network benchmark's two ends, run in two guests (and, for the baseline, in two namespaces).

``server``: a TCP sink on STREAM_PORT (answers the byte count at EOF) and a UDP echo on RR_PORT.
``client SERVER SECONDS COUNT``: a TCP stream of 64 KiB writes for SECONDS, then COUNT 1-byte UDP
request/responses; reports ``NETBENCH {"tcp_stream_mbps", "udp_rr_us"}``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

STREAM_PORT, RR_PORT = 5001, 5002
CHUNK = 1 << 16


def serve_stream(sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        total = 0
        buffer = bytearray(1 << 20)
        while True:
            count = conn.recv_into(buffer)
            if not count:
                break
            total += count
        conn.sendall(struct.pack("<Q", total))
        conn.close()


def serve_rr(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def start_servers() -> None:
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    stream.bind(("0.0.0.0", STREAM_PORT))
    stream.listen(4)
    rr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rr.bind(("0.0.0.0", RR_PORT))
    threading.Thread(target=serve_stream, args=(stream,), daemon=True).start()
    threading.Thread(target=serve_rr, args=(rr,), daemon=True).start()


def connect(server: str, timeout: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((server, STREAM_PORT), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def tcp_stream_mbps(server: str, seconds: float) -> float:
    """Megabits per second of 64 KiB writes, counted by the receiver."""
    sock = connect(server)
    sock.settimeout(None)
    block = bytes(CHUNK)
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        sock.sendall(block)
    sock.shutdown(socket.SHUT_WR)
    received = struct.unpack("<Q", sock.recv(8))[0]
    elapsed = time.perf_counter() - start
    sock.close()
    return received * 8 / elapsed / 1e6


def udp_rr_us(server: str, count: int) -> float:
    """Mean microseconds of a 1-byte UDP request and its response."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect((server, RR_PORT))
    for _ in range(100):  # warm-up: ARP, caches
        sock.send(b"x")
        sock.recv(16)
    start = time.perf_counter()
    for _ in range(count):
        sock.send(b"x")
        sock.recv(16)
    elapsed = time.perf_counter() - start
    sock.close()
    return elapsed / count * 1e6


def measure(server: str, seconds: float, count: int) -> dict[str, float]:
    return {"tcp_stream_mbps": tcp_stream_mbps(server, seconds), "udp_rr_us": udp_rr_us(server, count)}


def run(ctx) -> None:
    mode, *args = ctx.args
    if mode == "server":
        start_servers()
        print("NETSERVER ready", flush=True)
        ctx.shutdown.wait()
        return
    server, seconds, count = args
    figures = measure(server, float(seconds), int(count))
    print(f"NETBENCH {json.dumps(figures)}", flush=True)
    ctx.shutdown.wait()
