"""Device-model test guest: the same workload on a disk of any model. workload_args: MODE VDEV [ARGS...].

Reports on its console as ``KEY {json}``. Modes:
  same SEED      first boot: checksummed writes of every size (one sector to more than one
                 request), in batches and alone, read back, flushed, a discard, then a header
                 ("FIRST"); after a reboot (the header is there): everything read back and
                 checked, more writes, a flush ("SECOND")
  refused        requests blkback refuses (past the end, on a read-only disk), through the
                 disk's API and, on a direct disk, as raw vdisk_io hypercalls that skip the
                 guest's own checks ("REFUSED")
  escape PATH    on a passthrough disk: try every other file (PATH, its image, /etc/passwd,
                 /proc/self/fd/N, the root directory) and a write past the image's end ("ESCAPE")
  acked          4 KiB records (sequence number, crc32), 8 at a time, never flushed, paced to
                 about 2000 a second until the disk is full; a thread of its own publishes how
                 many were acknowledged in data/acked (the writer never waits on xenstore)
  hotplug        wait for VDEV to appear, write its first and last 4 KiB and read them back
                 ("HOT"), then wait for it to go ("GONE") and say what a request on it does now
"""

import errno
import hashlib
import json
import os
import random
import struct
import threading
import time
import zlib

HEADER = b"XENLIKE-MODELS\0\0"
SECTOR = 512


def report(key, value):
    print(f"{key} {json.dumps(value)}", flush=True)


def block(seed, index, nbytes):
    """A checksummed block: its crc32 in the first 4 bytes, seeded bytes after."""
    body = random.Random(seed * 1000 + index).randbytes(nbytes - 4)
    return zlib.crc32(body).to_bytes(4, "little") + body


def intact(data):
    return int.from_bytes(data[:4], "little") == zlib.crc32(data[4:])


# (sector, bytes): one sector, a page, an odd run, 64 KiB, and more than one request (1 MiB + 4 KiB).
WRITES = [(8, SECTOR), (16, 4096), (40, 7 * SECTOR), (128, 64 << 10), (2048, (1 << 20) + 4096)]
BATCHED = [(6144 + 8 * i, 4096) for i in range(48)]  # more than a ring's worth
DISCARD = (8192, 256)  # sectors 8192..8447: written, then discarded
LATER = [(12288, 32 << 10)]
BUFFER_SECTOR = 16000  # written through a zero-copy buffer


def first_boot(disk, seed):
    for index, (sector, nbytes) in enumerate(WRITES):
        disk.write(sector, block(seed, index, nbytes))
    with disk.batch() as batch:
        for index, (sector, nbytes) in enumerate(BATCHED):
            batch.write(sector, block(seed, 100 + index, nbytes))
    batch.wait()
    disk.write(DISCARD[0], block(seed, 999, DISCARD[1] * SECTOR))
    disk.flush()
    disk.discard(*DISCARD)
    with disk.batch() as batch:
        reads = [batch.read(sector, nbytes) for sector, nbytes in WRITES + BATCHED]
    data = batch.wait()
    checks = {
        "intact": all(intact(chunk) for chunk in data),
        "discarded": disk.read(DISCARD[0], DISCARD[1] * SECTOR) == bytes(DISCARD[1] * SECTOR),
    }
    with disk.buffer(4096) as buf:
        buf.view[:] = block(seed, 500, 4096)
        disk.submit_write_buffer(BUFFER_SECTOR, buf).result()
        buf.view[:] = bytes(4096)
        disk.submit_read_buffer(BUFFER_SECTOR, buf).result()
        checks["buffer"] = intact(bytes(buf.view))
    disk.write(0, HEADER.ljust(SECTOR, b"\0"))
    disk.flush()
    sha = hashlib.sha256(b"".join(data)).hexdigest()
    report("FIRST", {"ok": all(checks.values()), **checks, "reads": len(reads), "sha256": sha})


def second_boot(disk, seed):
    checks = [intact(disk.read(sector, nbytes)) for sector, nbytes in WRITES + BATCHED + [(BUFFER_SECTOR, 4096)]]
    zeros = disk.read(DISCARD[0], DISCARD[1] * SECTOR) == bytes(DISCARD[1] * SECTOR)
    for index, (sector, nbytes) in enumerate(LATER):
        disk.write(sector, block(seed, 700 + index, nbytes))
    disk.flush()
    report("SECOND", {"ok": all(checks) and zeros, "checked": len(checks), "zeros": zeros})


