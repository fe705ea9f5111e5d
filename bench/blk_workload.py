"""The block benchmark's guest: sequential and random I/O on xvda, timed inside the guest.

Random 4 KiB reads run one request at a time (queue depth 1, and 32 kept in
flight) and in batches of 32 through ``disk.batch()``, each batch waited for.
Last, the sequential pattern again through eight zero-copy buffers
(``disk.buffer()``; see ``_sequential_buffers`` for what is copied); on a
passthrough disk, random reads as native makes them, ``os.pread`` on the disk's
fd with no API between (``rand4k_guest_pread_iops``): the guest process's own
cost, apart from the API's.

workload_args: TOTAL_MIB RANDOM_OPS. Each pass starts with a ``PHASE name`` line on its
console (the host notes every process's CPU time then); at the end it prints
``BLKBENCH {json}``: the figures and the guest process's own CPU time per pass.
"""

import json
import random
import time

MIB = 1 << 20
WARM_UP_MIB = 8  # blkfront's pool: eight requests of 1 MiB


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


def _sequential_buffers(disk, total_mib, write, depth=8):
    """The sequential pattern through ``depth`` 1 MiB buffers, each reused once its request completed.

    The buffers are borrowed before the clock starts (io_uring registers its buffers
    once too). A WRITE copies the source block into its buffer once per request, as a
    workload producing the data would, and the back end writes it from there. A READ's
    data is left where the back end put it, in the buffer, and touched once: its first
    and last bytes are compared with the block written.
    """
    block = random.Random(1).randbytes(MIB)
    buffers = [disk.buffer(MIB) for _ in range(depth)]
    pending = [None] * depth
    wrong = 0

    def reap(slot):
        nonlocal wrong
        if pending[slot] is not None:
            pending[slot].result()
            if not write:
                view = buffers[slot].view
                wrong += view[0] != block[0] or view[-1] != block[-1]

    start = time.perf_counter()
    for i in range(total_mib):
        slot, sector = i % depth, i * (MIB // 512)
        reap(slot)
        if write:
            buffers[slot].view[:] = block
            pending[slot] = disk.submit_write_buffer(sector, buffers[slot])
        else:
            pending[slot] = disk.submit_read_buffer(sector, buffers[slot])
    for slot in range(depth):
        reap(slot)
    if write:
        disk.flush()
    elapsed = time.perf_counter() - start
    for buf in buffers:
        buf.release()
    if wrong:
        raise RuntimeError(f"{wrong} zero-copy reads did not hold the block written")
    return total_mib / elapsed


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


def _random_preads(disk, span_sectors, count):
    """A passthrough disk's fd read as native does (``os.pread``, no API): what the guest's process itself costs."""
    import os

    rng = random.Random(2)
    offsets = [rng.randrange(span_sectors // 8) * 8 * 512 for _ in range(count)]
    start = time.perf_counter()
    for offset in offsets:
        os.pread(disk.fd, 4096, offset)
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


def _warm_up(disk):
    """One untimed pass over as much as the grant pool holds, as the native side gets one too.

    The first use of the pool grants its pages, makes blkback map them
    (persistent grants) and touches them: once per device, not per request.
    """
    _sequential(disk, WARM_UP_MIB, write=True)
    _sequential(disk, WARM_UP_MIB, write=False)


PHASES = ("seq_write_mbps", "seq_read_mbps", "rand4k_qd1_iops", "rand4k_qd32_iops", "rand4k_batch32_iops",
          "seq_write_zc_mbps", "seq_read_zc_mbps")
PHASE_GAP_S = 0.05  # after a PHASE line, so the host notes every process's CPU time before the phase starts


def _phase(name):
    """Mark a phase's start on the console; the host reads each process's CPU time there."""
    print(f"PHASE {name}", flush=True)
    time.sleep(PHASE_GAP_S)


def run(ctx):
    total_mib, random_ops = int(ctx.args[0]), int(ctx.args[1])
    disk = ctx.disks["xvda"]
    span = total_mib * MIB // 512
    _warm_up(disk)
    passes = {
        "seq_write_mbps": lambda: _sequential(disk, total_mib, write=True),
        "seq_read_mbps": lambda: _sequential(disk, total_mib, write=False),
        "rand4k_qd1_iops": lambda: _random_reads(disk, span, random_ops // 4, depth=1),
        "rand4k_qd32_iops": lambda: _random_reads(disk, span, random_ops, depth=32),
        "rand4k_batch32_iops": lambda: _random_batches(disk, span, random_ops, size=32),
        "seq_write_zc_mbps": lambda: _sequential_buffers(disk, total_mib, write=True),
        "seq_read_zc_mbps": lambda: _sequential_buffers(disk, total_mib, write=False),
    }
    figures, cpu = {}, {}
    for name in PHASES:
        _phase(name)
        start = time.process_time()
        figures[name] = passes[name]()
        cpu[name] = time.process_time() - start
    _phase("end")
    if disk.model == "passthrough":  # after the last PHASE line: no pass's CPU times include it
        figures["rand4k_guest_pread_iops"] = _random_preads(disk, span, random_ops)
    print("BLKBENCH " + json.dumps({"figures": figures, "guest_cpu_s": cpu}), flush=True)
    ctx.shutdown.wait()
