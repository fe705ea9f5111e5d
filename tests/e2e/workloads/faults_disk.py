"""Disk guest for injected faults. workload_args: MODE VDEV; it reports in its data/ nodes.

Modes:
  ledger     checksummed 4 KiB records, 16 writes in flight at a time, each batch read back and checked;
             with each batch two writes to one more slot, in flight together: the second placed must be
             what it holds after (blkback serves a ring in order, and a recovery re-issues in order);
             data/acked counts acknowledged writes; once data/stop appears every record is read and
             checked against the last acknowledged version of its slot: "LEDGER {json}" on the console
  eio        a pattern of 256 4 KiB blocks, read over and over: data/good, data/bad (wrong bytes),
             data/errors (OSErrors), data/pass_errors (in the last whole pass), data/error/<sector>
             ("<errno> <message>") and, once, a write into each failing block (data/write_error/<sector>)
  tolerant   write and read back 64 KiB blocks forever, an OSError counted (data/errors,
             data/last_error "<errno> <message>") and the loop going on; data/gone once the disk left
"""

import json
import random
import struct
import zlib

RECORD = struct.Struct("<QI")  # version, crc32 of the rest of the 4 KiB record
SLOTS = 512  # records in the ledger: 2 MiB
ORDER_SLOT = SLOTS  # the slot written twice a batch
IN_FLIGHT = 16
BLOCKS = 256  # eio's blocks of 4 KiB


def record(version):
    body = random.Random(version).randbytes(4096 - RECORD.size)
    return RECORD.pack(version, zlib.crc32(body)) + body


def check(data, version):
    got, crc = RECORD.unpack_from(data)
    return got == version and zlib.crc32(data[RECORD.size :]) == crc


def ledger(ctx, disk):
    model = {}  # slot -> last acknowledged version
    version = rounds = 0
    while not ctx.shutdown.is_set() and ctx.xenstore.read_str("data/stop") is None:
        batch = {}
        for _ in range(IN_FLIGHT):
            batch[version % SLOTS] = version
            version += 1
        futures = [disk.submit_write(slot * 8, record(v)) for slot, v in batch.items()]
        twice = (10**9 + 2 * rounds, 10**9 + 2 * rounds + 1)
        futures += [disk.submit_write(ORDER_SLOT * 8, record(v)) for v in twice]
        rounds += 1
        for future in futures:
            future.result()  # an error here ends the workload: the test sees no LEDGER
        model.update(batch)
        if not check(disk.read(ORDER_SLOT * 8, 4096), twice[1]):
            print("LEDGER " + json.dumps({"error": f"two writes to one slot were reordered, round {rounds}"}),
                  flush=True)
            return
        ctx.xenstore.write("data/acked", str(version))
        reads = {slot: disk.submit_read(slot * 8, 4096) for slot in batch}
        if not all(check(f.result(), batch[slot]) for slot, f in reads.items()):
            print("LEDGER " + json.dumps({"error": f"a record read back wrong after version {version}"}), flush=True)
            return
    bad = [slot for slot, v in model.items() if not check(disk.read(slot * 8, 4096), v)]
    print("LEDGER " + json.dumps({"acked": version, "slots": len(model), "bad": bad}), flush=True)


def eio(ctx, disk):
    blocks = [random.Random(b).randbytes(4096) for b in range(BLOCKS)]
    for b, data in enumerate(blocks):
        disk.write(b * 8, data)
    disk.flush()
    good = bad = errors = 0
    written = set()
    while not ctx.shutdown.is_set():
        pass_errors = 0
        for b, data in enumerate(blocks):
            try:
                if disk.read(b * 8, 4096) == data:
                    good += 1
                else:
                    bad += 1
            except OSError as exc:
                errors += 1
                pass_errors += 1
                ctx.xenstore.write(f"data/error/{b * 8}", f"{exc.errno} {exc}")
                if b not in written:
                    written.add(b)
                    try:
                        disk.write(b * 8, data)
                        ctx.xenstore.write(f"data/write_error/{b * 8}", "none")
                    except OSError as write_exc:
                        ctx.xenstore.write(f"data/write_error/{b * 8}", f"{write_exc.errno} {write_exc}")
        for node, value in (("good", good), ("bad", bad), ("errors", errors), ("pass_errors", pass_errors)):
            ctx.xenstore.write(f"data/{node}", str(value))


def tolerant(ctx, vdev):
    rounds = errors = 0
    block = random.randbytes(64 << 10)
    while not ctx.shutdown.is_set():
        disk = ctx.disks.get(vdev)
        if disk is None:
            ctx.xenstore.write("data/gone", "1")
            ctx.shutdown.wait(0.2)
            continue
        try:
            disk.write(rounds % 64 * 128, block)
            if disk.read(rounds % 64 * 128, len(block)) != block:
                ctx.xenstore.write("data/crosstalk", str(rounds))
        except OSError as exc:
            errors += 1
            ctx.xenstore.write("data/errors", str(errors))
            ctx.xenstore.write("data/last_error", f"{exc.errno} {exc}")
        rounds += 1
        ctx.xenstore.write("data/rounds", str(rounds))


def run(ctx):
    mode, vdev = ctx.args[0], ctx.args[1]
    if mode == "tolerant":
        tolerant(ctx, vdev)
        return
    disk = ctx.disks[vdev]
    if mode == "ledger":
        ledger(ctx, disk)
    elif mode == "eio":
        eio(ctx, disk)
    ctx.shutdown.wait()
