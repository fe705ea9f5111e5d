"""A guest whose hypercall replies are larger than one datagram of its channel, for test_large_messages."""

import json

import msgpack

from xenlike.kernel.hypercall import MAX_REQUEST, MessageTooLarge


def run(ctx):
    calls = [{"op": "xen_version", "args": {}}] * 3000
    results = ctx.hypercall.multicall(calls)  # ~0.5 MB: a reply the hypervisor used to drop
    size = len(msgpack.packb([result for result, _ in results]))
    print("big_reply " + json.dumps({"calls": len(results), "bytes": size}), flush=True)
    try:
        ctx.hypercall.multicall([{"op": "xen_version", "args": {}}] * (MAX_REQUEST // 20))
    except MessageTooLarge as exc:
        print("too_large " + json.dumps({"error": str(exc)}), flush=True)
    while not ctx.sleep(1.0):
        pass
