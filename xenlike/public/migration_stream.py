"""The save/restore and migration stream (Xen's migration stream v2, ``docs/specs/libxc-migration-stream.pandoc``).

Both ends of a save, a restore and a migration read and write this one format.
It is laid out as Xen's (``tools/libs/guest/xg_sr_stream_format.h``)::

    image header   (big-endian)  marker u64 = ~0, id u32 = "XENF", version u32 = 3,
                                 options u16 (bit 0: big-endian records), u16, u32 reserved
    domain header                type u32, page_shift u16, u16 reserved, xen_major u32, xen_minor u32
    records, each                type u32, length u32, body[length], zero padding to 8 octets
    ...
    END

The records after the headers are in the byte order the options name (little
for every stream xenlike writes). Bit 31 of a type marks an optional record: a
reader that does not know it skips it; an unknown mandatory record fails the
stream (``xg_sr_restore.c``'s ``process_record``).

Where a record means what Xen's does it has Xen's number: ``END`` 0,
``PAGE_DATA`` 1 (``count`` u32, u32 reserved, ``pfn[count]`` u64 with the page
type in bits 63-60, then one page of data for each pfn whose type carries data),
``STATIC_DATA_END`` 0x10 (what describes the domain has been sent; pages follow).
xenlike's own records (a xenlike domain has no x86 page tables, CPU registers or
HVM context) are numbered from :data:`XENLIKE_BASE` up, out of Xen's range:

* ``DOMAIN_INFO``: the domain's name, uuid, frames, vCPUs and the config it was
  built from (JSON), first after the headers;
* ``VCPU_CONTEXT``: one per vCPU: ``vcpu_id`` u32, u32 reserved, then its
  state as JSON (Xen's ``X86_PV_VCPU_BASIC`` has the same header);
* ``DEVICE_STATE``: one per device: its type, id and the back end's config (JSON);
* ``XENSTORE_DATA``: the nodes of the domain's home the toolstack owns, as
  ``[path, value]`` pairs relative to it (JSON);
* ``WORKLOAD_STATE``: where the guest kernel left its suspend record in its
  memory (``pfn`` u64, ``length`` u64) and the record itself
  (``xenlike.public.suspend``: its workload's frames and the blob its
  ``suspend`` hook returned);
* ``CONSOLE_HISTORY`` (optional): the tail of the domain's console output, raw.

Order, as Xen's: ``DOMAIN_INFO``, ``VCPU_CONTEXT``/``DEVICE_STATE`` records,
``STATIC_DATA_END``, then ``PAGE_DATA`` records (a pfn may come again: the later
copy wins, as in a live migration's rounds), then ``XENSTORE_DATA``,
``WORKLOAD_STATE``, optional records and ``END``. :class:`StreamReader`
refuses anything else with a :class:`StreamError` that says where and why.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from xenlike.public.xen import PAGE_SHIFT, PAGE_SIZE

__all__ = [
    "IHDR_MARKER",
    "IHDR_ID",
    "IHDR_VERSION",
    "IHDR_OPT_BIG_ENDIAN",
    "DHDR_TYPE_XENLIKE_PV",
    "REC_TYPE_OPTIONAL",
    "XENLIKE_BASE",
    "RecordType",
    "PageType",
    "MAX_BATCH_SIZE",
    "MAX_RECORD_LENGTH",
    "StreamError",
    "ImageHeader",
    "DomainHeader",
    "Record",
    "PageData",
    "DomainInfo",
    "VcpuContext",
    "DeviceState",
    "WorkloadState",
    "StreamWriter",
    "StreamReader",
    "parse",
]

# -- the image header (struct xc_sr_ihdr, always big-endian) ---------------------------------
IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_ID = 0x58454E46  # "XENF"
IHDR_VERSION = 3
IHDR_OPT_BIG_ENDIAN = 1 << 0  # _IHDR_OPT_ENDIAN
_IHDR = struct.Struct(">QIIHHI")  # marker, id, version, options, _res1, _res2: 24 octets

# -- the domain header (struct xc_sr_dhdr) ----------------------------------------------------
# Xen's types are DHDR_TYPE_X86_PV 1 and DHDR_TYPE_X86_HVM 2; a xenlike domain is neither.
DHDR_TYPE_XENLIKE_PV = 0x00005850  # "PX": xenlike's own, outside Xen's numbers
_DHDR = "IHHII"  # type, page_shift, _res1, xen_major, xen_minor: 16 octets

# -- records (struct xc_sr_rhdr) ----------------------------------------------------------------
_RHDR = "II"  # type, length
REC_ALIGN = 8  # REC_ALIGN_ORDER 3
REC_TYPE_OPTIONAL = 0x80000000
XENLIKE_BASE = 0x00010000  # xenlike's records; Xen's mandatory numbers stay below 0x100

# Xen restores in batches of at most MAX_BATCH_SIZE pages (xg_sr_common.h); so does xenlike.
MAX_BATCH_SIZE = 1024
# The largest body a reader accepts: a full PAGE_DATA batch and its pfn list, with room.
MAX_RECORD_LENGTH = 8 + MAX_BATCH_SIZE * (8 + PAGE_SIZE)


class RecordType(IntEnum):
    """Record types: Xen's numbers where the meaning is Xen's, xenlike's from XENLIKE_BASE."""

    END = 0x00000000
    PAGE_DATA = 0x00000001
    STATIC_DATA_END = 0x00000010
    DOMAIN_INFO = XENLIKE_BASE + 1
    VCPU_CONTEXT = XENLIKE_BASE + 2
    DEVICE_STATE = XENLIKE_BASE + 3
    XENSTORE_DATA = XENLIKE_BASE + 4
    WORKLOAD_STATE = XENLIKE_BASE + 5
    CONSOLE_HISTORY = REC_TYPE_OPTIONAL | (XENLIKE_BASE + 6)


