"""The trace reader (``tools/xentrace/xentrace.c``, read live as xenalyze reads a file).

:class:`TraceReader` asks the hypervisor for every process's trace buffer over
``trace.sock`` (:mod:`xenlike.hypervisor.trace` says how), sets the enable mask,
and drains the buffers; :class:`Merger` orders what several buffers gave by
timestamp, holding records back :data:`MERGE_DELAY_NS` so a span written when
it ends (it carries its start) still finds its place. A record is a
:class:`~xenlike.public.trace.TraceRecord`: ``ns``, ``event``, ``cls``,
``domid``, ``vcpu``, ``src`` (the buffer's name) and the event's fields.

A guest's buffer is its own to spoil: its records' ``domid`` is the domain's
whatever they say, and a buffer that stops parsing is reported once per read
and skipped to its end.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from xenlike.kernel.hypercall import ChannelClosed, recv_message, send_message
from xenlike.kernel.rundir import RunDir
from xenlike.kernel.trace import TraceBuffer, TraceBufferError
from xenlike.public.trace import (
    EVENT_NAMES,
    TRACE_SOCKET,
    Event,
    RecordError,
    TraceClass,
    TraceRecord,
    class_of,
    unpack_record,
)
from xenlike.public.xen import DOMID_XEN

__all__ = ["TraceReader", "TraceError", "Merger", "DomainFilter", "format_line", "MERGE_DELAY_NS", "read_recording"]

MERGE_DELAY_NS = 250_000_000  # how long a record waits for earlier ones from slower buffers
_CLASS_NAMES = {int(cls): (cls.name or "").lower() for cls in TraceClass}
_ANSWER_TIMEOUT_S = 10.0


class TraceError(Exception):
    """The trace could not be opened or read: names the host or the refusal."""


@dataclass
class _Source:
    """One buffer as the reader holds it."""

    id: int
    name: str
    domid: int
    role: str
    buffer: TraceBuffer
    gone: bool = False
    corrupt: int = 0  # reads that found bytes that were not records


class TraceReader:
    """The host's trace buffers, read by this process (one reader per host at a time)."""

    def __init__(self, run_dir: RunDir, mask: int) -> None:
        path = Path(run_dir.path) / TRACE_SOCKET
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.settimeout(_ANSWER_TIMEOUT_S)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise TraceError(
                f"no host is running in {run_dir.path} (no {TRACE_SOCKET}): start one with `xenlike up`"
            ) from exc
        self.sources: dict[int, _Source] = {}
        self.names: dict[int, str] = {DOMID_XEN: "xen", 0: "Domain-0"}  # domid -> name, as buffers appear
        self.notices: list[str] = []  # what went wrong with a buffer, for the caller to show once
        try:
            self._take(self._ask({"op": "open", "mask": mask}))
            self.mask = mask
        except BaseException:
            self._sock.close()
            raise

    def _ask(self, request: dict) -> tuple[dict, list[int]]:
        try:
            try:
                send_message(self._sock, request)
            except BrokenPipeError:
                pass  # a refused reader's socket is closed at once: its refusal waits to be read
            answer, fds = recv_message(self._sock)
        except (ChannelClosed, ConnectionError, TimeoutError) as exc:
            raise TraceError(f"the hypervisor stopped answering the trace: {exc or 'it closed the socket'}") from exc
        if not isinstance(answer, dict) or not answer.get("ok"):
            for fd in fds:
                os.close(fd)
            error = answer.get("error", "refused") if isinstance(answer, dict) else "a malformed answer"
            raise TraceError(f"the hypervisor refused the trace: {error}")
        return answer, fds

    def _take(self, reply: tuple[dict, list[int]]) -> None:
        """Map the buffers an answer carries; ask again while it says there are more."""
        while True:
            answer, fds = reply
            for desc, fd in zip(answer.get("buffers", []), fds):
                try:
                    buffer = TraceBuffer(fd)
                except (TraceBufferError, OSError) as exc:
                    self.notices.append(f"buffer {desc.get('name')!r} cannot be read: {exc}")
                    continue
                finally:
                    os.close(fd)
                source = _Source(int(desc["id"]), str(desc["name"]), int(desc["domid"]), str(desc["role"]), buffer)
                self.sources[source.id] = source
                if source.role in ("domu", "dom0"):
                    self.names[source.domid] = source.name
            for fd in fds[len(answer.get("buffers", [])) :]:
                os.close(fd)
            for gone in answer.get("gone", []):
                if gone in self.sources:
                    self.sources[gone].gone = True
            if not answer.get("more"):
                return
            reply = self._ask({"op": "poll", "known": list(self.sources)})

    def poll_buffers(self) -> None:
        """Learn of buffers made and ended since the last call (domains created and gone)."""
        self._take(self._ask({"op": "poll", "known": [s.id for s in self.sources.values() if not s.gone]}))

    def set_mask(self, mask: int) -> None:
        self._ask({"op": "mask", "mask": mask})
        self.mask = mask

    def read(self) -> list[TraceRecord]:
        """Everything waiting in every buffer, in no particular order; drops buffers whose writer ended."""
        records: list[TraceRecord] = []
        for source in list(self.sources.values()):
            raw, lost, why = source.buffer.read()
            if lost:
                records.append(_record(Event.LOST_RECORDS, time.monotonic_ns(), source.domid, 0, source, {"n": lost}))
            if why is not None:
                source.corrupt += 1
                self.notices.append(f"buffer {source.name!r} (d{source.domid}): {why}; skipped to its end")
            for data in raw:
                try:
                    event, ns, domid, vcpu, fields = unpack_record(data)
                except RecordError as exc:
                    source.corrupt += 1
                    self.notices.append(f"buffer {source.name!r} (d{source.domid}): {exc}")
                    continue
                if source.role == "domu":
                    domid = source.domid  # a guest speaks for itself alone
                records.append(_record(event, ns, domid, vcpu, source, fields))
            if source.gone:
                source.buffer.close()
                del self.sources[source.id]
        return records

    def close(self) -> None:
        """Stop reading: the hypervisor turns tracing off when the socket closes."""
        self._sock.close()
        for source in self.sources.values():
            source.buffer.close()
        self.sources.clear()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(event: int, ns: int, domid: int, vcpu: int, source: _Source, fields: dict[str, Any]) -> TraceRecord:
    record = TraceRecord(fields)
    record.update(
        ns=ns,
        event=EVENT_NAMES.get(event, f"{event:#x}"),
        cls=_CLASS_NAMES.get(class_of(event), f"{class_of(event):#x}"),
        domid=domid,
        vcpu=vcpu,
        src=source.name,
    )
    return record


