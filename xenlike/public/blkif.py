"""The block-device protocol (``xen/include/public/io/blkif.h``): one definition for both ends.

Requests and responses share a 112-byte ring slot (``union blkif_sring_entry``);
a one-page ring holds 32 of them. A request names up to 11 segments, each a grant
reference and an inclusive range of 512-byte sectors (0..7) inside that 4 KiB
page; ``BLKIF_OP_INDIRECT`` names up to 8 granted pages that hold the segments
instead (512 a page). ``sector_number`` is always in 512-byte units.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from xenlike.public.ring import RingProtocol
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "BLKIF_OP_READ",
    "BLKIF_OP_WRITE",
    "BLKIF_OP_WRITE_BARRIER",
    "BLKIF_OP_FLUSH_DISKCACHE",
    "BLKIF_OP_DISCARD",
    "BLKIF_OP_INDIRECT",
    "BLKIF_RSP_OKAY",
    "BLKIF_RSP_ERROR",
    "BLKIF_RSP_EOPNOTSUPP",
    "BLKIF_MAX_SEGMENTS_PER_REQUEST",
    "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST",
    "SEGS_PER_INDIRECT_FRAME",
    "SECTOR_SIZE",
    "SECTORS_PER_PAGE",
    "SEGMENT_SIZE",
    "SEGMENT_FIRST_SECT",
    "SEGMENT_LAST_SECT",
    "VDISK_CDROM",
    "VDISK_REMOVABLE",
    "VDISK_READONLY",
    "BLKIF_DISCARD_SECURE",
    "BLKIF_PROTOCOL",
    "XEN_IO_PROTO_ABI_NATIVE",
    "DEVICE_TYPE",
    "PARAMS",
    "MODE",
    "DEV",
    "DEVICE_TYPE_KEY",
    "DISCARD_ENABLE",
    "VIRTUAL_DEVICE",
    "SECTORS",
    "SECTOR_SIZE_KEY",
    "PHYSICAL_SECTOR_SIZE",
    "INFO",
    "FEATURE_FLUSH_CACHE",
    "FEATURE_BARRIER",
    "FEATURE_DISCARD",
    "DISCARD_GRANULARITY",
    "DISCARD_ALIGNMENT",
    "DISCARD_SECURE",
    "FEATURE_PERSISTENT",
    "FEATURE_MAX_INDIRECT_SEGMENTS",
    "MAX_RING_PAGE_ORDER_KEY",
    "RING_REF",
    "RING_PAGE_ORDER",
    "EVENT_CHANNEL",
    "PROTOCOL",
    "Segment",
    "SegmentArray",
    "BlkRequest",
    "decode_request",
    "pack_rw",
    "pack_rw_packed",
    "pack_indirect",
    "pack_discard",
    "pack_flush",
    "pack_segments",
    "unpack_segment_array",
    "REQUEST",
    "RESPONSE",
]

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2
BLKIF_OP_FLUSH_DISKCACHE = 3
BLKIF_OP_DISCARD = 5
BLKIF_OP_INDIRECT = 6

BLKIF_RSP_OKAY = 0
BLKIF_RSP_ERROR = -1
BLKIF_RSP_EOPNOTSUPP = -2

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
SEGS_PER_INDIRECT_FRAME = PAGE_SIZE // 8
SECTOR_SIZE = 512
SECTORS_PER_PAGE = PAGE_SIZE // SECTOR_SIZE

VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4
BLKIF_DISCARD_SECURE = 1 << 0

XEN_IO_PROTO_ABI_NATIVE = "x86_64-abi"  # io/protocols.h, the only ABI xenlike speaks

# ---------------------------------------------------------------------------------------
# Feature and parameter negotiation (blkif.h's section of the same name)
#
# Each end publishes nodes in its own device directory (see xenlike.public.xenbus
# for the paths and the state diagram). A missing node means its default.
#
# Written by the toolstack in the back end's directory (libxl_disk.c), read by blkback:
#   params         the image's path                                  (required)
#   mode           "r" or "w"                                        default "w"
#   dev            the virtual device name, e.g. "xvda"              default: the devid
#   device-type    "disk" or "cdrom"                                 default "disk"
#   discard-enable "0" hides feature-discard                         default "1"
# Written by the toolstack in the front end's directory: virtual-device, device-type.
#
# Back end (blkback, at probe, before InitWait):
#   sectors, sector-size, physical-sector-size, info (VDISK_* bits)
#   feature-flush-cache      0/1  default 0   BLKIF_OP_FLUSH_DISKCACHE is served
#   feature-barrier          0/1  default 0   BLKIF_OP_WRITE_BARRIER (never here)
#   feature-discard          0/1  default 0   BLKIF_OP_DISCARD; with discard-granularity,
#                                             discard-alignment, discard-secure
#   feature-persistent       0/1  default 0   the back end keeps grants mapped
#   feature-max-indirect-segments  N  default 0 (no BLKIF_OP_INDIRECT)
#   max-ring-page-order      N    default 0   the front end may use 2**N ring pages
#
# Front end (blkfront, before Initialised):
#   ring-ref                 the grant of a one-page ring         (order 0)
#   ring-page-order, ring-ref0..ring-ref<2**order-1>              (order > 0; note 6)
#   event-channel            the front end's port, unbound, for the back end to bind
#   protocol                 XEN_IO_PROTO_ABI_NATIVE              default: native
#   feature-persistent       0/1  default 0   the front end reuses its granted pages
#
# The back end reads the front end's nodes when the front end is Initialised, maps
# the ring, binds the event channel and goes Connected; the front end then reads
# sectors and info and goes Connected.
# ---------------------------------------------------------------------------------------
DEVICE_TYPE = "vbd"  # the xenbus device type: backend/vbd, device/vbd

# Toolstack → back end
PARAMS, MODE, DEV, DEVICE_TYPE_KEY, DISCARD_ENABLE = "params", "mode", "dev", "device-type", "discard-enable"
VIRTUAL_DEVICE = "virtual-device"
# Back end → front end
SECTORS, SECTOR_SIZE_KEY, PHYSICAL_SECTOR_SIZE, INFO = "sectors", "sector-size", "physical-sector-size", "info"
FEATURE_FLUSH_CACHE, FEATURE_BARRIER, FEATURE_DISCARD = "feature-flush-cache", "feature-barrier", "feature-discard"
DISCARD_GRANULARITY, DISCARD_ALIGNMENT, DISCARD_SECURE = "discard-granularity", "discard-alignment", "discard-secure"
FEATURE_PERSISTENT = "feature-persistent"  # both ends publish it
FEATURE_MAX_INDIRECT_SEGMENTS = "feature-max-indirect-segments"
MAX_RING_PAGE_ORDER_KEY = "max-ring-page-order"
# Front end → back end
RING_REF, RING_PAGE_ORDER, EVENT_CHANNEL, PROTOCOL = "ring-ref", "ring-page-order", "event-channel", "protocol"

_SEGMENT = "IBB2x"
# struct blkif_request (read/write): op, nr_segments, handle, id, sector_number, seg[11]
REQUEST = struct.Struct("<BBH4xQQ" + _SEGMENT * BLKIF_MAX_SEGMENTS_PER_REQUEST)
RW_HEADER = struct.Struct("<BBH4xQQ")  # the fields before seg[] (24 bytes)
# struct blkif_request_discard: op, flag, handle, id, sector_number, nr_sectors
DISCARD = struct.Struct("<BBH4xQQQ")
# struct blkif_request_indirect: op, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs[8]
INDIRECT = struct.Struct("<BBH4xQQH2x8I4x")
# struct blkif_response: id, operation, status
RESPONSE = struct.Struct("<QBxh4x")
SEGMENT = struct.Struct("<" + _SEGMENT)
SEGMENT_SIZE = SEGMENT.size  # sizeof(struct blkif_request_segment)
# offsetof(struct blkif_request_segment, first_sect / last_sect); gref is the u32 at 0.
SEGMENT_FIRST_SECT, SEGMENT_LAST_SECT = 4, 5
HEADER = struct.Struct("<BB")  # op and the byte after it, common to every request

BLKIF_PROTOCOL = RingProtocol("blkif", REQUEST, RESPONSE, entry_size=112)
assert REQUEST.size == 112 and DISCARD.size == 32 and INDIRECT.size == 64 and RESPONSE.size == 16


class Segment(NamedTuple):
    """``struct blkif_request_segment``: sectors first_sect..last_sect of granted page gref.

    A tuple, so a whole indirect page of them unpacks at C speed.
    """

    gref: int
    first_sect: int
    last_sect: int

    @property
    def nr_sectors(self) -> int:
        return self.last_sect - self.first_sect + 1


class SegmentArray:
    """``struct blkif_request_segment seg[n]`` decoded column by column, at C speed.

    ``grefs[i]``, ``first_sects[i]`` and ``last_sects[i]`` are segment i's fields,
    so a request of 256 segments decodes and is checked without a Python step per
    segment; iterating gives :class:`Segment` tuples.
    """

    __slots__ = ("grefs", "first_sects", "last_sects")

    def __init__(self, grefs: list[int], first_sects: bytes, last_sects: bytes) -> None:
        self.grefs = grefs
        self.first_sects = first_sects
        self.last_sects = last_sects

    def __len__(self) -> int:
        return len(self.grefs)

    def __iter__(self) -> Iterator[Segment]:
        return map(Segment, self.grefs, self.first_sects, self.last_sects)

    def __repr__(self) -> str:
        return f"SegmentArray({list(self)!r})"


class BlkRequest(NamedTuple):
    """A request as the back end sees it, decoded from its private copy of the slot.

    A tuple, so decoding one costs no per-field Python work.
    """

    operation: int  # READ, WRITE, FLUSH_DISKCACHE, DISCARD, INDIRECT
    id: int
    sector_number: int = 0
    handle: int = 0
    segments: SegmentArray = SegmentArray([], b"", b"")
    nr_segments: int = 0
    indirect_op: int | None = None
    indirect_grefs: tuple[int, ...] = ()
    nr_sectors: int = 0  # DISCARD
    discard_flags: int = 0


def decode_request(slot: bytes) -> BlkRequest:
    """Decode one 112-byte slot by its op (the layouts differ per op)."""
    op, second = HEADER.unpack_from(slot)
    if op == BLKIF_OP_INDIRECT:
        _, indirect_op, nr_segments, req_id, sector, handle, *grefs = INDIRECT.unpack_from(slot)
        return BlkRequest(
            op, req_id, sector, handle, nr_segments=nr_segments, indirect_op=indirect_op, indirect_grefs=tuple(grefs)
        )
    if op == BLKIF_OP_DISCARD:
        _, flags, handle, req_id, sector, nr_sectors = DISCARD.unpack_from(slot)
        return BlkRequest(op, req_id, sector, handle, nr_sectors=nr_sectors, discard_flags=flags)
    _, nr_segments, handle, req_id, sector = RW_HEADER.unpack_from(slot)
    count = min(nr_segments, BLKIF_MAX_SEGMENTS_PER_REQUEST)
    segments = unpack_segment_array(memoryview(slot)[RW_HEADER.size :], count)
    return BlkRequest(op, req_id, sector, handle, segments, nr_segments)


def _segment_fields(segments: list[Segment] | tuple[Segment, ...]) -> list[int]:
    fields: list[int] = []
    for seg in segments:
        fields += (seg.gref, seg.first_sect, seg.last_sect)
    fields += [0] * (3 * (BLKIF_MAX_SEGMENTS_PER_REQUEST - len(segments)))
    return fields


def pack_rw(op: int, req_id: int, sector: int, segments: list[Segment], handle: int = 0) -> bytes:
    """A READ or WRITE slot with at most 11 direct segments."""
    return REQUEST.pack(op, len(segments), handle, req_id, sector, *_segment_fields(segments))


def pack_rw_packed(
    op: int, req_id: int, sector: int, nr_segments: int, segments: bytes | memoryview, handle: int = 0
) -> bytes:
    """A READ or WRITE slot from ``nr_segments`` (at most 11) segments laid out as :func:`pack_segments` does."""
    if nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST or len(segments) != nr_segments * SEGMENT_SIZE:
        raise ValueError(f"{nr_segments} direct segments in {len(segments)} bytes")
    return RW_HEADER.pack(op, nr_segments, handle, req_id, sector) + bytes(segments).ljust(
        REQUEST.size - RW_HEADER.size, b"\0"
    )


def pack_indirect(
    indirect_op: int, req_id: int, sector: int, nr_segments: int, grefs: list[int], handle: int = 0
) -> bytes:
    """An INDIRECT slot: the segments live in the granted pages ``grefs``."""
    padded = list(grefs) + [0] * (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST - len(grefs))
    return INDIRECT.pack(BLKIF_OP_INDIRECT, indirect_op, nr_segments, req_id, sector, handle, *padded).ljust(112, b"\0")


def pack_discard(req_id: int, sector: int, nr_sectors: int, flags: int = 0, handle: int = 0) -> bytes:
    return DISCARD.pack(BLKIF_OP_DISCARD, flags, handle, req_id, sector, nr_sectors).ljust(112, b"\0")


def pack_flush(req_id: int, handle: int = 0) -> bytes:
    return REQUEST.pack(BLKIF_OP_FLUSH_DISKCACHE, 0, handle, req_id, 0, *_segment_fields([]))


def pack_segments(segments: list[Segment]) -> bytes:
    """The contents of indirect pages: 8-byte segments back to back."""
    return b"".join(SEGMENT.pack(s.gref, s.first_sect, s.last_sect) for s in segments)


def unpack_segment_array(data: bytes | memoryview, count: int) -> SegmentArray:
    """``count`` segments laid out back to back (an indirect page, a slot's ``seg[]``), copied out once."""
    raw = bytes(data[: count * SEGMENT_SIZE])
    if len(raw) != count * SEGMENT_SIZE:
        raise ValueError(f"{len(raw)} bytes hold fewer than {count} segments")
    grefs = memoryview(raw).cast("I")[:: SEGMENT_SIZE // 4].tolist()
    return SegmentArray(grefs, raw[SEGMENT_FIRST_SECT::SEGMENT_SIZE], raw[SEGMENT_LAST_SECT::SEGMENT_SIZE])
