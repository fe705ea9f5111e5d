"""A guest whose vCPUs come and go with ``vcpu-set``: it follows ``ctx.vcpus``.

First it prints ``REFUSED {...}``: how the hypervisor took ``VCPUOP_down`` of
vCPU 0, of one beyond ``maxvcpus`` and of one that is not up. Each time the list
changes it prints ``HOTPLUG {...}``: the secondary vCPUs online (their numbers)
and the pid each answered from, then waits to be shut down.
"""

import json
import os

from xenlike.kernel.hypercall import HypercallError


def refusals(ctx):
    answers = {}
    for label, vcpu in (("vcpu0", 0), ("beyond", 99), ("offline", 3), ("bogus", "1")):
        try:
            ctx.hypercall.call("vcpu_op", cmd="down", vcpu=vcpu)
            answers[label] = "accepted"
        except HypercallError as exc:
            answers[label] = f"{exc.strerror}"
    return answers


def run(ctx):
    print("REFUSED " + json.dumps(refusals(ctx)), flush=True)
    seen = None
    while not ctx.shutdown.wait(0.05):
        vcpus = list(ctx.vcpus)
        indices = [vcpu.index for vcpu in vcpus]
        if indices == seen:
            continue
        try:
            pids = [vcpu.call(os.getpid) for vcpu in vcpus]
        except (EOFError, OSError):
            continue  # one went offline under the call: look again
        seen = indices
        print("HOTPLUG " + json.dumps({"online": indices, "pids": pids, "vcpu0": os.getpid()}), flush=True)
