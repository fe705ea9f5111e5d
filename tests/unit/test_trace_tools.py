"""The trace reader's pieces, the timeline export, the ELF core writer and the xenstore fault rules."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dom0.dumpcore import EHDR, PHDR, PT_LOAD, PT_NOTE, populated_runs, write_core
from dom0.faults import FaultError, HeldRequests, XenstoreFaults, check_xs_rule
from xenlike.public.trace import Event, TraceRecord, pack_record
from xenlike.public.xen import PAGE_SIZE
from xenlike.tools.trace_export import LANE_STRIDE, chrome_trace
from xenlike.tools.xentrace import (
    DomainFilter,
    Drained,
    Merger,
    RecordingWriter,
    SourceInfo,
    TraceError,
    read_recording,
)

HEADER = ("ns", "event", "cls", "domid", "vcpu", "src")


def rec(ns: int, **fields) -> TraceRecord:
    base = {"ns": ns, "event": "evtchn_send", "cls": "evtchn", "domid": 1, "vcpu": 0, "src": "web"}
    return TraceRecord({**base, **fields})


@given(st.lists(st.integers(0, 10**6), max_size=200), st.integers(0, 10**6))
def test_the_merger_releases_in_timestamp_order_and_holds_what_is_recent(stamps, now):
    merger = Merger(delay_ns=1000)
    merger.add(rec(ns) for ns in stamps)
    released = [r["ns"] for r in merger.release(now)]
    assert released == sorted(released) and all(ns <= now - 1000 for ns in released)
    rest = [r["ns"] for r in merger.release(None)]
    assert sorted(released + rest) == sorted(stamps) and rest == sorted(rest)


def test_a_domain_filter_keeps_what_concerns_the_domain_by_name_once_it_has_an_id():
    keep = DomainFilter("web")
    names = {0: "Domain-0", 3: "web", 4: "db"}
    assert keep(rec(1, domid=3), names)
    assert not keep(rec(1, domid=4), names)
    assert keep(rec(1, domid=0, event="xs_op", conn=3), names)
    assert keep(rec(1, domid=0, event="hypercall", args={"remote_dom": 3}), names)
    assert keep(rec(1, domid=0, event="hypercall", args={"cmd": "createdomain", "name": "web"}), {0: "Domain-0"})
    assert not keep(rec(1, domid=0, event="hypercall", args={"dom": 4}), names)
    assert DomainFilter("4")(rec(1, domid=4), {})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 300)), min_size=1, max_size=60))
@example(spans=[(0, 0), (372, 35), (407, 1)])
def test_spans_on_one_track_are_laid_in_lanes_where_they_nest_or_follow(spans):
    records = [rec(start, event="xs_op", op="READ", dur=length) for start, length in spans]
    events = chrome_trace(records, {1: "web"})["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(spans)
    lanes: dict[int, list[tuple[int, int]]] = {}
    for e in complete:
        assert e["pid"] == 1 and e["tid"] % LANE_STRIDE == 0
        # The export writes microseconds as floats; lanes are laid in the records' integer
        # nanoseconds, so compare there (0.372 + 0.035 is not 0.407 in binary floating point).
        begin_ns, dur_ns = round(e["ts"] * 1000), round(e["dur"] * 1000)
        lanes.setdefault(e["tid"], []).append((begin_ns, begin_ns + dur_ns))
    for items in lanes.values():
        items.sort(key=lambda item: (item[0], -item[1]))
        open_ends: list[int] = []
        for begin, end in items:
            while open_ends and open_ends[-1] <= begin:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1]
            open_ends.append(end)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names[0] == "vCPU 0" and all(tid == 0 or names[tid].startswith("vCPU 0 ·") for tid in lanes)


def test_a_file_that_is_not_a_recording_is_refused(tmp_path):
    path = tmp_path / "x.trace"
    for content in (b"", b'{"xenlike_trace": 1}\n', msgpack.packb([1, 2]), msgpack.packb({"xenlike_trace": 1})):
        path.write_bytes(content)
        with pytest.raises(TraceError, match="not a `xenlike trace --record` file"):
            read_recording(path)
    header = msgpack.packb({"xenlike_trace": 2, "names": {"3": "web"}, "domain": None})
    path.write_bytes(header + msgpack.packb({"records": 7, "data": b""}))
    with pytest.raises(TraceError, match="item 2 holds records of no buffer named before it"):
        read_recording(path)
    path.write_bytes(header + msgpack.packb({"records": [1], "data": b""}))
    with pytest.raises(TraceError, match="item 2 holds records of no buffer named before it"):
        read_recording(path)
    source = msgpack.packb({"source": 1, "name": "web", "domid": 3, "role": "domu"})
    path.write_bytes(header + source + msgpack.packb({"records": 1, "data": b"", "lost": "x"}))
    with pytest.raises(TraceError, match="item 3 has a lost count or time that is not a number"):
        read_recording(path)
    path.write_bytes(header + msgpack.packb({"names": {"a": "b"}}))
    with pytest.raises(TraceError, match="a names item has a domid that is not a number"):
        read_recording(path)
    path.write_bytes(header + msgpack.packb({"ns": 5}))
    with pytest.raises(TraceError, match="item 2 is not a trace item"):
        read_recording(path)


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=48),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["records", "source", "names", "data", "lost", "ns", "name", "domid", "role"])
            | st.integers(0, 3),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(MSGPACK_VALUES, max_size=6), st.binary(max_size=40))
def test_whatever_follows_a_recording_s_header_is_read_or_refused_never_a_crash(tmp_path_factory, items, tail):
    path = tmp_path_factory.mktemp("rec") / "x.trace"
    header = msgpack.packb({"xenlike_trace": 2, "names": {"0": "Domain-0"}, "domain": None})
    path.write_bytes(header + b"".join(msgpack.packb(item) for item in items) + tail)
    try:
        recording = read_recording(path)
    except TraceError:
        return
    assert all(isinstance(r["ns"], int) for r in recording.records)


FIELDS = st.dictionaries(st.sampled_from(["port", "slots", "op", "dev"]), st.integers(0, 2**31) | st.text(max_size=20))
READS = st.lists(
    st.tuples(
        st.sampled_from([(1, "Domain-0", 0, "dom0"), (2, "web", 5, "domu")]),
        st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 9), FIELDS), max_size=8),
        st.integers(0, 3),
    ),
    max_size=12,
)


def _write(path, reads, cut: int = 0) -> list[tuple]:
    """Record ``reads`` through a RecordingWriter; the records a reader should get back, as tuples."""
    expected = []
    with open(path, "wb") as out:
        writer = RecordingWriter(out, {0: "Domain-0", 5: "web"}, "web")
        for number, ((sid, name, domid, role), records, lost) in enumerate(reads):
            source = SourceInfo(sid, name, domid, role)
            raw = [pack_record(Event.EVTCHN_SEND, ns, claimed, 0, fields) for ns, claimed, fields in records]
            assert writer.add([Drained(source, raw, lost, 10**12 + number)]) == len(raw)
            expected += [(ns, domid if role == "domu" else claimed, name, fields) for ns, claimed, fields in records]
            expected += [(10**12 + number, domid, name, {"n": lost})] if lost else []
        writer.names({0: "Domain-0", 5: "web", 6: "db"})
    if cut:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - cut])
    return expected


@settings(max_examples=60, deadline=None)
@given(READS)
def test_a_recording_reads_back_every_record_in_time_order_each_guest_speaking_for_itself(tmp_path_factory, reads):
    path = tmp_path_factory.mktemp("rec") / "x.trace"
    expected = _write(path, reads)
    recording = read_recording(path)
    assert recording.names == {0: "Domain-0", 5: "web", 6: "db"} and recording.domain == "web"
    assert not recording.notices
    got = [(r["ns"], r["domid"], r["src"], {k: v for k, v in r.items() if k not in HEADER}) for r in recording.records]
    assert [g[0] for g in got] == sorted(g[0] for g in got)
    assert sorted(got, key=repr) == sorted(expected, key=repr)


@settings(max_examples=30, deadline=None)
@given(READS.filter(lambda reads: any(records for _source, records, _lost in reads)), st.integers(1, 40))
def test_a_recording_cut_short_reads_up_to_the_cut(tmp_path_factory, reads, cut):
    path = tmp_path_factory.mktemp("rec") / "x.trace"
    _write(path, reads, cut)
    try:
        recording = read_recording(path)
    except TraceError as exc:  # the cut fell in the header: refused, not misread
        assert "not a `xenlike trace --record` file" in str(exc)
        return
    assert all(r["event"] in ("evtchn_send", "lost_records") for r in recording.records)


def test_records_of_a_damaged_read_are_kept_up_to_the_damage_and_the_damage_named(tmp_path):
    path = tmp_path / "x.trace"
    good = pack_record(Event.EVTCHN_SEND, 5, 0, 0, {"port": 3})
    with open(path, "wb") as out:
        RecordingWriter(out, {}, None).add([Drained(SourceInfo(1, "web", 5, "domu"), [good, b"\xff" * 24], 0, 9)])
    recording = read_recording(path)
    assert [r["port"] for r in recording.records] == [3]
    assert recording.notices == ["buffer 'web' (d5): a record says it is 4294967295 bytes"]


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 63), max_size=40))
def test_a_core_has_one_pt_load_per_run_of_populated_frames_and_their_bytes(tmp_path_factory, written):
    tmp = tmp_path_factory.mktemp("core")
    fd = os.memfd_create("guest")
    try:
        os.ftruncate(fd, 64 * PAGE_SIZE)
        for pfn in written:
            os.pwrite(fd, f"frame {pfn}".encode(), pfn * PAGE_SIZE + 7)
        runs = populated_runs(fd, 64)
        covered = {run.first + i for run in runs for i in range(run.count)}
        assert covered == written
        assert all(a.first + a.count < b.first for a, b in zip(runs, runs[1:]))  # separate runs never touch
        path = str(tmp / "core")
        write_core(path, fd, 64, {"domid": 3, "name": "web"})
        data = open(path, "rb").read()
    finally:
        os.close(fd)
    ident, etype, machine, *_rest = EHDR.unpack_from(data)
    assert ident[:4] == b"\x7fELF" and (etype, machine) == (4, 62)
    phnum = EHDR.unpack_from(data)[10]  # e_phnum
    headers = [PHDR.unpack_from(data, EHDR.size + i * PHDR.size) for i in range(phnum)]
    assert headers[0][0] == PT_NOTE and b"xenlike" in data[headers[0][2] : headers[0][2] + headers[0][5]]
    loads = [h for h in headers if h[0] == PT_LOAD]
    assert len(loads) == len(runs)
    for pfn in written:
        _type, _flags, offset, vaddr, _paddr, size, _memsz, _align = next(
            h for h in loads if h[3] <= pfn * PAGE_SIZE < h[3] + h[5]
        )
        at = offset + pfn * PAGE_SIZE - vaddr + 7
        assert data[at : at + len(f"frame {pfn}")] == f"frame {pfn}".encode()
    assert struct.calcsize("<16sHHIQQQIHHHHHH") == 64 and PHDR.size == 56


def test_xenstore_rules_cover_a_path_and_below_relative_paths_included():
    faults = XenstoreFaults()
    faults.rules.append(check_xs_rule("xs-refuse", "/local/domain/3/data", "eperm"))
    assert faults.match(3, b"data/x\0v") is not None
    assert faults.match(3, b"/local/domain/3/data\0") is not None
    assert faults.match(3, b"/local/domain/3/database\0") is None
    assert faults.match(4, b"data/x\0") is None
    assert faults.rules[0].errno_name == "EPERM"
    with pytest.raises(FaultError, match="absolute path"):
        check_xs_rule("xs-delay", "data", "10")
    with pytest.raises(FaultError, match="not a xenstore error"):
        check_xs_rule("xs-refuse", "/x", "EWHAT")
    with pytest.raises(FaultError, match="within 1 to 60000"):
        check_xs_rule("xs-delay", "/x", "0")


def test_held_requests_leave_in_order_whatever_their_own_delay():
    held = HeldRequests()
    held.hold("slow", 10.0)
    held.hold("quick", 1.0)  # behind the slow one: it waits for it
    assert held.due(5.0) == []
    assert held.due(10.0) == ["slow", "quick"] and held.next_due() is None
