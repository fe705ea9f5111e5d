"""Save/restore test guest. workload_args: MODE [VDEV]; reports on its console as ``KEY {json}``.

Modes:
  counter VDEV   keeps a counter and a pattern of PAGES pages in ctx.memory; each tick
                 writes sector N of VDEV with N, and once the write is acknowledged
                 records N as acknowledged in memory. Its suspend hook holds the loop
                 and returns where its pages are and their digest; after a resume it
                 checks memory against the digest and the disk against every write
                 it had acknowledged ("RESUMED"), then goes on ticking.
  refuses        its suspend hook raises SuspendRefused ("busy right now")
  fill           fills its free memory, then ticks ("FILLED"): a migration of it takes a while
  hostile        makes the save, migration and balloon hypercalls with arguments a guest must not
                 get away with, and reports each answer's errno ("HOSTILE")

``unsuspendable`` (a function of its own) ticks and says it can never be suspended.
"""

import hashlib
import json
import struct
import threading

from domu.workload import SuspendRefused

PAGES = 16
SECTOR = 512
STATE = {}
HOLD = threading.Event()  # set by the suspend hook: the loop stops touching memory and disk
HELD = threading.Event()  # set by the loop once it is held
WORDS = struct.Struct("<QQ")  # counter, last acknowledged write


def report(key, value):
    print(f"{key} {json.dumps(value)}", flush=True)


def _pages(ctx):
    return ctx.memory.frames(STATE["pfn"], PAGES)


def _digest(ctx):
    return hashlib.sha256(_pages(ctx)).hexdigest()


def _verify_disk(disk, acked):
    bad = [n for n in range(1, acked + 1) if struct.unpack_from("<Q", disk.read(n, SECTOR))[0] != n]
    return bad[:5]


def run(ctx):
    mode = ctx.args[0]
    if mode == "refuses":
        return _tick(ctx)
    if mode == "hostile":
        return _hostile(ctx)
    if mode == "fill":
        if not ctx.resumed:
            count = ctx.pages.free_frames - 512
            view = ctx.memory.frames(ctx.pages.alloc(count), count)
            chunk = bytes(range(1, 256)) * (1 << 14)
            for at in range(0, len(view), len(chunk)):
                piece = view[at : at + len(chunk)]
                piece[:] = chunk[: len(piece)]
            report("FILLED", {"pages": count})
        return _tick(ctx)
    disk = ctx.disks[ctx.args[1]]
    if not ctx.resumed:
        STATE["pfn"] = ctx.pages.alloc(PAGES)
    pages = _pages(ctx)
    if ctx.resumed:
        counter, acked = WORDS.unpack_from(pages)
        report(
            "RESUMED",
            {
                "counter": counter,
                "acked": acked,
                "memory_same": _digest(ctx) == STATE["digest"],
                "disk_bad": _verify_disk(disk, acked),
                "pfn": STATE["pfn"],
            },
        )
    else:
        report("STARTED", {"pfn": STATE["pfn"]})
    while not ctx.shutdown.is_set():
        if HOLD.is_set():
            HELD.set()
            ctx.sleep(0.01)
            continue
        counter, acked = WORDS.unpack_from(pages)
        counter += 1
        # Memory a checksum can follow: page k holds the counter's byte pattern.
        k = 1 + counter % (PAGES - 1)
        pages[k * 4096 : (k + 1) * 4096] = bytes([counter % 251]) * 4096
        WORDS.pack_into(pages, 0, counter, acked)
        disk.write(counter, struct.pack("<Q", counter).ljust(SECTOR, b"\0"))
        WORDS.pack_into(pages, 0, counter, counter)  # acknowledged: it is on the disk
        if counter % 20 == 0:
            report("TICK", {"counter": counter})
        ctx.sleep(0.01)


def _hostile(ctx):
    import errno

    first = ctx.pages.first
    own = ctx.pages.alloc(1)
    attempts = {
        "suspend_record_outside": ("sched_shutdown", {"reason": 2, "record": [ctx.memory.nr_frames + 5, 100]}),
        "suspend_record_in_start_info": ("sched_shutdown", {"reason": 2, "record": [0, 100]}),
        "suspend_record_huge": ("sched_shutdown", {"reason": 2, "record": [own, 1 << 30]}),
        "logdirty_unasked": ("logdirty_register", {"address": 4096, "nr_frames": ctx.memory.nr_frames}),
        "give_back_start_info": ("decrease_reservation", {"pfns": [0]}),
        "give_back_beyond": ("decrease_reservation", {"pfns": [ctx.memory.nr_frames]}),
        "give_back_twice_in_one": ("decrease_reservation", {"pfns": [own, own]}),
        "take_what_was_never_given": ("populate_physmap", {"pfns": [first]}),
        "shadow_op_as_a_guest": ("domctl", {"cmd": "shadow_op", "action": "clean", "domid": ctx.domid}),
        "resume_as_a_guest": ("domctl", {"cmd": "resumedomain", "domid": ctx.domid}),
    }
    answers = {}
    for name, (op, args) in attempts.items():
        try:
            ctx.hypercall.call(op, **args)
            answers[name] = "accepted"
        except OSError as exc:
            answers[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    report("HOSTILE", answers)
    return _tick(ctx)


def _tick(ctx):
    n = 0
    while not ctx.sleep(0.05):
        n += 1
        if n % 10 == 0:
            report("TICK", {"counter": n})


def _suspend(ctx):
    if ctx.args[0] == "refuses":
        raise SuspendRefused("busy right now")
    if ctx.args[0] == "fill":
        return b""
    HELD.clear()
    HOLD.set()
    if not HELD.wait(5):
        raise SuspendRefused("the loop did not stop within 5 s")
    STATE["digest"] = _digest(ctx)
    return json.dumps({"pfn": STATE["pfn"], "digest": STATE["digest"]}).encode()


def _resume(ctx, state):
    if state:
        STATE.update(json.loads(state))
    report("RESUME-HOOK", {"cancelled": not ctx.resumed})
    HOLD.clear()


run.suspend = _suspend
run.resume = _resume


def unsuspendable(ctx):
    return _tick(ctx)


unsuspendable.suspendable = False