class Merger:
    """Orders records from several buffers by ``ns``, releasing those older than the newest wait."""

    def __init__(self, delay_ns: int = MERGE_DELAY_NS) -> None:
        self.delay_ns = delay_ns
        self._heap: list[tuple[int, int, TraceRecord]] = []
        self._seq = 0

    def add(self, records: Iterable[TraceRecord]) -> None:
        for record in records:
            self._seq += 1
            heapq.heappush(self._heap, (record["ns"], self._seq, record))

    def release(self, now_ns: int | None = None) -> Iterator[TraceRecord]:
        """The records older than ``now - delay`` (every record with ``now_ns`` of None), oldest first."""
        limit = None if now_ns is None else now_ns - self.delay_ns
        while self._heap and (limit is None or self._heap[0][0] <= limit):
            yield heapq.heappop(self._heap)[2]


class DomainFilter:
    """``-d NAME``: the records about one domain, its name resolved as its buffer appears.

    A record is about the domain if it is its own (``domid``) or names it as
    the domain acted for (``dom``, ``conn``, ``frontend``, ``granter``, or a
    hypercall's ``dom``, ``domid``, ``remote_dom``, ``granter``; a builder's
    step or ``createdomain`` names it by ``name`` before it has an id).
    """

    KEYS = ("dom", "conn", "frontend", "granter")
    ARG_KEYS = ("dom", "domid", "remote_dom", "granter")  # a hypercall's arguments that name a domain

    def __init__(self, name: str) -> None:
        self.name = name

    def domid(self, names: dict[int, str]) -> int | None:
        if self.name.isdigit():
            return int(self.name)
        for domid, name in names.items():
            if name == self.name:
                return domid
        return None

    def __call__(self, record: TraceRecord, names: dict[int, str]) -> bool:
        args = record.get("args")
        args = args if isinstance(args, dict) else {}
        if record.get("name") == self.name or args.get("name") == self.name:
            return True
        domid = self.domid(names)
        if domid is None:
            return False
        if record["domid"] == domid or any(record.get(key) == domid for key in self.KEYS):
            return True
        return any(args.get(key) == domid for key in self.ARG_KEYS)


