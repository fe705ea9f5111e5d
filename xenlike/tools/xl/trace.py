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
from pathlib import Path
from typing import TextIO

from xenlike.kernel.rundir import RunDir
from xenlike.public.trace import ALL_CLASSES, CLASS_NAMES, TraceRecord, parse_classes
from xenlike.tools.trace_export import write_chrome_trace
from xenlike.tools.xentrace import (
    DomainFilter,
    Merger,
    TraceError,
    TraceReader,
    format_line,
    read_recording,
    write_recording_header,
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
    out: TextIO = sys.stdout
    record_file = None
    if args.record is not None:
        try:
            record_file = open(args.record, "w", encoding="utf-8")
        except OSError as exc:
            reader.close()
            raise XlError(f"cannot write {args.record}: {exc.strerror or exc}") from None
        out = record_file
    _stop_on_sigterm()
    try:
        count = _follow(args, reader, out, record_file is not None)
    finally:
        reader.close()
        if record_file is not None:
            record_file.close()
    if record_file is not None:
        print(f"recorded {count} records to {args.record}", file=sys.stderr)
    return 0


def _follow(args: argparse.Namespace, reader: TraceReader, out: TextIO, recording: bool) -> int:
    """Drain, merge and write records until Ctrl-C, SIGTERM or ``-T`` seconds; returns how many were written."""
    keep = DomainFilter(args.domain) if args.domain else None
    merger = Merger()
    names_seen: dict[int, str] = {}
    t0: int | None = None
    count = 0
    deadline = time.monotonic() + args.time if args.time else None
    what = args.classes or "all"
    print(f"tracing {what}{' of ' + args.domain if args.domain else ''} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if recording:
        write_recording_header(out, reader.names)
        names_seen = dict(reader.names)
    last_poll = 0.0
    stopping = False
    while True:
        try:
            if deadline is not None and time.monotonic() >= deadline:
                stopping = True
            if time.monotonic() - last_poll >= BUFFERS_POLL_S or stopping:
                reader.poll_buffers()
                last_poll = time.monotonic()
            merger.add(reader.read())
            for notice in reader.notices:
                print(f"xenlike trace: {notice}", file=sys.stderr)
            reader.notices.clear()
            if recording and reader.names != names_seen:
                out.write(json.dumps({"names": {str(k): v for k, v in reader.names.items()}}) + "\n")
                names_seen = dict(reader.names)
            for record in merger.release(None if stopping else time.monotonic_ns()):
                if keep is not None and not keep(record, reader.names):
                    continue
                if t0 is None:
                    t0 = record["ns"]
                out.write(_render(record, reader.names, t0, args.json or recording) + "\n")
                count += 1
            out.flush()
            if stopping:
                return count
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            stopping = True
        except TraceError as exc:
            print(f"xenlike trace: {exc}", file=sys.stderr)
            stopping = True
        except BrokenPipeError:
            return count


def _render(record: TraceRecord, names: dict[int, str], t0: int, as_json: bool) -> str:
    if as_json:
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
    return format_line(record, names, t0)


def _export(args: argparse.Namespace) -> int:
    if args.perfetto is None:
        raise XlError("--export FILE needs --perfetto OUT.json: the timeline to write")
    try:
        names, records = read_recording(Path(args.export))
    except TraceError as exc:
        raise XlError(str(exc)) from None
    if args.domain:
        keep = DomainFilter(args.domain)
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
