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
from typing import Any, BinaryIO

import msgpack

from xenlike.kernel.hypercall import MSGPACK_DECODE_ERRORS, ChannelClosed, recv_message, send_message
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
    split_records,
    unpack_record,
)
from xenlike.public.xen import DOMID_XEN

__all__ = [
    "TraceReader",
    "TraceError",
    "Merger",
    "DomainFilter",
    "Drained",
    "SourceInfo",
    "decode",
    "format_line",
    "MERGE_DELAY_NS",
    "Recording",
    "RecordingWriter",
    "read_recording",
]

MERGE_DELAY_NS = 250_000_000  # how long a record waits for earlier ones from slower buffers
_CLASS_NAMES = {int(cls): (cls.name or "").lower() for cls in TraceClass}
_ANSWER_TIMEOUT_S = 10.0


class TraceError(Exception):
    """The trace could not be opened or read: names the host or the refusal."""


@dataclass(frozen=True)
class SourceInfo:
    """Whose buffer records came from: the hypervisor's ``id`` for it, its name, domain and role."""

    id: int
    name: str
    domid: int
    role: str


@dataclass
class Drained:
    """One read of one buffer: its records as written (not yet decoded), and how many it lost since the last."""

    source: SourceInfo
    records: list[bytes]
    lost: int
    ns: int  # when it was read: the time a loss is reported at


@dataclass
class _Source:
    """One buffer as the reader holds it."""

    id: int
    name: str
    domid: int
    role: str
    buffer: TraceBuffer
    gone: bool = False

    @property
    def info(self) -> SourceInfo:
        return SourceInfo(self.id, self.name, self.domid, self.role)


def decode(drained: Drained, notices: list[str]) -> list[TraceRecord]:
    """A read's records decoded; one that does not decode is left out and named in ``notices``.

    A guest's buffer speaks for that guest alone: its records' ``domid`` is the
    domain's, whatever they say.
    """
    source = drained.source
    records: list[TraceRecord] = []
    if drained.lost:
        records.append(_record(Event.LOST_RECORDS, drained.ns, source.domid, 0, source.name, {"n": drained.lost}))
    for data in drained.records:
        try:
            event, ns, domid, vcpu, fields = unpack_record(data)
        except RecordError as exc:
            notices.append(f"buffer {source.name!r} (d{source.domid}): {exc}")
            continue
        if source.role == "domu":
            domid = source.domid
        records.append(_record(event, ns, domid, vcpu, source.name, fields))
    return records


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

    def drain(self) -> list[Drained]:
        """What every buffer holds now, as records not yet decoded; drops buffers whose writer ended."""
        drained: list[Drained] = []
        for source in list(self.sources.values()):
            raw, lost, why = source.buffer.read()
            if why is not None:
                self.notices.append(f"buffer {source.name!r} (d{source.domid}): {why}; skipped to its end")
            if raw or lost:
                drained.append(Drained(source.info, raw, lost, time.monotonic_ns()))
            if source.gone:
                source.buffer.close()
                del self.sources[source.id]
        return drained

    def read(self) -> list[TraceRecord]:
        """Everything waiting in every buffer, decoded, in no particular order."""
        records: list[TraceRecord] = []
        for drained in self.drain():
            records.extend(decode(drained, self.notices))
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