_HEADER_KEYS = ("ns", "event", "cls", "domid", "vcpu", "src")


def format_line(record: TraceRecord, names: dict[int, str], t0: int) -> str:
    """One record as a line: seconds since ``t0``, domain:vCPU, class, event, its fields."""
    who = f"{names.get(record['domid'], 'd' + str(record['domid']))}:{record['vcpu']}"
    fields = {k: v for k, v in record.items() if k not in _HEADER_KEYS}
    text = _describe(record["event"], fields)
    return f"{(record['ns'] - t0) / 1e9:12.6f} {who:<16} {record['cls']:<9} {text}"


def _describe(event: str, fields: dict[str, Any]) -> str:
    """An event's fields in a reader's words: a hypercall as ``op(args) = result``, durations in µs."""
    dur = fields.pop("dur", None)
    tail = f" [{dur / 1000:.1f} µs]" if isinstance(dur, int) else ""
    if event == "hypercall":
        args = dict(fields.pop("args", {}) or {})
        op = str(fields.pop("op", "?"))
        if isinstance(args.get("cmd"), str):
            op = f"{op} {args.pop('cmd')}"
        where = f" #{fields.pop('multicall')}" if "multicall" in fields else ""
        if "errno" in fields:
            outcome = f" = -{fields.pop('errno')}"
        elif fields.pop("deferred", False):
            outcome = " = (answered later)"
        else:
            outcome = f" = {_short(fields.pop('result', None))}"
        rest = f" {_kv(fields)}" if fields else ""
        return f"{op}({_kv(args)}){where}{outcome}{rest}{tail}"
    return f"{event} {_kv(fields)}{tail}".rstrip()


def _kv(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in fields.items())


def _short(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def write_recording_header(out: TextIO, names: dict[int, str]) -> None:
    """A recording's first line: the domains' names (``trace --record``'s file is JSON lines)."""
    out.write(json.dumps({"xenlike_trace": 1, "names": {str(k): v for k, v in names.items()}}) + "\n")


def read_recording(path: Path) -> tuple[dict[int, str], list[TraceRecord]]:
    """A ``--record`` file's names and records; TraceError naming the line that is not one."""
    names: dict[int, str] = {}
    records: list[TraceRecord] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{path}:{number}: not a trace record: {exc}") from None
                if number == 1:
                    if not isinstance(item, dict) or item.get("xenlike_trace") != 1:
                        raise TraceError(f"{path}: not a `xenlike trace --record` file")
                    names = {int(k): str(v) for k, v in item.get("names", {}).items()}
                    continue
                if isinstance(item, dict) and "names" in item and "ns" not in item:
                    names.update({int(k): str(v) for k, v in item["names"].items()})
                    continue
                if not isinstance(item, dict) or not all(key in item for key in _HEADER_KEYS):
                    raise TraceError(f"{path}:{number}: not a trace record")
                records.append(TraceRecord(item))
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    records.sort(key=lambda r: r["ns"])
    return names, records
