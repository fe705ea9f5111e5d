"""vchan test workloads: stream both ways with checksums, be refused, stream until the peer dies, probe memory.

``workload_args``: ``MODE ...``

* ``serve PORT BYTES`` / ``connect SERVER PORT BYTES``: send BYTES of a pattern and
  receive BYTES at the same time (a sender thread and the main thread), then print
  ``vchan-result {"sent", "sent_crc", "received", "received_crc", "seconds"}``.
* ``refused SERVER PORT``: try to connect; print ``vchan-refused {"errno", "message"}``.
* ``flood-serve PORT`` / ``flood-connect SERVER PORT``: the server (or the client)
  writes until the stream breaks; the other side reads until the end of the stream.
  Each prints ``vchan-progress`` once data flows and ``vchan-end {"how", "bytes"}``.
* ``probe-serve PORT`` / ``probe-connect SERVER PORT``: the server also grants
  the client an ordinary frame of its memory; the client reports what its maps of
  the vchan page and of that frame give it (``vchan-probe {...}``).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import zlib

RING = 1 << 20
CHUNK = 1 << 18


def _say(key: str, value: dict) -> None:
    print(f"{key} {json.dumps(value)}", flush=True)


def _pattern() -> bytes:
    # Not a power of two long, so a ring that slips by a whole lap does not repeat it.
    return random.Random(7).randbytes(RING + 4099)


def _send(chan, total: int, out: dict) -> None:
    pattern = memoryview(_pattern())
    crc, sent = 0, 0
    while sent < total:
        piece = pattern[: min(len(pattern), total - sent)]
        chan.sendall(piece)
        crc = zlib.crc32(piece, crc)
        sent += len(piece)
    out.update(sent=sent, sent_crc=crc)


def _receive(chan, total: int) -> tuple[int, int]:
    crc, received = 0, 0
    while received < total:
        data = chan.recv(min(CHUNK, total - received))
        if not data:
            break
        crc = zlib.crc32(data, crc)
        received += len(data)
    return received, crc


def _both_ways(ctx, chan, total: int) -> None:
    start = time.monotonic()
    out: dict = {}
    sender = threading.Thread(target=_send, args=(chan, total, out), name="vchan-send")
    sender.start()
    received, crc = _receive(chan, total)
    sender.join()
    _say("vchan-result", {**out, "received": received, "received_crc": crc, "seconds": time.monotonic() - start})


def _flood(chan) -> None:
    block = memoryview(_pattern())
    sent = 0
    try:
        while True:
            sent += chan.send(block)
            if sent >= 8 * RING and sent - len(block) < 8 * RING:
                _say("vchan-progress", {"bytes": sent})
    except BrokenPipeError as exc:
        _say("vchan-end", {"how": "BrokenPipeError", "bytes": sent, "message": str(exc)})


def _drain(chan) -> None:
    received = 0
    while True:
        data = chan.recv(CHUNK)
        if not data:
            _say("vchan-end", {"how": "eof", "bytes": received, "open": chan.is_open()})
            return
        received += len(data)
        if received >= 8 * RING and received - len(data) < 8 * RING:
            _say("vchan-progress", {"bytes": received})


def _probe_serve(ctx, port: int) -> None:
    chan = ctx.vchan.listen(port, client=None, timeout=30)
    frame = ctx.pages.alloc(1)
    ref = ctx.grant_table.grant_access(chan.peer, frame)
    # Beside ring-ref, where the client may read (data/vchan/<client>/<port> is the server's, readable by it).
    ctx.xenstore.write(f"data/vchan/{chan.peer}/{port}/probe-ref", str(ref))
    chan.recv(1)  # the client says it is done
    chan.close()
    ctx.shutdown.wait()


def _probe_connect(ctx, server: str, port: int) -> None:
    chan = ctx.vchan.connect(server, port, timeout=30)
    peer = chan.peer
    report: dict = {"read_size": chan.read_size, "write_size": chan.write_size}
    ring_ref = ctx.xenstore.read_str(f"/local/domain/{peer}/data/vchan/{ctx.domid}/{port}/ring-ref")
    result, fds = ctx.hypercall.call("grant_map", granter=peer, refs=[int(ring_ref)])
    report["page_fd_bytes"] = os.fstat(fds[0]).st_size  # the vchan's pages, nothing more
    try:
        os.ftruncate(fds[0], 0)  # would fault the server on its next touch
        report["shrink"] = "shrunk"
    except OSError as exc:
        report["shrink"] = f"{type(exc).__name__} {exc.errno}"
    ctx.hypercall.call("grant_unmap", handles=result["handles"])
    for fd in fds:
        os.close(fd)
    try:
        result, fds = ctx.hypercall.call("grant_map", granter=peer, refs=[int(_read_ref(ctx, peer, port))])
        report["ordinary_frame"] = f"mapped {result}"
        for fd in fds:
            os.close(fd)
    except OSError as exc:
        report["ordinary_frame"] = str(exc)
        report["ordinary_errno"] = exc.errno
    _say("vchan-probe", report)
    chan.send(b"x")
    chan.close()
    ctx.shutdown.wait()


def _read_ref(ctx, peer: int, port: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        value = ctx.xenstore.read_str(f"/local/domain/{peer}/data/vchan/{ctx.domid}/{port}/probe-ref")
        if value is not None or time.monotonic() > deadline:
            return value or "0"
        time.sleep(0.05)


def run(ctx):
    mode, *rest = ctx.args
    if mode == "serve":
        port, total = int(rest[0]), int(rest[1])
        with ctx.vchan.listen(port, read_min=RING, write_min=RING, timeout=30) as chan:
            _both_ways(ctx, chan, total)
            chan.recv(1)  # wait for the client to close: b""
    elif mode == "connect":
        server, port, total = rest[0], int(rest[1]), int(rest[2])
        with ctx.vchan.connect(server, port, timeout=30) as chan:
            _both_ways(ctx, chan, total)
    elif mode == "refused":
        server, port = rest[0], int(rest[1])
        try:
            ctx.vchan.connect(server, port, timeout=5)
        except OSError as exc:
            _say("vchan-refused", {"errno": exc.errno, "type": type(exc).__name__, "message": str(exc)})
        else:
            _say("vchan-refused", {"errno": 0, "type": "connected", "message": ""})
    elif mode == "flood-serve":
        chan = ctx.vchan.listen(int(rest[0]), read_min=RING, write_min=RING, timeout=30)
        _flood(chan)
        ctx.shutdown.wait()
    elif mode == "drain-serve":
        chan = ctx.vchan.listen(int(rest[0]), read_min=RING, write_min=RING, timeout=30)
        _drain(chan)
        ctx.shutdown.wait()
    elif mode == "flood-connect":
        _flood(ctx.vchan.connect(rest[0], int(rest[1]), timeout=30))
        ctx.shutdown.wait()
    elif mode == "drain-connect":
        _drain(ctx.vchan.connect(rest[0], int(rest[1]), timeout=30))
        ctx.shutdown.wait()
    elif mode == "probe-serve":
        _probe_serve(ctx, int(rest[0]))
    elif mode == "probe-connect":
        _probe_connect(ctx, rest[0], int(rest[1]))
    else:
        print(f"unknown vchan mode {mode!r}", file=sys.stderr)
        return 1
    return None
