"""The start info page and the fixed layout of a new domain's first frames.

Xen hands a PV guest ``struct start_info`` (``xen/include/public/xen.h``): its page
count, where its xenstore and console rings are and which event channels serve
them, and its command line. The domain builder in dom0 writes it into the
guest's memory before the guest runs. xenlike's builder does the same, at frame 0,
with this layout (little-endian)::

    offset  field
    0       char magic[16]          "xenlike-1-x86_64"
    16      uint32 nr_pages
    20      uint32 domid
    24      uint32 store_pfn        (Xen: store_mfn)
    28      uint32 store_evtchn
    32      uint32 console_pfn      (Xen: console.domU.mfn)
    36      uint32 console_evtchn
    40      uint32 gnttab_pfn       first frame of the grant table
    44      uint32 gnttab_frames
    48      uint32 first_free_pfn   the guest's allocator starts here
    52      uint32 image_len
    64      uint8  image[]          msgpack: name, uuid, workload, workload_args, extra, vcpus

The "image" plays the part of the kernel image and command line: what the guest
runs. Frames are laid out as: 0 start info, 1 console ring, 2 xenstore ring,
3.. grant table, then free memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "START_INFO_MAGIC",
    "START_INFO_PFN",
    "CONSOLE_PFN",
    "STORE_PFN",
    "GNTTAB_PFN",
    "StartInfo",
    "reserved_frames",
]

START_INFO_MAGIC = b"xenlike-1-x86_64"
START_INFO_PFN = 0
CONSOLE_PFN = 1
STORE_PFN = 2
GNTTAB_PFN = 3

_HEADER = struct.Struct("<16s10I")
_IMAGE_OFFSET = 64
MAX_IMAGE = PAGE_SIZE - _IMAGE_OFFSET


def reserved_frames(gnttab_frames: int) -> int:
    """Frames the builder keeps below the guest's free memory."""
    return GNTTAB_PFN + gnttab_frames


@dataclass
class StartInfo:
    """``struct start_info`` as xenlike lays it out (see the module docstring)."""

    nr_pages: int
    domid: int
    store_evtchn: int
    console_evtchn: int
    gnttab_frames: int
    image: dict[str, Any] = field(default_factory=dict)
    store_pfn: int = STORE_PFN
    console_pfn: int = CONSOLE_PFN
    gnttab_pfn: int = GNTTAB_PFN

    @property
    def first_free_pfn(self) -> int:
        return self.gnttab_pfn + self.gnttab_frames

    def write(self, page: memoryview) -> None:
        """Fill a start-info page (the builder's side)."""
        image = msgpack.packb(self.image, use_bin_type=True)
        if len(image) > MAX_IMAGE:
            raise ValueError(f"the domain image ({len(image)} bytes) exceeds the {MAX_IMAGE} a start-info page holds")
        page[: _HEADER.size] = _HEADER.pack(
            START_INFO_MAGIC,
            self.nr_pages,
            self.domid,
            self.store_pfn,
            self.store_evtchn,
            self.console_pfn,
            self.console_evtchn,
            self.gnttab_pfn,
            self.gnttab_frames,
            self.first_free_pfn,
            len(image),
        )
        page[_IMAGE_OFFSET : _IMAGE_OFFSET + len(image)] = image

    @classmethod
    def read(cls, page: memoryview) -> StartInfo:
        """Decode a start-info page (the guest's side); ValueError if it is not one."""
        (
            magic,
            nr_pages,
            domid,
            store_pfn,
            store_evtchn,
            console_pfn,
            console_evtchn,
            gnttab_pfn,
            gnttab_frames,
            _first_free,
            image_len,
        ) = _HEADER.unpack_from(page)
        if magic != START_INFO_MAGIC:
            raise ValueError(f"frame 0 holds no start info (magic {magic!r})")
        if image_len > MAX_IMAGE:
            raise ValueError(f"start info claims a {image_len}-byte image")
        image = msgpack.unpackb(bytes(page[_IMAGE_OFFSET : _IMAGE_OFFSET + image_len]), raw=False)
        return cls(
            nr_pages=nr_pages,
            domid=domid,
            store_evtchn=store_evtchn,
            console_evtchn=console_evtchn,
            gnttab_frames=gnttab_frames,
            image=image,
            store_pfn=store_pfn,
            console_pfn=console_pfn,
            gnttab_pfn=gnttab_pfn,
        )