def _record(event: int, ns: int, domid: int, vcpu: int, source: str, fields: dict[str, Any]) -> TraceRecord:
    record = TraceRecord(fields)
    record.update(
        ns=ns,
        event=EVENT_NAMES.get(event, f"{event:#x}"),
        cls=_CLASS_NAMES.get(class_of(event), f"{class_of(event):#x}"),
        domid=domid,
        vcpu=vcpu,
        src=source,
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


RECORDING_VERSION = 2


class RecordingWriter:
    """A ``trace --record`` file: the buffers' records as they were written, decoded only when read back.

    As ``xentrace`` writes the raw ``t_rec``s that xenalyze decodes later, the
    recorder copies what it drains without decoding it, so it keeps up with
    writers that a decoding reader would lose records to. The file is a stream
    of msgpack maps:

    - first ``{"xenlike_trace": 2, "names": {domid: name}, "domain": D}``
      (``D``: the ``-d`` the recording was made with, or nil);
    - ``{"names": {...}}`` when a domain appears or is renamed;
    - ``{"source": id, "name": ..., "domid": ..., "role": ...}`` before a buffer's first records;
    - ``{"records": id, "data": bytes, "lost": n, "ns": t}``: one read of that buffer,
      its records back to back (:mod:`xenlike.public.trace`'s layout), and how many it lost.
    """

    def __init__(self, out: BinaryIO, names: dict[int, str], domain: str | None) -> None:
        self._out = out
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._names = dict(names)
        self._known: set[int] = set()
        out.write(self._pack({"xenlike_trace": RECORDING_VERSION, "names": _str_keys(names), "domain": domain}))

    def names(self, names: dict[int, str]) -> None:
        """Note the domains' names if they changed."""
        if names != self._names:
            self._names = dict(names)
            self._out.write(self._pack({"names": _str_keys(names)}))

    def add(self, drained: Iterable[Drained]) -> int:
        """Write reads of buffers; returns how many records they held."""
        count = 0
        for item in drained:
            source = item.source
            if source.id not in self._known:
                self._known.add(source.id)
                self._out.write(
                    self._pack({"source": source.id, "name": source.name, "domid": source.domid, "role": source.role})
                )
            data = b"".join(item.records)
            self._out.write(self._pack({"records": source.id, "data": data, "lost": item.lost, "ns": item.ns}))
            count += len(item.records)
        return count


def _str_keys(names: dict[int, str]) -> dict[str, str]:
    return {str(k): v for k, v in names.items()}


@dataclass
class Recording:
    """A ``--record`` file read back: the domains' names, the records in time order, the ``-d`` it was made with,
    and what did not decode (left out, as the live reader leaves it out)."""

    names: dict[int, str]
    records: list[TraceRecord]
    domain: str | None
    notices: list[str]


def read_recording(path: Path) -> Recording:
    """A ``--record`` file; TraceError if it is not one. A file cut short (its recorder killed) reads up to the cut."""
    try:
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=1 << 30)
            items = iter(unpacker)
            try:
                header = next(items)
            except StopIteration:
                header = None
            except MSGPACK_DECODE_ERRORS as exc:
                raise TraceError(f"{path}: not a `xenlike trace --record` file ({exc})") from None
            if not isinstance(header, dict) or header.get("xenlike_trace") != RECORDING_VERSION:
                raise TraceError(f"{path}: not a `xenlike trace --record` file (version {RECORDING_VERSION})")
            names = _names_of(header.get("names"), path)
            domain = header.get("domain")
            notices: list[str] = []
            try:
                records = _read_items(items, names, notices, path)
            except MSGPACK_DECODE_ERRORS as exc:
                raise TraceError(f"{path}: damaged at byte {unpacker.tell()}: {exc}") from None
    except OSError as exc:
        raise TraceError(f"cannot read {path}: {exc.strerror or exc}") from None
    records.sort(key=lambda r: r["ns"])
    return Recording(names, records, domain if isinstance(domain, str) else None, notices)


def _names_of(value: Any, path: Path) -> dict[int, str]:
    if not isinstance(value, dict):
        raise TraceError(f"{path}: a names item is not a map")
    try:
        return {int(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise TraceError(f"{path}: a names item has a domid that is not a number") from None


def _read_items(items: Iterator[Any], names: dict[int, str], notices: list[str], path: Path) -> list[TraceRecord]:
    sources: dict[int, SourceInfo] = {}
    records: list[TraceRecord] = []
    for number, item in enumerate(items, 2):
        if not isinstance(item, dict):
            raise TraceError(f"{path}: item {number} is not a map")
        if "records" in item:
            sid, data, lost, ns = item["records"], item.get("data"), item.get("lost", 0), item.get("ns", 0)
            source = sources.get(sid) if isinstance(sid, int) else None
            if source is None or not isinstance(data, bytes):
                raise TraceError(f"{path}: item {number} holds records of no buffer named before it")
            if not isinstance(lost, int) or not isinstance(ns, int):
                raise TraceError(f"{path}: item {number} has a lost count or time that is not a number")
            raw, why = split_records(data)
            if why is not None:
                notices.append(f"buffer {source.name!r} (d{source.domid}): {why}")
            records.extend(decode(Drained(source, raw, lost, ns), notices))
        elif "source" in item:
            try:
                info = SourceInfo(int(item["source"]), str(item["name"]), int(item["domid"]), str(item["role"]))
            except (KeyError, TypeError, ValueError):
                raise TraceError(f"{path}: item {number} is a buffer without its id, name, domid or role") from None
            sources[info.id] = info
        elif "names" in item:
            names.update(_names_of(item["names"], path))
        else:
            raise TraceError(f"{path}: item {number} is not a trace item")
    return records
