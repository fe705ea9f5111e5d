"""The lifecycle benchmark's guest: records when its workload started, then idles.

``data/started`` gets ``time.monotonic()`` (CLOCK_MONOTONIC is one clock for every
process of the machine), so the benchmark measures create-to-running exactly.
"""

import time


def run(ctx):
    started = time.monotonic()
    ctx.xenstore.write("data/started", repr(started))
    ctx.shutdown.wait()
