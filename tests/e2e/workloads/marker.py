"""Writes a marker into frames of its own memory and waits: what `dump-core` must find.

Prints ``MARKER {"pfn": N, "count": C, "text": "..."}`` once the marker is in place.
"""

import json


def run(ctx):
    count = 3
    pfn = ctx.pages.alloc(count)
    text = f"xenlike core marker of {ctx.name}"
    for i in range(count):
        page = ctx.memory.frame(pfn + i)
        page[: len(text) + 2] = f"{text} {i}".encode()
    print("MARKER " + json.dumps({"pfn": pfn, "count": count, "text": text}), flush=True)
    ctx.shutdown.wait()
