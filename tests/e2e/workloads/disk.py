"""Disk test guest. workload_args: MODE VDEV [ARGS...]; reports on its console as ``KEY {json}``.

Modes:
  pattern SEED MIB   first boot: write a seeded pattern and a header, flush ("WROTE");
                     later boots (the header is there): read it back ("VERIFY")
  readonly           try to write a read-only disk ("RO")
  hotplug            wait for VDEV to appear, write and read it ("HOT"), wait for it to go ("GONE")
  durable            write 4 KiB records forever, flushing every 8, publishing data/flushed
  hostile            corrupt the ring's req_prod and kick the back end ("HOSTILE")
  io [PAUSE_MS]      write and read back forever, counting rounds in data/rounds; with
                     PAUSE_MS, idle that long after each round (longer than the rings' poll
                     windows, each round's requests then notify the back end)
  batch SEED MIB     mixed reads and writes through disk.batch(), more than the ring and the
                     pool hold, checked byte for byte against a model of the disk ("BATCH")
  buffers SEED       zero-copy I/O through disk.buffer(): patterns written and read back through
                     buffers and read(), alone and in batches; the misuse that must raise ("BUFFERS")
"""

import hashlib
import json
import random
import struct
import threading
import time
import zlib

MAGIC = b"XENLIKE-PATTERN\0"
RECORD = struct.Struct("<QI")  # sequence number, crc32 of the rest of the 4 KiB record


def report(key, value):
    print(f"{key} {json.dumps(value)}", flush=True)


