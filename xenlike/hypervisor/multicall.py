"""Several hypercalls in one round trip (``xen/common/multicall.c``, ``HYPERVISOR_multicall``).

One addition to Xen's: an argument ``{"$result": [i, "key"]}`` stands for
``key`` of the ``i``-th call's result, so a builder can create a domain and bind
its event channels in one round trip. Calls run in order and the first failure
stops the batch; it is reported with the results so far. Each call is checked
as it would be alone; the table says which calls a multicall may not hold (those
that nest or whose reply is deferred).
"""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING, Any

from xenlike.hypervisor.domain import Domain, OutOfMemory
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.kernel import trace
from xenlike.kernel.hypercall import HypercallError
from xenlike.public.event_channel import EvtchnError
from xenlike.public.grant_table import GrantError
from xenlike.public.trace import Event, TraceClass

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["multicall"]

# What a call of a batch may fail with; anything else is a bug and reaches the dispatcher.
_CALL_ERRORS = (
    Refused,
    EvtchnError,
    HypercallError,
    GrantError,
    OutOfMemory,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
)


def multicall(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Run ``calls`` in order; stop at the first failure and report it with the results so far."""
    results: list[Any] = []
    out_fds: list[int] = []
    for index, call in enumerate(args["calls"]):
        op = call.get("op") if isinstance(call, dict) else None
        started = time.monotonic_ns() if trace.mask[0] & TraceClass.HYPERCALL else 0
        call_args: dict = {}
        try:
            if not hv.may_be_in_multicall(op):
                raise Refused(errno.EINVAL, f"{op!r} cannot be part of a multicall")
            call_args = _resolve(call.get("args") or {}, results)
            row = hv.hypercall_for(caller, op, call_args)
            if not row.in_multicall:
                raise Refused(errno.EINVAL, f"{row.name!r} cannot be part of a multicall")
            result, call_fds = hv.call(row, caller, call_args, [])
        except _CALL_ERRORS as exc:
            err = getattr(exc, "errno", None) or errno.EINVAL
            if isinstance(exc, OutOfMemory):
                err = errno.ENOMEM
            error = {"index": index, "op": op, "errno": errno.errorcode.get(err, "EINVAL"), "message": str(exc)}
            if started:
                _trace_call(caller, index, op, call_args, {"errno": error["errno"]}, started)
            return {"results": results, "error": error}, out_fds
        if started:
            _trace_call(caller, index, op, call_args, {"result": trace.summary(result)}, started)
        results.append({"result": result, "fds": list(range(len(out_fds), len(out_fds) + len(call_fds)))})
        out_fds.extend(call_fds)
    return {"results": results}, out_fds


def _trace_call(caller: Domain, index: int, op: Any, args: dict, outcome: dict, started: int) -> None:
    """One call of a batch, as its own TRC_PV_HYPERCALL record (``multicall`` says where it was)."""
    fields = {
        "op": op,
        "args": trace.summary(args),
        "multicall": index,
        **outcome,
        "dur": time.monotonic_ns() - started,
    }
    trace.emit_at(Event.HYPERCALL, started, fields, domid=caller.domid)


def _resolve(args: dict, results: list[Any]) -> dict:
    """Replace ``{"$result": [i, key]}`` values with the ``i``-th result's ``key``."""
    if not isinstance(args, dict):
        raise TypeError(f"a call's arguments are a map, not {type(args).__name__}")
    resolved = {}
    for key, value in args.items():
        if isinstance(value, dict) and "$result" in value:
            index, field_name = value["$result"]
            value = results[index]["result"][field_name]
        resolved[key] = value
    return resolved
