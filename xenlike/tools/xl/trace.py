"""xenlike trace: what the hypervisor, dom0, the back ends and the guests do, live (xentrace + xenalyze).

Every process writes trace records into a buffer of its own; this verb asks the
hypervisor for all of them, switches the classes asked for on, and prints the
records merged by timestamp, as readable lines or JSON lines; or records them
to a file that ``--export ... --perfetto`` turns into a timeline.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from xenlike.kernel.rundir import RunDir
from xenlike.public.trace import ALL_CLASSES, CLASS_NAMES, TraceRecord, parse_classes
from xenlike.tools.trace_export import write_chrome_trace
from xenlike.tools.xentrace import (
    DomainFilter,
    Merger,
    RecordingWriter,
    TraceError,
    TraceReader,
    format_line,
    read_recording,
)
from xenlike.tools.xl.utils import XlError

__all__ = ["main_trace", "CLASSES_HELP"]

POLL_S = 0.05  # how often the buffers are drained
BUFFERS_POLL_S = 0.1  # how often the hypervisor is asked for new domains' buffers
CLASSES_HELP = "classes to trace, comma-separated: all (default), " + ", ".join(CLASS_NAMES)


def main_trace(args: argparse.Namespace) -> int:
    """xenlike trace [-d DOMAIN] [--class LIST] [--json] [-T SECONDS] [--record FILE] | --export FILE --perfetto OUT."""
    if args.export is not None:
        return _export(args)
    if args.perfetto is not None:
        raise XlError("--perfetto goes with --export FILE: record with `trace --record FILE` first")
    try:
        mask = parse_classes(args.classes) if args.classes else ALL_CLASSES
    except ValueError as exc:
        raise XlError(str(exc)) from None
    try:
        reader = TraceReader(RunDir(args.run_dir), mask)
    except TraceError as exc:
        raise XlError(str(exc)) from None
    _stop_on_sigterm()
    if args.record is None:
        try:
            _follow(args, reader)
        finally:
            reader.close()
        return 0
    try:
        record_file = open(args.record, "wb")
    except OSError as exc:
        reader.close()
        raise XlError(f"cannot write {args.record}: {exc.strerror or exc}") from None
    try:
        count = _record(args, reader, record_file)
    finally:
        reader.close()
        record_file.close()
    print(f"recorded {count} records to {args.record}", file=sys.stderr)
    return 0


def _until_stopped(args: argparse.Namespace, reader: TraceReader, step: Callable[[bool], None]) -> None:
    """Call ``step(stopping)`` every :data:`POLL_S` until Ctrl-C, SIGTERM or ``-T`` seconds, then once more."""
    deadline = time.monotonic() + args.time if args.time else None
    what = args.classes or "all"
    print(f"tracing {what}{' of ' + args.domain if args.domain else ''} (Ctrl-C stops)", file=sys.stderr, flush=True)
    last_poll = 0.0
    stopping = False
    while True:
        try:
            if deadline is not None and time.monotonic() >= deadline:
                stopping = True
            if time.monotonic() - last_poll >= BUFFERS_POLL_S or stopping:
                reader.poll_buffers()
                last_poll = time.monotonic()
            step(stopping)
            for notice in reader.notices:
                print(f"xenlike trace: {notice}", file=sys.stderr)
            reader.notices.clear()
            if stopping:
                return
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            stopping = True
        except TraceError as exc:
            print(f"xenlike trace: {exc}", file=sys.stderr)
            stopping = True
        except BrokenPipeError:
            return


def _follow(args: argparse.Namespace, reader: TraceReader) -> None:
    """Drain, decode, merge and print records until stopped."""
    keep = DomainFilter(args.domain) if args.domain else None
    merger = Merger()
    t0: int | None = None

    def step(stopping: bool) -> None:
        nonlocal t0
        merger.add(reader.read())
        for record in merger.release(None if stopping else time.monotonic_ns()):
            if keep is not None and not keep(record, reader.names):
                continue
            if t0 is None:
                t0 = record["ns"]
            sys.stdout.write(_render(record, reader.names, t0, args.json) + "\n")
        sys.stdout.flush()

    _until_stopped(args, reader, step)


def _record(args: argparse.Namespace, reader: TraceReader, out: BinaryIO) -> int:
    """Copy what the buffers hold into ``out`` until stopped, undecoded; returns how many records."""
    writer = RecordingWriter(out, reader.names, args.domain)
    count = 0

    def step(stopping: bool) -> None:
        nonlocal count
        count += writer.add(reader.drain())
        writer.names(reader.names)
        out.flush()

    _until_stopped(args, reader, step)
    return count


def _render(record: TraceRecord, names: dict[int, str], t0: int, as_json: bool) -> str:
    if as_json:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
    return format_line(record, names, t0)


def _export(args: argparse.Namespace) -> int:
    if args.perfetto is None:
        raise XlError("--export FILE needs --perfetto OUT.json: the timeline to write")
    try:
        recording = read_recording(Path(args.export))
    except TraceError as exc:
        raise XlError(str(exc)) from None
    for notice in recording.notices:
        print(f"xenlike trace: {args.export}: {notice}", file=sys.stderr)
    names, records = recording.names, recording.records
    domain = args.domain or recording.domain  # -d at export, else the one it was recorded with
    if domain:
        keep = DomainFilter(domain)
        records = [r for r in records if keep(r, names)]
    try:
        events = write_chrome_trace(records, names, Path(args.perfetto))
    except OSError as exc:
        raise XlError(f"cannot write {args.perfetto}: {exc.strerror or exc}") from None
    print(
        f"{args.perfetto}: {events} trace events from {len(records)} records (open it in ui.perfetto.dev or chrome://tracing)"
    )
    return 0


def _stop_on_sigterm() -> None:
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