class PageType(IntEnum):
    """``PAGE_DATA``'s page types (bits 63-60 of each pfn word, ``XEN_DOMCTL_PFINFO_*``).

    A xenlike domain has no page tables, so the L1TAB..L4TAB types and BROKEN
    cannot name anything and are refused.
    """

    NOTAB = 0x0  # an ordinary page: its data follows
    L1TAB = 0x1
    L2TAB = 0x2
    L3TAB = 0x3
    L4TAB = 0x4
    BROKEN = 0xD
    XALLOC = 0xE  # allocated, contents zero: no data follows
    XTAB = 0xF  # invalid page: no data follows, the frame is left alone


PAGE_DATA_PFN_MASK = (1 << 52) - 1  # PAGE_DATA_PFN_MASK of the spec
PAGE_DATA_TYPE_SHIFT = 60
_HAS_DATA = {PageType.NOTAB}
_ACCEPTED_PAGE_TYPES = {PageType.NOTAB, PageType.XALLOC, PageType.XTAB}


class StreamError(ValueError):
    """The stream cannot be restored: what is wrong, and at which octet of the stream."""


def _padded(length: int) -> int:
    return (length + REC_ALIGN - 1) & ~(REC_ALIGN - 1)


@dataclass(frozen=True)
class ImageHeader:
    """``struct xc_sr_ihdr``."""

    options: int = 0

    @property
    def byteorder(self) -> str:
        return ">" if self.options & IHDR_OPT_BIG_ENDIAN else "<"

    def pack(self) -> bytes:
        return _IHDR.pack(IHDR_MARKER, IHDR_ID, IHDR_VERSION, self.options, 0, 0)


@dataclass(frozen=True)
class DomainHeader:
    """``struct xc_sr_dhdr``."""

    type: int = DHDR_TYPE_XENLIKE_PV
    page_shift: int = PAGE_SHIFT
    xen_major: int = 4
    xen_minor: int = 19

    def pack(self, byteorder: str = "<") -> bytes:
        return struct.pack(byteorder + _DHDR, self.type, self.page_shift, 0, self.xen_major, self.xen_minor)


