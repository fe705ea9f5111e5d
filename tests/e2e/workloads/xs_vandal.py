"""A hostile guest that breaks the xenstore protocol on its own ring, then asks xenstored something.

workload_args: ``indices`` (req_prod moved five rings past req_cons) or ``too-long``
(a header announcing XENSTORE_PAYLOAD_MAX + 1 bytes). Prints ``VANDAL {json}``: the
error indicator xenstored left in the ring page, the features it offered, and what
a READ of the domain's name then gave.
"""

import json
import time

from xenlike.public.xs_wire import XENSTORE_PAYLOAD_MAX, XENSTORE_RING_SIZE, XSD_SOCKMSG, XsError
from xenlike.public.xs_wire import XsdSockmsgType as XS


def run(ctx):
    mode = ctx.args[0]
    xs = ctx.xenstore
    assert xs.read_str("name") == ctx.name  # the ring works before it is broken
    page = xs.interface
    if mode == "indices":
        words = page.req._words
        words[page.req._prod] = (words[page.req._cons] + 5 * XENSTORE_RING_SIZE) & 0xFFFFFFFF
        ctx.events.notify(xs.port)
    elif mode == "too-long":
        xs._channel.write(XSD_SOCKMSG.pack(XS.READ, 0xBAD, 0, XENSTORE_PAYLOAD_MAX + 1))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    deadline = time.monotonic() + 5
    while not page.error and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        outcome = {"read": xs.read_str("name")}
    except (XsError, TimeoutError) as exc:
        outcome = {"refused": type(exc).__name__, "errno": getattr(exc, "errno_name", None), "message": str(exc)}
    outcome["error"] = page.error
    outcome["features"] = page.server_features
    print("VANDAL " + json.dumps(outcome), flush=True)
    ctx.shutdown.wait()
