"""xenlike.public.migration_stream: layouts against xg_sr_stream_format.h, round trips, and hostile streams."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.public import migration_stream as ms
from xenlike.public.migration_stream import (
    DeviceState,
    DomainInfo,
    PageData,
    RecordType,
    StreamError,
    StreamWriter,
    VcpuContext,
    WorkloadState,
    parse,
)
from xenlike.public.xen import PAGE_SIZE

NR_FRAMES = 64


def _info(nr_frames: int = NR_FRAMES) -> DomainInfo:
    return DomainInfo(
        name="guest",
        uuid="00000000-0000-0000-0000-000000000001",
        nr_frames=nr_frames,
        vcpus=2,
        max_vcpus=2,
        config={"memory": 1},
    )


def _stream(pages: list[tuple[int, bytes | None]], *, nr_frames: int = NR_FRAMES, extra: bytes = b"") -> bytes:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info(nr_frames))
    w.vcpu_context(VcpuContext(0, {"online": True}))
    w.vcpu_context(VcpuContext(1, {"online": False}))
    w.device_state(DeviceState("vbd", 51712, {"target": "/tmp/d.img", "mode": "w"}))
    w.static_data_end()
    w.page_data(pages)
    w.xenstore_data([("data/x", "1")])
    w.workload_state(WorkloadState(10, b"blob"))
    out.append(extra)
    w.end()
    return b"".join(out)


# --- layouts ---------------------------------------------------------------------------------


def test_headers_are_xens_layout() -> None:
    data = _stream([])
    marker, ident, version, options = struct.unpack_from(">QIIH", data)
    assert (marker, ident, version, options) == (0xFFFFFFFFFFFFFFFF, 0x58454E46, 3, 0)
    dtype, page_shift, _, major, minor = struct.unpack_from("<IHHII", data, 24)
    assert (dtype, page_shift, major, minor) == (ms.DHDR_TYPE_XENLIKE_PV, 12, 4, 19)
    assert len(data) % 8 == 0


def test_record_numbers_are_xens_where_the_meaning_is() -> None:
    assert (RecordType.END, RecordType.PAGE_DATA, RecordType.STATIC_DATA_END) == (0, 1, 0x10)
    assert ms.REC_TYPE_OPTIONAL == 0x80000000
    # xenlike's own records stay out of Xen's range (0x00-0x12 used, the rest reserved by the spec).
    assert all(
        t & ~ms.REC_TYPE_OPTIONAL >= ms.XENLIKE_BASE
        for t in RecordType
        if t.name not in ("END", "PAGE_DATA", "STATIC_DATA_END")
    )
    assert RecordType.CONSOLE_HISTORY & ms.REC_TYPE_OPTIONAL


def test_page_data_layout() -> None:
    page = bytes(range(256)) * 16
    data = _stream([(3, page), (5, None)])
    records = parse(data)
    (pd,) = [r for r in records if isinstance(r, PageData)]
    assert pd.pfns == [3, 5]
    assert pd.types == [ms.PageType.NOTAB, ms.PageType.XALLOC]
    assert [(pfn, bytes(d) if d is not None else None) for pfn, _, d in pd.pages()] == [(3, page), (5, None)]


# --- round trips -----------------------------------------------------------------------------

pages_strategy = st.lists(
    st.tuples(st.integers(0, NR_FRAMES - 1), st.one_of(st.none(), st.binary(min_size=1, max_size=8))),
    max_size=40,
)


@given(pages_strategy)
@settings(max_examples=60, deadline=None)
def test_round_trip(pages: list[tuple[int, bytes | None]]) -> None:
    full = [(pfn, None if d is None else d.ljust(PAGE_SIZE, b"\x5a")) for pfn, d in pages]
    records = parse(_stream(full))
    assert records[0] == _info()
    got = [
        (pfn, None if d is None else bytes(d)) for r in records if isinstance(r, PageData) for pfn, _, d in r.pages()
    ]
    assert got == full
    assert records[-2] == WorkloadState(10, b"blob")
    assert [("data/x", "1")] in records


def test_batches_are_at_most_max_batch_size() -> None:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info(4096))
    w.static_data_end()
    w.page_data([(i, None) for i in range(ms.MAX_BATCH_SIZE + 3)])
    w.end()
    counts = [len(r.pfns) for r in parse(b"".join(out)) if isinstance(r, PageData)]
    assert counts == [ms.MAX_BATCH_SIZE, 3]


# --- hostile streams ---------------------------------------------------------------------------


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_truncated_stream_is_a_precise_error(data: st.DataObject) -> None:
    whole = _stream([(1, b"\1" * PAGE_SIZE), (2, None)])
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(StreamError, match=r"^truncated stream: .* at octet \d+"):
        parse(whole[:cut])


def _record(rtype: int, body: bytes) -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + bytes(-len(body) % 8)


@given(st.integers(0, 0x7FFFFFFF).filter(lambda t: t not in RecordType._value2member_map_), st.binary(max_size=20))
@settings(max_examples=60, deadline=None)
def test_unknown_mandatory_record_fails(rtype: int, body: bytes) -> None:
    with pytest.raises(
        StreamError, match=rf"^unknown mandatory record type {rtype:#010x} at octet \d+: cannot restore"
    ):
        parse(_stream([], extra=_record(rtype, body)))


@given(
    st.integers(0x80000000, 0xFFFFFFFF).filter(lambda t: t not in RecordType._value2member_map_), st.binary(max_size=20)
)
@settings(max_examples=60, deadline=None)
def test_unknown_optional_record_is_skipped(rtype: int, body: bytes) -> None:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.static_data_end()
    out.append(_record(rtype, body))
    w.end()
    reader_records = parse(b"".join(out))
    assert reader_records[0] == _info()
    assert len(reader_records) == 3  # DOMAIN_INFO, STATIC_DATA_END, END


@given(st.integers(1, 4096), st.integers(0, (1 << 52) - 1), st.sampled_from([ms.PageType.NOTAB, ms.PageType.XALLOC]))
@settings(max_examples=100, deadline=None)
def test_page_beyond_memory_is_refused(nr_frames: int, pfn: int, kind: ms.PageType) -> None:
    word = pfn | (kind << ms.PAGE_DATA_TYPE_SHIFT)
    body = struct.pack("<IIQ", 1, 0, word) + (bytes(PAGE_SIZE) if kind == ms.PageType.NOTAB else b"")
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info(nr_frames))
    w.static_data_end()
    out.append(_record(RecordType.PAGE_DATA, body))
    w.end()
    if pfn < nr_frames:
        assert isinstance(parse(b"".join(out))[2], PageData)
    else:
        with pytest.raises(
            StreamError, match=rf"names pfn {pfn}, beyond the domain's memory \(frames 0..{nr_frames - 1}\)"
        ):
            parse(b"".join(out))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (struct.pack("<II", 0, 0), r"count of 0, not 1..1024"),
        (struct.pack("<II", 2000, 0), r"count of 2000"),
        (struct.pack("<IIQ", 2, 0, 1), r"2 pfns need 16 octets, 8 are there"),
        (struct.pack("<IIQ", 1, 0, 1), r"1 pages need 4096 octets of data, the record has 0"),
        (struct.pack("<IIQ", 1, 0, 1 | (1 << 60)), r"pfn 1 has page type L1TAB"),
        (struct.pack("<IIQ", 1, 0, 1 | (7 << 60)), r"pfn 1 has page type 0x7"),
        (struct.pack("<IIQ", 1, 0, 1 | (1 << 55)), r"reserved bits set"),
    ],
)
def test_bad_page_data(body: bytes, message: str) -> None:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.static_data_end()
    out.append(_record(RecordType.PAGE_DATA, body))
    w.end()
    with pytest.raises(StreamError, match=message):
        parse(b"".join(out))


def test_order_is_checked() -> None:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.page_data([(0, None)])
    with pytest.raises(StreamError, match=r"PAGE_DATA at octet \d+ comes before STATIC_DATA_END"):
        parse(b"".join(out))
    out = []
    w = StreamWriter(out.append)
    w.static_data_end()
    with pytest.raises(StreamError, match=r"STATIC_DATA_END record at octet 40 comes before DOMAIN_INFO"):
        parse(b"".join(out))
    out = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.end()
    with pytest.raises(StreamError, match=r"END at octet \d+ comes before STATIC_DATA_END"):
        parse(b"".join(out))


def test_bad_headers() -> None:
    good = _stream([])
    with pytest.raises(StreamError, match="marker"):
        parse(b"\0" + good[1:])
    with pytest.raises(StreamError, match="image id"):
        parse(good[:8] + b"XENX" + good[12:])
    with pytest.raises(StreamError, match="version 2 is not supported"):
        parse(good[:12] + struct.pack(">I", 2) + good[16:])
    with pytest.raises(StreamError, match="is not a xenlike PV domain"):
        parse(good[:24] + struct.pack("<I", 1) + good[28:])


def test_oversized_record_is_refused_before_it_is_read() -> None:
    out: list[bytes] = []
    StreamWriter(out.append)
    head = b"".join(out) + struct.pack("<II", RecordType.WORKLOAD_STATE, 0xFFFFFFFF)
    with pytest.raises(StreamError, match=r"4294967295 octets long, over"):
        parse(head)


def test_bad_json_and_xenstore_paths() -> None:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.record(RecordType.DOMAIN_INFO, b"{not json")
    with pytest.raises(StreamError, match=r"DOMAIN_INFO record at octet 40: its body is not JSON"):
        parse(b"".join(out))
    out = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.static_data_end()
    w.xenstore_data([("../../1/secret", "x")])
    with pytest.raises(StreamError, match=r"is not relative to the domain's home"):
        parse(b"".join(out))
    out = []
    w = StreamWriter(out.append)
    w.json_record(RecordType.DOMAIN_INFO, {**_info().to_json(), "vcpus": 5})
    with pytest.raises(StreamError, match=r"vcpus 5 is not within 1..max_vcpus 2"):
        parse(b"".join(out))


def test_workload_state_is_checked() -> None:
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.static_data_end()
    w.record(RecordType.WORKLOAD_STATE, struct.pack("<QQ", 3, 9) + b"short")
    with pytest.raises(StreamError, match=r"says 9 octets of record; 5 follow"):
        parse(b"".join(out))
    out = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.static_data_end()
    w.workload_state(WorkloadState(NR_FRAMES, b"x"))
    with pytest.raises(StreamError, match=r"names frame 64, beyond the domain's memory"):
        parse(b"".join(out))


def test_nonzero_padding_is_refused() -> None:
    data = bytearray(_stream([]))
    # The DOMAIN_INFO body starts at 48; its padding is the last octets before the next record.
    (length,) = struct.unpack_from("<I", data, 44)
    if length % 8:
        data[48 + length] = 1
        with pytest.raises(StreamError, match="padding is not zero"):
            parse(bytes(data))


def test_a_record_nested_past_the_interpreter_s_depth_is_a_stream_error_naming_it():
    """A hostile image or sender: JSON 100,000 deep raised RecursionError, which no caller expected."""
    record = ms.Record(ms.RecordType.DOMAIN_INFO, 40, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ms.StreamError, match="DOMAIN_INFO record at octet 40: its body is not JSON"):
        record.json()


def test_restore_opens_only_a_regular_file_and_never_waits_for_one(tmp_path):
    """A FIFO with no writer would have stopped dom0's loop in open()."""
    import os

    from dom0.toolstack.ops_migrate import _regular_file_opener

    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        open(fifo, "rb", opener=_regular_file_opener)
    image = tmp_path / "image.save"
    image.write_bytes(b"xl")
    with open(image, "rb", opener=_regular_file_opener) as f:
        assert f.read() == b"xl"


def test_many_unknown_optional_records_are_listed_once_each():
    """A stream of a million small unknown records must not become a list (and a reply) of a million types."""
    out: list[bytes] = []
    w = StreamWriter(out.append)
    w.domain_info(_info())
    w.static_data_end()
    out.extend(_record(0x80000000 | (i % 3) << 8, b"") for i in range(30_000))
    w.end()
    stream = io.BytesIO(b"".join(out))
    reader = ms.StreamReader(stream.read)
    assert len(list(reader)) == 3
    assert reader.skipped == [0x80000000, 0x80000100, 0x80000200]
