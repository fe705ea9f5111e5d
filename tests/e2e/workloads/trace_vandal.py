"""A guest that spoils its own trace buffer and tries to reach everyone's.

workload_args: the host's run directory. Scribbles over its buffer's bytes and
indices for a while, then connects to the run directory's trace socket and asks
for the buffers; prints ``VANDAL {json}`` on its console with what it got.
"""

import json
import os
import socket
import time

from xenlike.kernel import trace
from xenlike.kernel.hypercall import recv_message, send_message
from xenlike.public.trace import Word


def run(ctx):
    results = {}
    buffer = trace._buffer
    results["has_buffer"] = buffer is not None
    if buffer is not None:
        for round in range(40):
            buffer.data[: 8192] = os.urandom(8192)
            buffer.words[Word.PROD] = int.from_bytes(os.urandom(4), "little")
            buffer.words[Word.MASK] = 0xFFFFFFFF
            time.sleep(0.05)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        sock.connect(os.path.join(ctx.args[0], "trace.sock"))
        try:
            send_message(sock, {"op": "open", "mask": 0x0FFF0000})
        except BrokenPipeError:
            pass  # refused at once: the answer is waiting
        answer, fds = recv_message(sock)
        results["trace_socket"] = {"answer": answer, "fds": len(fds)}
    except OSError as exc:
        results["trace_socket"] = {"errno": exc.errno, "error": str(exc)}
    print("VANDAL " + json.dumps(results), flush=True)
    ctx.shutdown.wait()
