"""A guest with several vCPUs: runs functions on each, and tries to pass off processes that are not its own.

Prints ``VCPUS {...}`` with what each secondary vCPU answered and how the
hypervisor took the bogus ``vcpu_op`` calls, then waits to be shut down.
"""

import json
import os

from xenlike.kernel.hypercall import HypercallError


def square_sum(n):
    return sum(i * i for i in range(n))


def fail():
    raise ValueError("on purpose")


def run(ctx):
    answers = [vcpu.call(square_sum, 1000) for vcpu in ctx.vcpus]
    pids = [vcpu.call(os.getpid) for vcpu in ctx.vcpus]
    queued = [ctx.vcpus[0].submit(square_sum, n) for n in (1, 2, 3)]
    in_order = [call.result() for call in queued]
    try:
        ctx.vcpus[0].call(fail)
        remote_error = None
    except Exception as exc:
        remote_error = f"{type(exc).__name__}: {'on purpose' in str(exc)}"
    try:
        ctx.vcpus[0].submit(lambda: 1)
        lambda_refused = False
    except ValueError:
        lambda_refused = True
    refusals = {}
    for label, pid in (("parent", os.getppid()), ("itself", os.getpid())):
        try:
            ctx.hypercall.call("vcpu_op", cmd="up", vcpu=1, pid=pid)
            refusals[label] = "accepted"
        except HypercallError as exc:
            refusals[label] = exc.strerror
    try:
        ctx.hypercall.call("vcpu_op", cmd="up", vcpu=len(ctx.vcpus) + 1, pid=pids[0])
        refusals["out_of_range"] = "accepted"
    except HypercallError as exc:
        refusals["out_of_range"] = exc.strerror
    print("VCPUS " + json.dumps({
        "answers": answers, "pids": pids, "vcpu0": os.getpid(), "in_order": in_order,
        "remote_error": remote_error, "lambda_refused": lambda_refused, "refusals": refusals,
    }), flush=True)
    ctx.shutdown.wait()