@dataclass(frozen=True)
class Record:
    """One record as read: its type, where it started and its body (padding dropped)."""

    type: int
    offset: int
    body: bytes

    @property
    def optional(self) -> bool:
        return bool(self.type & REC_TYPE_OPTIONAL)

    def json(self) -> Any:
        """The body as JSON (the xenlike records that carry structured state)."""
        try:
            return json.loads(self.body.decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise StreamError(
                f"{_name(self.type)} record at octet {self.offset}: its body is not JSON ({str(exc)[:80]})"
            ) from None


@dataclass
class PageData:
    """A ``PAGE_DATA`` record: pfns, their types, and the data of those that carry it (in order)."""

    pfns: list[int]
    types: list[PageType]
    data: bytes

    def pages(self) -> Iterator[tuple[int, PageType, memoryview | None]]:
        """Each (pfn, type, 4 KiB of data or None)."""
        view = memoryview(self.data)
        at = 0
        for pfn, kind in zip(self.pfns, self.types):
            if kind in _HAS_DATA:
                yield pfn, kind, view[at : at + PAGE_SIZE]
                at += PAGE_SIZE
            else:
                yield pfn, kind, None


@dataclass
class DomainInfo:
    """``DOMAIN_INFO``: what the target builds the domain from."""

    name: str
    uuid: str
    nr_frames: int
    vcpus: int
    max_vcpus: int
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "nr_frames": self.nr_frames,
            "vcpus": self.vcpus,
            "max_vcpus": self.max_vcpus,
            "config": self.config,
        }


@dataclass
class VcpuContext:
    """``VCPU_CONTEXT``: one vCPU's id and state."""

    vcpu_id: int
    state: dict[str, Any]


@dataclass
class DeviceState:
    """``DEVICE_STATE``: one device (``type`` as xenstore's ``device/<type>``, ``devid``) and its back end's config."""

    type: str
    devid: int
    backend: dict[str, Any]


@dataclass
class WorkloadState:
    """``WORKLOAD_STATE``: the guest's suspend record and the frame it starts at."""

    pfn: int
    record: bytes


# -- writing -------------------------------------------------------------------------------------


