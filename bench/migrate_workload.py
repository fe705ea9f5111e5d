"""The guest of bench/migrate.py: fills its memory, then dirties a working set at a fixed rate.

workload_args: WORKING_SET_PAGES PAGES_PER_SECOND. Prints ``READY`` once its memory is
full and ``RESUMED`` after a migration; its suspend hook carries where its pages are.
"""

import json
import time

STATE = {}


def run(ctx):
    working_set, rate = int(ctx.args[0]), int(ctx.args[1])
    if not ctx.resumed:
        count = ctx.pages.free_frames - 512  # what the kernel's drivers may still want
        STATE.update(pfn=ctx.pages.alloc(count), count=count)
        view = ctx.memory.frames(STATE["pfn"], count)
        chunk = bytes(range(1, 256)) * (4 << 20 // 255)
        for at in range(0, len(view), len(chunk)):
            piece = view[at : at + len(chunk)]
            piece[:] = chunk[: len(piece)]
        print("READY", flush=True)
    else:
        print("RESUMED", flush=True)
    view = ctx.memory.frames(STATE["pfn"], STATE["count"])
    per_tick = max(1, rate // 100)
    n = 0
    while not ctx.shutdown.is_set():
        started = time.monotonic()
        for _ in range(per_tick):
            page = n % working_set
            view[page * 4096] = (view[page * 4096] + 1) % 256
            n += 1
        time.sleep(max(0.0, 0.01 - (time.monotonic() - started)))


def _suspend(ctx):
    return json.dumps(STATE).encode()


def _resume(ctx, state):
    STATE.update(json.loads(state))


run.suspend = _suspend
run.resume = _resume
