"""The scheduling benchmark's I/O-bound guests: an event-channel ping-pong between two domUs.

``pong PING_DOMID``: allocates a port that domain PING_DOMID may bind, publishes
it as ``data/port``, and answers every event on it with an event (in the event
loop, as a back end answers a front end).

``ping``: waits for ``data/peer`` (``PONG_DOMID PORT``, written by the benchmark
through the toolstack), binds to it, then serves requests: when ``data/request``
becomes ``ID COUNT`` it sends COUNT pings, one per millisecond, each waiting for
its pong, and writes ``data/result`` = ``{"id", "median_us", "p90_us"}``. It idles
between pings, so it is I/O-bound: it needs the CPU rarely, and then at once.
"""

import json
import statistics
import time

from xenlike.kernel.events import EventLoop

PACING_S = 0.001


def run(ctx):
    mode = ctx.args[0]
    if mode == "pong":
        pong(ctx, int(ctx.args[1]))
    else:
        ping(ctx)


def pong(ctx, ping_domid):
    result, fds = ctx.hypercall.call("evtchn_alloc_unbound", remote_dom=ping_domid)
    port = result["port"]
    ctx.events.bind(port, fds[0], None, handler=ctx.events.notify)  # the peer's send side arrives when it binds
    ctx.xenstore.write("data/port", str(port))
    ctx.shutdown.wait()


def ping(ctx):
    peer = ""
    while not peer and not ctx.shutdown.is_set():
        peer = ctx.xenstore.read_str("data/peer") or ""
        if not peer:
            ctx.sleep(0.01)
    if not peer:
        return
    pong_domid, pong_port = map(int, peer.split())
    result, fds = ctx.hypercall.call("evtchn_bind_interdomain", remote_dom=pong_domid, remote_port=pong_port)
    loop = EventLoop(f"{ctx.name}-ping")  # polled by this thread: nothing between the event and the clock
    port = result["port"]
    loop.bind(port, fds[0], fds[1])
    loop.clear_pending(port)  # a fresh bind starts pending
    channel = loop.channel(port)
    done = ""
    while not ctx.shutdown.is_set():
        request = ctx.xenstore.read_str("data/request") or ""
        if not request or request == done:
            ctx.sleep(0.02)
            continue
        request_id, count = request.split()
        rtts = []
        for _ in range(int(count)):
            time.sleep(PACING_S)
            seen = channel.upcalls
            start = time.perf_counter()
            loop.notify(port)
            while channel.upcalls == seen:
                loop.poll(1.0)
            rtts.append((time.perf_counter() - start) * 1e6)
        rtts.sort()
        ctx.xenstore.write("data/result", json.dumps({
            "id": request_id, "median_us": statistics.median(rtts), "p90_us": rtts[int(len(rtts) * 0.9)],
        }))
        done = request
    loop.close()
