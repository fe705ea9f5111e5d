"""The block benchmark's guest: sequential and random I/O on xvda, timed inside the guest.

Random 4 KiB reads run one request at a time (queue depth 1, and 32 kept in
flight) and in batches of 32 through ``disk.batch()``, each batch waited for.

workload_args: TOTAL_MIB RANDOM_OPS. Prints ``BLKBENCH {json}`` on its console.
"""

import json
import random
import time

MIB = 1 << 20


def _sequential(disk, total_mib, write, depth=8):
    block = random.Random(1).randbytes(MIB)
    start = time.perf_counter()
    inflight = []
    for i in range(total_mib):
        sector = i * (MIB // 512)
        inflight.append(disk.submit_write(sector, block) if write else disk.submit_read(sector, MIB))
        if len(inflight) >= depth:
            inflight.pop(0).result()
    for future in inflight:
        future.result()
    if write:
        disk.flush()
    return total_mib / (time.perf_counter() - start)


def _random_reads(disk, span_sectors, count, depth):
    rng = random.Random(2)
    offsets = [rng.randrange(span_sectors // 8) * 8 for _ in range(count)]
    start = time.perf_counter()
    inflight = []
    for sector in offsets:
        inflight.append(disk.submit_read(sector, 4096))
        if len(inflight) >= depth:
            inflight.pop(0).result()
    for future in inflight:
        future.result()
    return count / (time.perf_counter() - start)


def _random_batches(disk, span_sectors, count, size):
    """Random 4 KiB reads through ``disk.batch()``, ``size`` per batch, each waited for in full."""
    rng = random.Random(2)
    offsets = [rng.randrange(span_sectors // 8) * 8 for _ in range(count)]
    start = time.perf_counter()
    for first in range(0, count, size):
        with disk.batch() as batch:
            for sector in offsets[first : first + size]:
                batch.read(sector, 4096)
        batch.wait()
    return count / (time.perf_counter() - start)


def run(ctx):
    total_mib, random_ops = int(ctx.args[0]), int(ctx.args[1])
    disk = ctx.disks["xvda"]
    figures = {
        "seq_write_mbps": _sequential(disk, total_mib, write=True),
        "seq_read_mbps": _sequential(disk, total_mib, write=False),
        "rand4k_qd1_iops": _random_reads(disk, total_mib * MIB // 512, random_ops // 4, depth=1),
        "rand4k_qd32_iops": _random_reads(disk, total_mib * MIB // 512, random_ops, depth=32),
        "rand4k_batch32_iops": _random_batches(disk, total_mib * MIB // 512, random_ops, size=32),
    }
    print("BLKBENCH " + json.dumps(figures), flush=True)
    ctx.shutdown.wait()