def outcome(action):
    try:
        action()
        return "done"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def refused(ctx, disk):
    end = disk.sectors
    found = {
        "read_past_end": outcome(lambda: disk.read(end - 4, 4096)),
        "write_past_end": outcome(lambda: disk.write(end, b"x" * SECTOR)),
        "discard_past_end": outcome(lambda: disk.discard(end - 1, 8)),
        "readonly": disk.readonly,
    }
    if disk.readonly:
        found["write_readonly"] = outcome(lambda: disk.write(0, b"x" * SECTOR))
    if getattr(disk, "model", "") == "direct":
        # Straight to the hypervisor, past the guest's own checks: as a hostile kernel would.
        frame = ctx.pages.alloc(1)

        def raw(devid=disk.devid, **args):
            try:
                result, _ = ctx.hypercall.call("vdisk_io", devid=devid, **args)
                return result["status"]
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

        found["raw"] = {
            "past_end": raw(operation=0, sector=end, nbytes=4096, pfn=frame),
            "straddling_end": raw(operation=0, sector=end - 1, nbytes=4096, pfn=frame),
            "negative_sector": raw(operation=0, sector=-8, nbytes=4096, pfn=frame),
            "not_whole_sectors": raw(operation=0, sector=0, nbytes=100, pfn=frame),
            "too_large": raw(operation=0, sector=0, nbytes=(1 << 20) + 4096, pfn=frame),
            "frame_not_ours": raw(operation=0, sector=0, nbytes=4096, pfn=ctx.memory.nr_frames),
            "write_readonly": raw(operation=1, sector=0, nbytes=4096, pfn=frame),
            "discard_readonly": raw(operation=5, sector=0, nr_sectors=8),
            "unknown_op": raw(operation=9, sector=0),
            "other_devid": raw(devid=disk.devid + 16, operation=0, sector=0, nbytes=4096, pfn=frame),
            "in_range": raw(operation=0, sector=0, nbytes=4096, pfn=frame),
        }
    report("REFUSED", found)


def errno_of(action):
    try:
        action()
        return "opened"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def escape(ctx, disk, other):
    fd = disk.fd
    size = os.fstat(fd).st_size
    found = {
        "other_file": errno_of(lambda: os.close(os.open(other, os.O_RDONLY))),
        "etc_passwd": errno_of(lambda: os.close(os.open("/etc/passwd", os.O_RDONLY))),
        "reopen_via_proc": errno_of(lambda: os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDWR))),
        "list_root": errno_of(lambda: os.listdir("/")),
        "create_file": errno_of(lambda: os.close(os.open("/tmp/escaped", os.O_CREAT | os.O_WRONLY, 0o600))),
        "grow_image": errno_of(lambda: os.pwrite(fd, b"x" * 4096, size)),
        "size_after": os.fstat(fd).st_size == size,
        "own_io": outcome(lambda: disk.write(0, b"y" * 4096)) == "done" and disk.read(0, 4096) == b"y" * 4096,
    }
    report("ESCAPE", found)


RECORD = struct.Struct("<QI")  # sequence number, crc32 of the rest of the 4 KiB record


def acked(ctx, disk):
    done = [0]
    stop = threading.Event()

    def publish():
        last = -1
        while not stop.wait(0.02):
            if done[0] != last:
                last = done[0]
                ctx.xenstore.write("data/acked", str(last))

    threading.Thread(target=publish, daemon=True).start()
    seq, records = 0, disk.size // 4096
    while seq + 8 <= records and not ctx.shutdown.is_set():
        futures = []
        for _ in range(8):
            body = random.randbytes(4096 - RECORD.size)
            futures.append(disk.submit_write(seq * 8, RECORD.pack(seq, zlib.crc32(body)) + body))
            seq += 1
        for future in futures:
            future.result()
        done[0] = seq
        time.sleep(0.004)
    ctx.shutdown.wait()
    stop.set()


def wait_disk(ctx, vdev, present):
    """Wait until VDEV is there (or gone); False if the domain is asked to shut down first."""
    deadline = time.monotonic() + 30
    while (vdev in ctx.disks) != present:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{vdev} never {'appeared' if present else 'went away'}")
        if ctx.sleep(0.02):
            return False
    return True


def hotplug(ctx, vdev):
    if not wait_disk(ctx, vdev, True):
        return
    disk = ctx.disks[vdev]
    first, last = block(7, 0, 4096), block(7, 1, 4096)
    end = disk.sectors - 8
    disk.write(0, first)
    disk.write(end, last)
    report("HOT", {"model": disk.model, "size": disk.size,
                   "same": disk.read(0, 4096) == first and disk.read(end, 4096) == last})
    if not wait_disk(ctx, vdev, False):
        return  # a passthrough disk stays: the test ends with it plugged
    try:
        disk.write(0, first)
        after = "accepted"
    except Exception as exc:
        after = f"{type(exc).__name__}: {exc}"
    report("GONE", {"disks": sorted(ctx.disks), "after": after})


def run(ctx):
    mode, vdev, *rest = ctx.args
    if mode == "hotplug":
        hotplug(ctx, vdev)
        ctx.shutdown.wait()
        return
    disk = ctx.disks[vdev]
    if mode == "same":
        seed = int(rest[0])
        if disk.read(0, SECTOR).startswith(HEADER):
            second_boot(disk, seed)
        else:
            first_boot(disk, seed)
    elif mode == "refused":
        refused(ctx, disk)
    elif mode == "escape":
        escape(ctx, disk, rest[0])
    elif mode == "acked":
        acked(ctx, disk)
    ctx.shutdown.wait()
