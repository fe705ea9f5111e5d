"""``xenlike trace`` on a real host: a create's hypercalls and xenbus steps, a timeline, a hostile guest."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from xenlike.tools.trace_export import WORKER_TID_BASE

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster

# What DomainBuilder.create asks of the hypervisor, in order: multicall 1 (the domain, its two
# ports, dom0's ends of them), then multicall 2 (map the console and xenstore grants, start it).
BUILDER_HYPERCALLS = [
    "domctl createdomain",
    "evtchn_alloc_unbound",
    "evtchn_alloc_unbound",
    "evtchn_bind_interdomain",
    "evtchn_bind_interdomain",
    "grant_map",
    "domctl startdomain",
]
BUILD_STEPS = ["createdomain", "start_info", "map_and_start", "connect_xenstore_console", "write_nodes"]
# A vbd's handshake (xenbus_probe_backend.c / xen-blkfront.c): back InitWait, front Initialised,
# back Connected, front Connected.
VBD_HANDSHAKE = [("back", "InitWait"), ("front", "Initialised"), ("back", "Connected"), ("front", "Connected")]


class Tracer:
    """``xenlike trace ARGS`` running in the background until stopped."""

    def __init__(self, host, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "trace", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()  # once the buffers are open and the mask is set
        assert line.startswith("tracing"), line + self.proc.stderr.read()

    def stop(self) -> tuple[str, str]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def tracers():
    started: list[Tracer] = []
    yield started
    for tracer in started:
        tracer.kill()


def op_name(record: dict) -> str:
    args = record.get("args") or {}
    return f"{record['op']} {args['cmd']}" if isinstance(args.get("cmd"), str) else record["op"]


def create_web(host, tmp_path) -> int:
    cfg = tmp_path / "web.cfg"
    cfg.write_text(
        f'name = "web"\nmemory = 32\nworkload = "{workload("disk")}"\nworkload_args = ["io", "xvda"]\n'
        f'disk = ["vdev=xvda, size=8M, target={tmp_path / "web.img"}"]\n'
    )
    host.xl("create", str(cfg))
    domid = host.domains()["web"]["domid"]
    wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/rounds") or 0) > 2, timeout=30, what="I/O")
    return domid


def test_trace_of_a_create_shows_the_builders_hypercalls_and_the_xenbus_handshake(host, tmp_path, tracers):
    host.up(str(write_cluster(tmp_path, [{"name": "other", "workload": "ticker"}])))
    tracers.append(tracer := Tracer(host, "-d", "web", "--class", "hypercall,xenbus,lifecycle", "--json"))
    domid = create_web(host, tmp_path)
    out, _err = tracer.stop()
    records = [json.loads(line) for line in out.splitlines()]
    assert records == sorted(records, key=lambda r: r["ns"])  # merged across processes by timestamp
    assert all(r["cls"] in ("hypercall", "xenbus", "lifecycle") for r in records)
    other = host.domains()["other"]["domid"]
    assert not [r for r in records if r["domid"] == other], "-d web let another domain's records through"

    steps = [r for r in records if r["event"] == "dom_step"]
    assert [s["step"] for s in steps] == BUILD_STEPS
    start, end = steps[0]["ns"], steps[-1]["ns"] + steps[-1]["dur"]
    build = [r for r in records if r["event"] == "hypercall" and r["domid"] == 0 and start <= r["ns"] <= end]
    assert [op_name(r) for r in build] == BUILDER_HYPERCALLS
    assert [r["multicall"] for r in build] == [0, 1, 2, 3, 4, 0, 1]
    assert build[0]["result"]["domid"] == domid and all("errno" not in r for r in build)
    for step in steps:  # each call falls inside the build step that made it
        inside = [op_name(r) for r in build if step["ns"] <= r["ns"] <= step["ns"] + step["dur"]]
        assert inside == {"createdomain": BUILDER_HYPERCALLS[:5], "map_and_start": BUILDER_HYPERCALLS[5:]}.get(
            step["step"], []
        ), step
    added = [r for r in records if r["event"] == "dom_add"]
    assert len(added) == 1 and added[0]["dom"] == domid and added[0]["ns"] >= end

    states = [(r["end"], r["state"]) for r in records if r["event"] == "xenbus_state"]
    assert states == VBD_HANDSHAKE
    front = [r for r in records if r["event"] == "xenbus_state" and r["end"] == "front"]
    assert all(r["domid"] == domid for r in front)  # written by the guest, attributed to it
    # The guest's own hypercall (its ring's event channel) and dom0's binding of it, between the states.
    guest_calls = [op_name(r) for r in records if r["event"] == "hypercall" and r["domid"] == domid]
    assert "evtchn_alloc_unbound" in guest_calls


def test_a_recorded_disk_workload_exports_as_a_chrome_trace_with_spans_on_the_right_tracks(host, tmp_path, tracers):
    host.up(str(write_cluster(tmp_path, [{"name": "other", "workload": "ticker"}])))
    recording = tmp_path / "create.trace"
    tracers.append(tracer := Tracer(host, "--record", str(recording)))
    domid = create_web(host, tmp_path)
    _out, err = tracer.stop()
    assert f"to {recording}" in err
    timeline = tmp_path / "timeline.json"
    result = host.xl("trace", "--export", str(recording), "--perfetto", str(timeline))
    assert "trace events" in result.stdout

    trace = json.loads(timeline.read_text())  # valid JSON, in the object form of the format
    events = trace["traceEvents"]
    assert trace["displayTimeUnit"] == "ns" and events
    for event in events:
        assert event["ph"] in ("X", "i", "M", "C") and isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] != "M":
            assert isinstance(event["ts"], (int, float)) and event["ts"] >= 0 and event["name"]
        if event["ph"] == "X":
            assert event["dur"] >= 0
        if event["ph"] == "i":
            assert event["s"] == "t"
        if event["ph"] == "C":
            assert event["args"] and all(isinstance(v, int) and v >= 0 for v in event["args"].values())
    meta = {(e["pid"], e["tid"], e["name"]): e["args"] for e in events if e["ph"] == "M"}
    assert meta[(domid, 0, "process_name")]["name"] == f"d{domid} web"
    assert meta[(0, 0, "process_name")]["name"] == "d0 Domain-0"
    assert meta[(domid, 0, "thread_name")]["name"] == "vCPU 0"
    spans = [e for e in events if e["ph"] == "X"]
    # dom0's build steps and the hypercalls they make are spans on dom0's vCPU 0, nested.
    build = [e for e in spans if e["pid"] == 0 and e["name"].startswith("build: ")]
    assert [e["name"] for e in build] == [f"build: {s}" for s in BUILD_STEPS]
    assert all(e["tid"] % 1000 == 0 for e in build)
    create = next(e for e in spans if e["name"] == "domctl createdomain")
    assert (create["pid"], create["tid"] % 1000) == (0, 0)
    assert build[0]["ts"] <= create["ts"] <= create["ts"] + create["dur"] <= build[0]["ts"] + build[0]["dur"] + 1e-3
    # The guest's own hypercalls and upcalls are spans on its track; xenstore requests are dom0's spans.
    lost = [e["args"] for e in events if e["name"] == "lost_records"]
    tracks = sorted({(e["pid"], e["tid"], e["cat"]) for e in spans})
    assert any(e["pid"] == domid and e["cat"] == "hypercall" for e in spans), (tracks, lost)
    assert any(e["pid"] == domid and e["name"].startswith("upcall") for e in spans), (tracks, lost)
    assert any(e["pid"] == 0 and e["name"].startswith("xs ") and e["args"].get("conn") == domid for e in spans), lost
    # The back end's worker has a thread of its own in dom0.
    worker_threads = [
        args["name"]
        for (pid, _tid, name), args in meta.items()
        if pid == 0 and name == "thread_name" and args["name"].startswith("back-end")
    ]
    assert worker_threads
    # The disk's requests are spans in the guest's process, on the thread of the worker that served them.
    io = [e for e in spans if e["cat"] == "io"]
    assert io and all(e["pid"] == domid and e["tid"] >= WORKER_TID_BASE for e in io), (tracks, lost)
    assert {e["args"]["op"] for e in io} >= {"read", "write"} and all(e["args"]["status"] == 0 for e in io)
    assert all(e["name"] == f"{e['args']['op']} sector {e['args']['sector']}" for e in io)
    io_threads = {meta[(domid, e["tid"], "thread_name")]["name"] for e in io}
    assert len(io_threads) == 1 and io_threads.pop().endswith(f": d{domid} (web) xvda")
    # The ring's occupancy: a counter for the guest's end (blkfront's ring) and one for blkback's, in dom0.
    counters = {(e["pid"], e["name"]) for e in events if e["ph"] == "C"}
    assert (domid, "ring blkif (front)") in counters, counters
    assert (0, f"ring d{domid} (web) xvda (back)") in counters, counters
    pushes = [e for e in events if e["ph"] == "i" and e["cat"] == "ring" and e["name"].startswith("push ")]
    assert {e["pid"] for e in pushes} >= {0, domid}
    # On every thread, spans nest or follow one another (what Perfetto's JSON importer needs).
    by_track: dict = {}
    for e in spans:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for track, items in by_track.items():
        items.sort(key=lambda item: (item[0], -item[1]))
        open_ends: list = []
        for begin, finish in items:
            while open_ends and open_ends[-1] <= begin:
                open_ends.pop()
            assert not open_ends or finish <= open_ends[-1] + 1e-6, f"overlapping spans on {track}"
            open_ends.append(finish)


@pytest.mark.parametrize("jailed", [True, False], ids=["jailed", "no-jail"])
def test_a_guest_spoils_only_its_own_records_and_cannot_read_the_hosts(host, tmp_path, tracers, jailed):
    host.up(
        *([] if jailed else ["--no-jail"]),
        str(
            write_cluster(tmp_path, [{"name": "ticker", "workload": "ticker", "workload_args": ["--interval", "0.2"]}])
        ),
    )
    tracers.append(tracer := Tracer(host, "--json", "--class", "xenstore,evtchn"))
    cfg = tmp_path / "vandal.cfg"
    cfg.write_text(
        f'name = "vandal"\nmemory = 32\nworkload = "{workload("trace_vandal")}"\nworkload_args = ["{host.path}"]\n'
    )
    host.xl("create", str(cfg))
    result = console_json(host, "vandal", "VANDAL", timeout=30)
    ticks_after = wait_for(
        lambda: int(host.xs_read(f"/local/domain/{host.domains()['ticker']['domid']}/data/ticks") or 0), what="ticks"
    )
    wait_for(
        lambda: (
            int(host.xs_read(f"/local/domain/{host.domains()['ticker']['domid']}/data/ticks") or 0) > ticks_after + 3
        ),
        what="more ticks",
    )
    out, err = tracer.stop()
    assert result["has_buffer"]
    socket_result = result["trace_socket"]
    if jailed:
        assert "errno" in socket_result, socket_result  # the jail leaves it no way to the socket
    else:
        assert "answer" in socket_result, socket_result
        assert socket_result["answer"]["ok"] is False and socket_result["answer"]["errno"] == "EPERM"
        assert "domain's process" in socket_result["answer"]["error"] and socket_result["fds"] == 0
    records = [json.loads(line) for line in out.splitlines()]
    vandal = host.domains()["vandal"]["domid"]
    ticker = host.domains()["ticker"]["domid"]
    assert "'vandal'" in err  # its spoiled buffer is reported, by name
    last_vandal_note = max(r["ns"] for r in records)
    writes = [r for r in records if r["event"] == "xs_op" and r["conn"] == ticker and r["path"] == "data/ticks"]
    assert len(writes) >= 3 and writes[-1]["ns"] <= last_vandal_note
    assert all(r["domid"] == vandal for r in records if r["src"] == "vandal")  # it cannot speak for another
    assert host.run_dir.running_pid() == host.hypervisor_pid and "vandal" in host.domains()
