"""Ring throughput against zmq and multiprocessing.Queue, measured in the same run.

``ring_rps``: request+response pairs per second between a front-end and a
back-end process through a 16-page shared ring (order 4: 512 slots of 64 bytes), with
event-channel notifications suppressed by the event-index trick.
``zmq_pushpull_mps`` / ``mpqueue_mps``: one-way 64-byte messages per second
between two processes over zmq ipc PUSH/PULL and multiprocessing.Queue.
``notify_per_req``: event-channel notifications sent (both directions) per pair.

    python bench/ring.py [--json] [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from bench.common import parser, report  # noqa: E402
from bench.ringpair import SLOT, run_pair  # noqa: E402

RING_PAGES = 16


def _zmq_puller(address: str, count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(address)
    for _ in range(count):
        sock.recv()
    sock.close(linger=0)
    ctx.term()


def zmq_pushpull_mps(count: int) -> float:
    """One-way messages per second through zmq ipc PUSH/PULL."""
    payload = b"x" * SLOT
    with tempfile.TemporaryDirectory(prefix="xenlike-bench-") as tmp:
        address = f"ipc://{tmp}/pushpull"
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.bind(address)
        child = multiprocessing.get_context("fork").Process(target=_zmq_puller, args=(address, count + 1))
        child.start()
        push.send(payload)  # the connection is up once the first message is through
        time.sleep(0.2)
        start = time.perf_counter()
        for _ in range(count):
            push.send(payload)
        child.join()
        elapsed = time.perf_counter() - start
        push.close(linger=0)
        ctx.term()
    return count / elapsed


def _queue_consumer(queue: multiprocessing.Queue, count: int) -> None:
    for _ in range(count):
        queue.get()


def mpqueue_mps(count: int) -> float:
    """One-way messages per second through multiprocessing.Queue."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    payload = b"x" * SLOT
    child = ctx.Process(target=_queue_consumer, args=(queue, count))
    child.start()
    start = time.perf_counter()
    for _ in range(count):
        queue.put(payload)
    child.join()
    elapsed = time.perf_counter() - start
    queue.close()
    queue.join_thread()
    return count / elapsed


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    pairs = 1_000_000 if args.quick else 10_000_000
    messages = 200_000 if args.quick else 1_000_000
    ring = run_pair(pairs, ring_pages=RING_PAGES, mode="echo")
    if ring.errors:
        raise SystemExit(f"ring run failed: {ring.errors}")
    figures = {
        "ring_rps": ring.pairs_per_s,
        "zmq_pushpull_mps": zmq_pushpull_mps(messages),
        "mpqueue_mps": mpqueue_mps(messages // 4),
        "notify_per_req": ring.notify_per_req,
        "lost_wakeups": ring.front_lost_wakeups + ring.back_lost_wakeups,
    }
    ratios = {
        "ring_rps / zmq_pushpull_mps": figures["ring_rps"] / figures["zmq_pushpull_mps"],
        "ring_rps / mpqueue_mps": figures["ring_rps"] / figures["mpqueue_mps"],
    }
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
