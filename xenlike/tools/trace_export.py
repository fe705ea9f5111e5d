"""A recorded trace as a timeline: Chrome's trace event format (JSON), which Perfetto and chrome://tracing open.

One process per domain (``pid`` = domid, named ``d3 web``; the hypervisor's own
records are ``xen``), one thread per vCPU (``tid`` = vCPU, ``vCPU 0``); a
back-end worker's records get a thread of their own in dom0 (``blkback worker
…``). Records with a duration (hypercalls, xenstore operations, upcalls, build
steps, device requests) become complete events (``ph: "X"``, ``ts`` and ``dur``
in µs), every other record an instant on its thread (``ph: "i"``, ``s: "t"``).

A device request is about the front end's domain (blkback writes its records
with the guest's domid), so its spans (decoded to answered, ``io_done``) sit in
that domain, on a thread of the worker that served it (``back-end worker1:
d3 (web) xvda``). Every ring record is also a sample of the ring's
occupancy: a counter track (``ph: "C"``) per ring and end in the writer's
domain, ``ring blkif (front)`` and ``ring d3 (web) xvda (back)``, whose
``used`` is the slots in use as that end sees them; a push is an instant too
(``push 8 notify`` or ``push 8 suppressed``: the event index's verdict), as is a
re-arm, a consume is the counter alone.

Perfetto does not draw spans that overlap without nesting on one thread (two
threads of one domain's vCPU 0, say: its event loop and its workload), so such
a span moves to another lane of the same vCPU (``vCPU 0 ·2``), as many as it takes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from xenlike.public.trace import TraceRecord
from xenlike.public.xen import DOMID_XEN

__all__ = ["chrome_trace", "write_chrome_trace", "LANE_STRIDE", "WORKER_TID_BASE"]

LANE_STRIDE = 1000  # tid = vCPU + lane * LANE_STRIDE
WORKER_TID_BASE = 100  # a back-end worker's thread in dom0: WORKER_TID_BASE + its number
_HEADER = ("ns", "event", "cls", "domid", "vcpu", "src", "dur")


def _name(record: TraceRecord) -> str:
    """What a span or instant is called on the timeline: the hypercall's op, the xenstore request's..."""
    event = record["event"]
    if event == "hypercall":
        args = record.get("args")
        cmd = args.get("cmd") if isinstance(args, dict) else None
        return f"{record.get('op')} {cmd}" if isinstance(cmd, str) else str(record.get("op"))
    if event == "xs_op":
        return f"xs {record.get('op')}"
    if event == "dom_step":
        return f"build: {record.get('step')}"
    if event == "xenbus_state":
        return f"xenbus {record.get('end')} {record.get('state')}"
    if event == "evtchn_upcall":
        return f"upcall port {record.get('port')}"
    if event == "evtchn_send":
        return f"send port {record.get('port')}"
    if event == "ring_push":
        return f"push {record.get('slots')} {'notify' if record.get('notify') else 'suppressed'}"
    if event == "ring_arm":
        return f"re-arm event {record.get('event')}"
    if event in ("io_request", "io_done"):
        return f"{'' if event == 'io_done' else 'decoded '}{record.get('op')} sector {record.get('sector')}"
    return str(event)


def _thread(record: TraceRecord) -> tuple[int, int, str]:
    """``(pid, tid, thread name)`` of a record's track."""
    src = str(record.get("src", ""))
    if src.startswith("worker"):
        number = int(src[len("worker") :] or 0)
        device = f": {record['dev']}" if str(record["event"]).startswith("io_") and "dev" in record else ""
        return record["domid"], WORKER_TID_BASE + number, f"back-end {src}{device}"
    return record["domid"], record["vcpu"], f"vCPU {record['vcpu']}"


def chrome_trace(records: list[TraceRecord], names: dict[int, str]) -> dict[str, Any]:
    """The Chrome trace JSON object (``traceEvents``, ``displayTimeUnit``) of ``records``."""
    t0 = min((r["ns"] for r in records), default=0)
    events: list[dict[str, Any]] = []
    threads: dict[tuple[int, int], str] = {}
    spans: dict[tuple[int, int], list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    for record in records:
        pid, tid, thread_name = _thread(record)
        threads.setdefault((pid, tid), thread_name)
        args = {k: v for k, v in record.items() if k not in _HEADER}
        args["src"] = record.get("src")
        event = {"name": _name(record), "cat": record["cls"], "pid": pid, "tid": tid, "ts": (record["ns"] - t0) / 1000}
        if record["cls"] == "ring":
            events.append(_counter(record, pid, event["ts"]))
            if record["event"] == "ring_consume":
                continue
        dur = record.get("dur")
        if isinstance(dur, int) and dur >= 0:
            spans[(pid, tid)].append(
                (record["ns"], record["ns"] + dur, {**event, "ph": "X", "dur": dur / 1000, "args": args})
            )
        else:
            events.append({**event, "ph": "i", "s": "t", "args": args})
    for (pid, tid), items in spans.items():
        for lane, event in _lanes(items):
            if lane:
                event["tid"] = tid + lane * LANE_STRIDE
                threads.setdefault((pid, event["tid"]), f"{threads[(pid, tid)]} ·{lane + 1}")
            events.append(event)
    meta: list[dict[str, Any]] = []
    for pid in sorted({pid for pid, _ in threads}):
        label = "xen" if pid == DOMID_XEN else f"d{pid} {names.get(pid, '')}".rstrip()
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for (pid, tid), thread_name in sorted(threads.items()):
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": thread_name}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    return {"traceEvents": meta + events, "displayTimeUnit": "ns", "otherData": {"source": "xenlike trace"}}


def _counter(record: TraceRecord, pid: int, ts: float) -> dict[str, Any]:
    """A ring record as a sample of its occupancy, on the counter track of its ring and end."""
    used = record.get("used")
    return {
        "name": f"ring {record.get('ring')} ({record.get('side')})",
        "cat": "ring",
        "ph": "C",
        "pid": pid,
        "tid": 0,
        "ts": ts,
        "args": {"used": used if isinstance(used, int) else 0},
    }


def _lanes(items: list[tuple[int, int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """Each span's lane: the first whose open spans it nests inside or follows (longest first at a tie)."""
    items.sort(key=lambda item: (item[0], -item[1]))
    stacks: list[list[int]] = []  # per lane, the ends of the spans still open
    placed = []
    for start, end, event in items:
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                placed.append((lane, event))
                break
        else:
            stacks.append([end])
            placed.append((len(stacks) - 1, event))
    return placed


def write_chrome_trace(records: list[TraceRecord], names: dict[int, str], out: Path) -> int:
    """Write the timeline to ``out``; returns how many trace events it holds."""
    trace = chrome_trace(records, names)
    out.write_text(json.dumps(trace, separators=(",", ":"), default=str))
    return len(trace["traceEvents"])