def wait_disk(ctx, vdev, present=True, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (vdev in ctx.disks) != present:
        if time.monotonic() > deadline or ctx.shutdown.is_set():
            raise TimeoutError(f"{vdev} never {'appeared' if present else 'went away'}")
        time.sleep(0.02)
    return ctx.disks.get(vdev)


def pattern(seed, mib):
    return random.Random(seed).randbytes(mib << 20)


def counting(calls, function, count_if=lambda *args: True):
    """``function``, appending to ``calls`` each time it is called (and ``count_if`` holds)."""
    def counted(*args):
        result = function(*args)
        if count_if(*args, result):
            calls.append(args)
        return result
    return counted


def batch_round(disk, model, rng, nr_small, nr_big):
    """One batch of READs and WRITEs on distinct blocks, checked against ``model`` (updated).

    One 1.5 MiB READ (split in two requests), ``nr_big`` 256 KiB requests (indirect)
    and ``nr_small`` 4 KiB ones, shuffled, then a FLUSH. Requests in flight together
    may complete in any order, so no two of them touch the same block. Returns the
    offsets of READs that differed from the model, the requests and the pages.
    """
    extent = 64 * 4096
    nr_extents = len(model) // extent
    first_huge = rng.randrange(nr_extents - 5)
    others = [e for e in range(nr_extents) if not first_huge <= e < first_huge + 6]
    rng.shuffle(others)
    big, rest = others[:nr_big], others[nr_big:]
    blocks = rng.sample([e * extent + b * 4096 for e in rest for b in range(64)], nr_small)
    plan = ([(first_huge * extent, 6 * extent, False)] +
            [(e * extent, extent, rng.random() < 0.5) for e in big] +
            [(offset, 4096, rng.random() < 0.5) for offset in blocks])  # (offset, size, is_write)
    rng.shuffle(plan)
    writes = {}
    with disk.batch() as batch:
        for offset, size, is_write in plan:
            if is_write:
                writes[offset] = rng.randbytes(size)
                batch.write(offset // 512, writes[offset])
            else:
                batch.read(offset // 512, size)
        batch.flush()
    results = batch.wait()
    wrong = [offset for (offset, size, is_write), got in zip(plan, results)
             if not is_write and got != bytes(model[offset : offset + size])]
    for offset, data in writes.items():
        model[offset : offset + len(data)] = data
    return wrong, len(plan), sum(size // 4096 for _, size, _ in plan)


def batch_mode(ctx, disk, seed, mib):
    """The batch interface against a model: see the module docstring ("batch")."""
    rng = random.Random(seed)
    span = mib << 20
    model = bytearray(disk.read(0, span))
    pushes, notifies = [], []
    disk.ring.push_requests = counting(pushes, disk.ring.push_requests)
    ctx.events.notify = counting(notifies, ctx.events.notify, lambda port, result: port == disk.port)
    pool_pages = disk._pool.chunk_pages * disk._pool.max_chunks
    nr_small = 2 * disk.ring.nr_ents + 5
    nr_big = pool_pages // 64 + 2
    outcome = {"ring_slots": disk.ring.nr_ents, "pool_pages": pool_pages, "wrong": [], "rounds": []}
    for _ in range(3):
        del pushes[:], notifies[:]
        wrong, requests, pages = batch_round(disk, model, rng, nr_small, nr_big)
        outcome["wrong"] += wrong
        outcome["rounds"].append({"requests": requests, "pages": pages, "pushes": len(pushes),
                                  "notifies": len(notifies)})
    del pushes[:], notifies[:]
    small_wrong, _, _ = batch_round(disk, model, rng, 16, 0)
    outcome["wrong"] += small_wrong
    outcome["small"] = {"pushes": len(pushes), "notifies": len(notifies)}
    try:
        with disk.batch() as abandoned:
            never = abandoned.write(0, b"\xee" * 4096)
            raise RuntimeError("changed my mind")
    except RuntimeError:
        pass
    try:
        never.result()
        outcome["abandoned"] = "completed"
    except Exception as exc:
        outcome["abandoned"] = type(exc).__name__
    outcome["same"] = disk.read(0, span) == model
    outcome["sha256"] = hashlib.sha256(model).hexdigest()
    report("BATCH", outcome)


# A sector, a page, the most pages without indirect descriptors, the fewest with, the most a request holds.
BUFFER_SIZES = [512, 4096, 11 * 4096, 12 * 4096, 1 << 20]


def raises(error, action):
    """The name of what ``action()`` raised if it is ``error``; None if it raised nothing."""
    try:
        action()
    except error as exc:
        return type(exc).__name__
    return None


def read_through_buffer(disk, offset, size):
    """``size`` bytes at ``offset``, read into a buffer first filled with junk (pages may hold old data)."""
    with disk.buffer(size) as buf:
        buf.view[:] = b"\xa5" * size
        disk.submit_read_buffer(offset // 512, buf).result()
        return bytes(buf.view)


def buffers_one_by_one(disk, rng):
    """Each size written through a buffer at its own 2 MiB offset, read back both ways."""
    written = {}
    for i, size in enumerate(BUFFER_SIZES):
        offset, data = i << 21, rng.randbytes(size)
        with disk.buffer(size) as buf:
            buf.view[:] = data
            disk.submit_write_buffer(offset // 512, buf).result()
        written[offset] = data
    plain = (len(BUFFER_SIZES) + 1) << 21  # the other direction: write(), then read into a buffer
    disk.write(plain // 512, written[0] * 8)
    return {"read": all(disk.read(o // 512, len(d)) == d for o, d in written.items()),
            "read_buffer": all(read_through_buffer(disk, o, len(d)) == d for o, d in written.items()),
            "write_then_read_buffer": read_through_buffer(disk, plain, 4096) == written[0] * 8}


def buffers_in_a_batch(disk, rng):
    """Six 64 KiB buffers written in one batch with a FLUSH, read back in one batch beside plain reads."""
    base, size = 10 << 20, 64 << 10
    data = [rng.randbytes(size) for _ in range(6)]
    out = [disk.buffer(size) for _ in data]
    for buf, block in zip(out, data):
        buf.view[:] = block
    with disk.batch() as batch:
        for i, buf in enumerate(out):
            batch.write_buffer((base + i * size) // 512, buf)
        batch.flush()
        queued_twice = raises(Exception, lambda: batch.write_buffer(base // 512, out[0]))
        release_queued = raises(Exception, out[0].release)
    written = batch.wait()
    back = [disk.buffer(size) for _ in data]
    with disk.batch() as batch:
        for i, buf in enumerate(back):
            buf.view[:] = bytes(size)
            batch.read_buffer((base + i * size) // 512, buf)
            batch.read((base + i * size) // 512, size)
    results = batch.wait()
    outcome = {"written": written == [None] * 7, "queued_twice": queued_twice, "release_queued": release_queued,
               "read_buffer": [bytes(buf.view) for buf in back] == data, "read": results[1::2] == data,
               "buffer_results": results[0::2] == [None] * 6}
    for buf in out + back:
        buf.release()
    return outcome


def buffers_misused(ctx, disk):
    """A second request and a release on a buffer in flight, and every use after release, raise."""
    buf = disk.buffer(1 << 20)
    # No upcalls: the request stays in flight until its result() takes the response.
    ctx.events.mask(disk.port)
    time.sleep(0.1)  # an upcall already dispatched finishes first
    try:
        future = disk.submit_read_buffer(0, buf)
        outcome = {"busy": buf.busy,
                   "second_submit": raises(Exception, lambda: disk.submit_write_buffer(0, buf)),
                   "release_in_flight": raises(Exception, buf.release)}
    finally:
        ctx.events.unmask(disk.port)
    outcome["result"] = future.result()
    view = buf.view
    buf.release()
    buf.release()  # harmless
    outcome.update(view_after_release=raises(Exception, lambda: buf.view),
                   old_view_after_release=raises(Exception, lambda: view[0]),
                   submit_after_release=raises(Exception, lambda: disk.submit_read_buffer(0, buf)),
                   too_big=raises(Exception, lambda: disk.buffer(disk.max_segments * 4096 + 512)),
                   not_sectors=raises(Exception, lambda: disk.buffer(100)))
    return outcome


def buffers_fill_the_pool(disk):
    """Buffers holding the whole pool: another borrow times out, or waits until one is released."""
    pool = disk._pool
    held = [disk.buffer(disk.max_segments * 4096) for _ in range(pool.max_chunks)]  # a whole chunk each
    timed_out = raises(TimeoutError, lambda: disk.buffer(512, timeout=0.2))
    threading.Timer(0.2, held[0].release).start()
    with disk.buffer(512, timeout=30) as late:
        waited = late.nbytes == 512
    for buf in held:
        buf.release()
    return {"timed_out": timed_out, "waited": waited, "all_returned": pool.free_pages == pool.pages}


def buffers_mode(ctx, disk, seed):
    """The zero-copy buffer interface: see the module docstring ("buffers")."""
    rng = random.Random(seed)
    outcome = {"one_by_one": buffers_one_by_one(disk, rng), "batch": buffers_in_a_batch(disk, rng),
               "misuse": buffers_misused(ctx, disk), "pool": buffers_fill_the_pool(disk)}
    disk.flush()
    outcome["sha256"] = hashlib.sha256(disk.read(0, 16 << 20)).hexdigest()
    report("BUFFERS", outcome)


def run(ctx):
    mode, vdev, *rest = ctx.args
    if mode == "hotplug":
        disk = wait_disk(ctx, vdev)
        data = b"hotplugged!" * 372 + b"\0" * 4
        disk.write(0, data)
        report("HOT", {"same": disk.read(0, len(data)) == data, "size": disk.size})
        wait_disk(ctx, vdev, present=False)
        report("GONE", {"disks": sorted(ctx.disks)})
        ctx.shutdown.wait()
        return
    disk = ctx.disks[vdev]
    if mode == "pattern":
        seed, mib = int(rest[0]), int(rest[1])
        header = disk.read(0, 512)
        expected = pattern(seed, mib)
        if header.startswith(MAGIC):
            data = disk.read(1, mib << 20)
            report("VERIFY", {"same": data == expected, "sha256": hashlib.sha256(data).hexdigest()})
        else:
            disk.write(1, expected)
            disk.flush()
            disk.write(0, MAGIC.ljust(512, b"\0"))
            disk.flush()
            report("WROTE", {"sha256": hashlib.sha256(expected).hexdigest()})
    elif mode == "readonly":
        before = disk.read(0, 4096)
        try:
            disk.write(0, b"\xff" * 4096)
            outcome = {"refused": False}
        except Exception as exc:
            outcome = {"refused": True, "error": str(exc), "type": type(exc).__name__}
        outcome["unchanged"] = disk.read(0, 4096) == before
        report("RO", outcome)
    elif mode == "durable":
        seq = 0
        while not ctx.shutdown.is_set():
            futures = []
            for _ in range(8):
                body = random.randbytes(4096 - RECORD.size)
                futures.append(disk.submit_write(seq * 8, RECORD.pack(seq, zlib.crc32(body)) + body))
                seq += 1
            for future in futures:
                future.result()
            disk.flush()
            ctx.xenstore.write("data/flushed", str(seq))
    elif mode == "hostile":
        ring = disk.ring
        shared = ring.shared_indices()
        header = ctx.memory.frames(disk._shared.first_pfn, 1)
        struct.pack_into("<I", header, 0, shared["req_prod"] + 5 * ring.nr_ents)  # far past what the ring holds
        ctx.events.notify(disk.port)
        time.sleep(1.0)
        report("HOSTILE", {"sent": True})
    elif mode == "batch":
        batch_mode(ctx, disk, int(rest[0]), int(rest[1]))
    elif mode == "buffers":
        buffers_mode(ctx, disk, int(rest[0]))
    elif mode == "io":
        rounds = 0
        block = random.randbytes(64 << 10)
        while not ctx.shutdown.is_set():
            disk.write(rounds % 64 * 128, block)
            if disk.read(rounds % 64 * 128, len(block)) != block:
                report("CROSSTALK", {"round": rounds})
                return
            rounds += 1
            ctx.xenstore.write("data/rounds", str(rounds))
            if rest:
                ctx.shutdown.wait(int(rest[0]) / 1000)
    ctx.shutdown.wait()
