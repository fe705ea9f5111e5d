"""Disk test guest. workload_args: MODE VDEV [ARGS...]; reports on its console as ``KEY {json}``.

Modes:
  pattern SEED MIB   first boot: write a seeded pattern and a header, flush ("WROTE");
                     later boots (the header is there): read it back ("VERIFY")
  readonly           try to write a read-only disk ("RO")
  hotplug            wait for VDEV to appear, write and read it ("HOT"), wait for it to go ("GONE")
  durable            write 4 KiB records forever, flushing every 8, publishing data/flushed
  hostile            corrupt the ring's req_prod and kick the back end ("HOSTILE")
  io                 write and read back forever, counting rounds in data/rounds
"""

import hashlib
import json
import random
import struct
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
        header = ctx.memory.frames(disk._ring_first, 1)
        struct.pack_into("<I", header, 0, shared["req_prod"] + 5 * ring.nr_ents)  # far past what the ring holds
        ctx.events.notify(disk.port)
        time.sleep(1.0)
        report("HOSTILE", {"sent": True})
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
    ctx.shutdown.wait()
