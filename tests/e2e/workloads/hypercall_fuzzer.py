"""A hostile guest that makes hundreds of hypercalls of odd shapes, and reports how each ended.

workload_args: ``SEED COUNT``. Each call names a hypercall a domU may try (and
domctl/sysctl, which it may not) with arguments drawn at random: missing, extra,
of the wrong type, out of range, nested. Prints ``FUZZ {"outcomes": {...},
"answered": bool}`` on its console, ``answered`` being whether a plain
``xen_version`` is still answered after them all, then waits to be shut down.
"""

import errno
import inspect
import json
import random
import re

from xenlike.kernel.hypercall import HypercallError

EXTRA_KEYS = ["dom", "port", "domid", "refs", "ops", "calls", "cmd", "count", "flags"]


def _arguments_read(handler):
    """The argument names a handler reads (``args["x"]``, ``args.get("x")`` in its source)."""
    source = inspect.getsource(handler)
    return sorted(set(re.findall(r"""args(?:\[|\.get\()["'](\w+)["']""", source)))


def _domu_hypercalls():
    """Each hypercall a domU may make, with the names its handler reads: the arguments drawn are mostly
    those, so each handler's own checks are what is tried. Not shutdown, which would end the guest."""
    from xenlike.hypervisor.hypercall_table import HYPERCALLS

    return {row.name: _arguments_read(row.handler) for row in HYPERCALLS
            if not row.privileged and " " not in row.name and row.name not in ("sched_shutdown",)}


def value(r, depth=0):
    """A random argument: scalars of every msgpack kind, extremes, and (near the top) lists and maps of them."""
    scalars = [lambda: r.randrange(-3, 5), lambda: r.choice([2**63, -2**63, 2**64 - 1, 2**40]), lambda: None,
               lambda: r.choice([True, False]), lambda: "x" * r.randrange(4), lambda: b"\0" * r.randrange(5),
               lambda: 1.5, lambda: r.choice(["read", "write", "", "domu", "info", "list"])]
    nested = [lambda: [value(r, depth + 1) for _ in range(r.randrange(4))],
              lambda: {r.choice(EXTRA_KEYS): value(r, depth + 1) for _ in range(r.randrange(4))},
              lambda: [{r.choice(EXTRA_KEYS): value(r, depth + 1) for _ in range(3)} for _ in range(r.randrange(3))]]
    return r.choice(scalars + (nested if depth < 2 else []))()


def run(ctx):
    seed, count = int(ctx.args[0]), int(ctx.args[1])
    r = random.Random(seed)
    hc = ctx.hypercall
    hypercalls = _domu_hypercalls()
    ops = sorted(hypercalls) + ["domctl", "sysctl", "no_such_op"]
    outcomes = {}
    for _ in range(count):
        op = r.choice(ops)
        args = {key: value(r) for key in hypercalls.get(op, []) if r.random() < 0.5}
        if r.random() < 0.3:
            args[r.choice(EXTRA_KEYS)] = value(r)
        if op == "vcpu_op" and args.get("cmd") == "down":
            continue  # its own vCPU 0 down: the guest would stop itself, which proves nothing
        try:
            hc.call(op, **args)
            outcome = "ok"
        except HypercallError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc.errno))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    answered = hc.call("xen_version") is not None
    print("FUZZ " + json.dumps({"outcomes": outcomes, "answered": answered}), flush=True)
    ctx.shutdown.wait()