class StreamWriter:
    """Writes a stream to ``write`` (a file's or a socket's); counts what it wrote.

    The caller keeps to the order in the module docstring; the reader checks it.
    """

    def __init__(self, write: Callable[[bytes], Any], header: DomainHeader | None = None) -> None:
        self._write = write
        self.octets = 0
        self.pages = 0
        image = ImageHeader()
        self._order = image.byteorder
        self._emit(image.pack() + (header or DomainHeader()).pack(self._order))

    def _emit(self, data: bytes) -> None:
        self._write(data)
        self.octets += len(data)

    def record(self, rtype: int, body: bytes = b"") -> None:
        """One record, padded to 8 octets."""
        if len(body) > MAX_RECORD_LENGTH:
            raise ValueError(f"a {_name(rtype)} body of {len(body)} octets is over {MAX_RECORD_LENGTH}")
        pad = _padded(len(body)) - len(body)
        self._emit(struct.pack(self._order + _RHDR, rtype, len(body)) + body + bytes(pad))

    def json_record(self, rtype: int, value: Any) -> None:
        self.record(rtype, json.dumps(value, separators=(",", ":")).encode())

    def domain_info(self, info: DomainInfo) -> None:
        self.json_record(RecordType.DOMAIN_INFO, info.to_json())

    def vcpu_context(self, vcpu: VcpuContext) -> None:
        body = json.dumps(vcpu.state, separators=(",", ":")).encode()
        self.record(RecordType.VCPU_CONTEXT, struct.pack(self._order + "II", vcpu.vcpu_id, 0) + body)

    def device_state(self, device: DeviceState) -> None:
        self.json_record(
            RecordType.DEVICE_STATE, {"type": device.type, "devid": device.devid, "backend": device.backend}
        )

    def static_data_end(self) -> None:
        self.record(RecordType.STATIC_DATA_END)

    def page_data(self, pages: Sequence[tuple[int, bytes | memoryview | None]]) -> None:
        """PAGE_DATA records for ``(pfn, data)`` pairs, batched by MAX_BATCH_SIZE; data None sends XALLOC (zero)."""
        for start in range(0, len(pages), MAX_BATCH_SIZE):
            batch = pages[start : start + MAX_BATCH_SIZE]
            words = []
            datas = []
            for pfn, data in batch:
                if data is None:
                    words.append(pfn | (PageType.XALLOC << PAGE_DATA_TYPE_SHIFT))
                else:
                    if len(data) != PAGE_SIZE:
                        raise ValueError(f"pfn {pfn}: a page is {PAGE_SIZE} octets, not {len(data)}")
                    words.append(pfn)
                    datas.append(data)
            head = struct.pack(f"{self._order}II{len(words)}Q", len(words), 0, *words)
            self.record(RecordType.PAGE_DATA, head + b"".join(datas))
            self.pages += len(batch)

    def xenstore_data(self, nodes: Iterable[tuple[str, str]]) -> None:
        self.json_record(RecordType.XENSTORE_DATA, [[path, value] for path, value in nodes])

    def workload_state(self, state: WorkloadState) -> None:
        head = struct.pack(self._order + "QQ", state.pfn, len(state.record))
        self.record(RecordType.WORKLOAD_STATE, head + state.record)

    def console_history(self, data: bytes) -> None:
        self.record(RecordType.CONSOLE_HISTORY, data[-(MAX_RECORD_LENGTH // 2) :])

    def end(self) -> None:
        self.record(RecordType.END)


# -- reading -------------------------------------------------------------------------------------


def _name(rtype: int) -> str:
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"type {rtype:#010x}"


class StreamReader:
    """Reads and checks a stream from ``read(n)`` (which returns fewer octets only at its end).

    Iterating yields each known record, parsed (``DomainInfo``, ``VcpuContext``,
    ``DeviceState``, ``PageData``, ``list`` of xenstore pairs for
    ``XENSTORE_DATA``, ``WorkloadState``, ``bytes`` for ``CONSOLE_HISTORY``,
    or the raw :class:`Record` for ``STATIC_DATA_END``), and stops after ``END``.
    Unknown optional records are skipped (``skipped`` lists each type once, in the
    order first met: a stream of millions of them costs a list of its types). Everything
    wrong raises :class:`StreamError` naming the octet: a short read, a bad
    header, an unknown mandatory record, a record out of order, a pfn outside
    the domain's ``nr_frames``, a page type that means nothing here.
    """

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.offset = 0
        self.info: DomainInfo | None = None
        self.skipped: list[int] = []
        self._static_done = False
        self._ended = False
        self.image = self._image_header()
        self._order = self.image.byteorder
        self.domain = self._domain_header()

    def _take(self, size: int, what: str) -> bytes:
        data = self._read(size) if size else b""
        if len(data) < size:
            raise StreamError(f"truncated stream: {what} at octet {self.offset} needs {size} octets, {len(data)} left")
        self.offset += size
        return data

    def _image_header(self) -> ImageHeader:
        marker, ident, version, options, _, _ = _IHDR.unpack(self._take(_IHDR.size, "the image header"))
        if marker != IHDR_MARKER:
            raise StreamError(
                f"not a migration stream: the image header's marker is {marker:#018x}, not {IHDR_MARKER:#x}"
            )
        if ident != IHDR_ID:
            raise StreamError(f"not a migration stream: the image id is {ident:#010x}, not {IHDR_ID:#010x} ('XENF')")
        if version != IHDR_VERSION:
            raise StreamError(f"migration stream version {version} is not supported (this host reads {IHDR_VERSION})")
        if options & ~IHDR_OPT_BIG_ENDIAN:
            raise StreamError(f"unknown image header options {options:#06x}")
        return ImageHeader(options)

    def _domain_header(self) -> DomainHeader:
        size = struct.calcsize(_DHDR)
        dtype, page_shift, _, major, minor = struct.unpack(self._order + _DHDR, self._take(size, "the domain header"))
        if dtype != DHDR_TYPE_XENLIKE_PV:
            raise StreamError(f"domain type {dtype:#010x} is not a xenlike PV domain ({DHDR_TYPE_XENLIKE_PV:#010x})")
        if page_shift != PAGE_SHIFT:
            raise StreamError(f"the stream's pages are 2^{page_shift} octets, this host's 2^{PAGE_SHIFT}")
        return DomainHeader(dtype, page_shift, major, minor)

    def records(self) -> Iterator[Record]:
        """Every record up to and including END, unparsed (padding checked and dropped)."""
        hsize = struct.calcsize(_RHDR)
        while not self._ended:
            offset = self.offset
            rtype, length = struct.unpack(self._order + _RHDR, self._take(hsize, "a record header"))
            if length > MAX_RECORD_LENGTH:
                raise StreamError(
                    f"{_name(rtype)} record at octet {offset} is {length} octets long, over {MAX_RECORD_LENGTH}"
                )
            padded = self._take(_padded(length), f"the {length}-octet body of a {_name(rtype)} record")
            if any(padded[length:]):
                raise StreamError(f"{_name(rtype)} record at octet {offset}: its padding is not zero")
            if rtype == RecordType.END:
                self._ended = True
            yield Record(rtype, offset, padded[:length])

    def __iter__(self) -> Iterator[Any]:
        for record in self.records():
            parsed = self._parse(record)
            if parsed is not None:
                yield parsed
        if not self._ended:
            raise StreamError(f"truncated stream: no END record by octet {self.offset}")

    def _parse(self, record: Record) -> Any:
        rtype = record.type
        if rtype not in RecordType._value2member_map_:
            if record.optional:
                if rtype not in self.skipped:
                    self.skipped.append(rtype)
                return None
            raise StreamError(f"unknown mandatory record {_name(rtype)} at octet {record.offset}: cannot restore")
        if rtype != RecordType.DOMAIN_INFO and self.info is None:
            raise StreamError(f"{_name(rtype)} record at octet {record.offset} comes before DOMAIN_INFO")
        handler = _PARSERS[RecordType(rtype)]
        return handler(self, record)

    def _domain_info(self, record: Record) -> DomainInfo:
        if self.info is not None:
            raise StreamError(f"a second DOMAIN_INFO record at octet {record.offset}")
        value = record.json()
        try:
            info = DomainInfo(
                name=_typed(value["name"], str),
                uuid=_typed(value["uuid"], str),
                nr_frames=_typed(value["nr_frames"], int),
                vcpus=_typed(value["vcpus"], int),
                max_vcpus=_typed(value["max_vcpus"], int),
                config=_typed(value.get("config", {}), dict),
            )
        except (KeyError, TypeError) as exc:
            raise StreamError(f"DOMAIN_INFO at octet {record.offset}: {exc}") from None
        if info.nr_frames <= 0 or info.nr_frames > PAGE_DATA_PFN_MASK:
            raise StreamError(f"DOMAIN_INFO at octet {record.offset}: nr_frames {info.nr_frames} is not a memory size")
        if not 1 <= info.vcpus <= info.max_vcpus:
            raise StreamError(
                f"DOMAIN_INFO at octet {record.offset}: vcpus {info.vcpus} is not within 1..max_vcpus {info.max_vcpus}"
            )
        self.info = info
        return info

    def _static(self, record: Record) -> Record:
        if self._static_done:
            raise StreamError(f"{_name(record.type)} at octet {record.offset} comes after STATIC_DATA_END")
        if record.type == RecordType.STATIC_DATA_END:
            self._static_done = True
        return record

    def _vcpu_context(self, record: Record) -> VcpuContext:
        self._static(record)
        assert self.info is not None
        if len(record.body) < 8:
            raise StreamError(f"VCPU_CONTEXT at octet {record.offset} is {len(record.body)} octets, under 8")
        vcpu_id, _ = struct.unpack_from(self._order + "II", record.body)
        if vcpu_id >= self.info.max_vcpus:
            raise StreamError(
                f"VCPU_CONTEXT at octet {record.offset} names vCPU {vcpu_id}; the domain has {self.info.max_vcpus}"
            )
        state = Record(record.type, record.offset, record.body[8:]).json()
        return VcpuContext(vcpu_id, _typed(state, dict, f"VCPU_CONTEXT at octet {record.offset}"))

    def _device_state(self, record: Record) -> DeviceState:
        self._static(record)
        value = _typed(record.json(), dict, f"DEVICE_STATE at octet {record.offset}")
        try:
            return DeviceState(_typed(value["type"], str), _typed(value["devid"], int), _typed(value["backend"], dict))
        except (KeyError, TypeError) as exc:
            raise StreamError(f"DEVICE_STATE at octet {record.offset}: {exc}") from None

    def _page_data(self, record: Record) -> PageData:
        assert self.info is not None
        where = f"PAGE_DATA at octet {record.offset}"
        if not self._static_done:
            raise StreamError(f"{where} comes before STATIC_DATA_END")
        body = record.body
        if len(body) < 8:
            raise StreamError(f"{where} is {len(body)} octets, under its 8-octet header")
        count, _ = struct.unpack_from(self._order + "II", body)
        if not 1 <= count <= MAX_BATCH_SIZE:
            raise StreamError(f"{where} has a count of {count}, not 1..{MAX_BATCH_SIZE}")
        if len(body) < 8 + 8 * count:
            raise StreamError(f"{where}: {count} pfns need {8 * count} octets, {len(body) - 8} are there")
        words = struct.unpack_from(f"{self._order}{count}Q", body, 8)
        pfns, types = [], []
        for word in words:
            pfn, raw_type = word & PAGE_DATA_PFN_MASK, word >> PAGE_DATA_TYPE_SHIFT
            if word & ~(PAGE_DATA_PFN_MASK | (0xF << PAGE_DATA_TYPE_SHIFT)):
                raise StreamError(f"{where}: pfn word {word:#018x} has reserved bits set")
            if raw_type not in _ACCEPTED_PAGE_TYPES:
                name = PageType(raw_type).name if raw_type in PageType._value2member_map_ else f"{raw_type:#x}"
                raise StreamError(f"{where}: pfn {pfn} has page type {name}, which a xenlike domain has no use for")
            kind = PageType(raw_type)
            if pfn >= self.info.nr_frames:
                raise StreamError(
                    f"{where} names pfn {pfn}, beyond the domain's memory (frames 0..{self.info.nr_frames - 1})"
                )
            pfns.append(pfn)
            types.append(kind)
        with_data = sum(1 for kind in types if kind in _HAS_DATA)
        data = body[8 + 8 * count :]
        if len(data) != with_data * PAGE_SIZE:
            raise StreamError(
                f"{where}: {with_data} pages need {with_data * PAGE_SIZE} octets of data, the record has {len(data)}"
            )
        return PageData(pfns, types, data)

    def _after_pages(self, record: Record) -> Any:
        if not self._static_done:
            raise StreamError(f"{_name(record.type)} at octet {record.offset} comes before STATIC_DATA_END")
        if record.type == RecordType.XENSTORE_DATA:
            value = record.json()
            where = f"XENSTORE_DATA at octet {record.offset}"
            pairs = _typed(value, list, where)
            for pair in pairs:
                if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                    raise StreamError(f"{where}: {pair!r} is not a [path, value] pair of strings")
                if pair[0].startswith("/") or ".." in pair[0].split("/"):
                    raise StreamError(f"{where}: path {pair[0]!r} is not relative to the domain's home")
            return [(path, value) for path, value in pairs]
        if record.type == RecordType.WORKLOAD_STATE:
            return self._workload_state(record)
        return record.body

    def _workload_state(self, record: Record) -> WorkloadState:
        assert self.info is not None
        where = f"WORKLOAD_STATE at octet {record.offset}"
        if len(record.body) < 16:
            raise StreamError(f"{where} is {len(record.body)} octets, under its 16-octet header")
        pfn, length = struct.unpack_from(self._order + "QQ", record.body)
        if length != len(record.body) - 16:
            raise StreamError(f"{where} says {length} octets of record; {len(record.body) - 16} follow")
        if pfn + max(length - 1, 0) // PAGE_SIZE >= self.info.nr_frames:
            raise StreamError(f"{where} names frame {pfn}, beyond the domain's memory")
        return WorkloadState(pfn, record.body[16:])

    def _end(self, record: Record) -> Record:
        if not self._static_done:
            raise StreamError(f"END at octet {record.offset} comes before STATIC_DATA_END: no domain to restore")
        if record.body:
            raise StreamError(f"END at octet {record.offset} has a {len(record.body)}-octet body; it has none")
        return record


def _typed(value: Any, kind: type, where: str = "") -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        message = f"{value!r} is not {kind.__name__}"
        if where:
            raise StreamError(f"{where}: {message}")
        raise TypeError(message)
    return value


_PARSERS: dict[RecordType, Callable[[StreamReader, Record], Any]] = {
    RecordType.END: StreamReader._end,
    RecordType.PAGE_DATA: StreamReader._page_data,
    RecordType.STATIC_DATA_END: StreamReader._static,
    RecordType.DOMAIN_INFO: StreamReader._domain_info,
    RecordType.VCPU_CONTEXT: StreamReader._vcpu_context,
    RecordType.DEVICE_STATE: StreamReader._device_state,
    RecordType.XENSTORE_DATA: StreamReader._after_pages,
    RecordType.WORKLOAD_STATE: StreamReader._after_pages,
    RecordType.CONSOLE_HISTORY: StreamReader._after_pages,
}


def parse(data: bytes) -> list[Any]:
    """Every parsed record of a whole stream held in memory (see :class:`StreamReader`)."""
    view = memoryview(data)
    at = 0

    def read(size: int) -> bytes:
        nonlocal at
        chunk = bytes(view[at : at + size])
        at += len(chunk)
        return chunk

    return list(StreamReader(read))
