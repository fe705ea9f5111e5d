"""Suspending a PV guest: the xenstore contract and the record the guest kernel leaves in its memory.

The toolstack asks as libxl does (``libxl__domain_suspend_device_model`` aside,
``libxl_dom_suspend.c``): it writes ``control/shutdown = suspend``; the guest
acknowledges by clearing the node, quiesces its front ends, has its workload save
what it keeps outside guest memory, writes a :class:`SuspendRecord` into frames
of its own memory and calls ``SCHEDOP_shutdown(SHUTDOWN_suspend)`` naming them
(``record = [pfn, length]``), as a Linux PV guest names its start info frame in
that call. The hypervisor stops the domain there; ``getdomaininfo`` shows the
record's place. Then either:

* the toolstack destroys it (saved or migrated) and a new domain is built from
  the image, its start info's image carrying ``resume = [pfn, length]``: the new
  kernel reads the record, takes back the frames its workload held and calls the
  workload's ``resume`` before the workload runs again (``ctx.resumed``);
* or the suspend is cancelled (``xl save -c``, a migration that failed):
  ``resumedomain`` lets it run on where it was; its ``SCHEDOP_shutdown`` returns
  ``{"cancelled": 1}``, as Xen's returns 1, front ends resume and so does the workload.

A guest that cannot be suspended writes why to :data:`SUSPEND_ERROR` (under
``~/workload``, which the guest owns) and runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "SHUTDOWN_NODE",
    "SUSPEND",
    "FEATURE_SUSPEND",
    "SUSPEND_ERROR",
    "MAX_RECORD",
    "SuspendRecord",
    "SuspendRecordError",
    "check_place",
]

SHUTDOWN_NODE = "control/shutdown"
SUSPEND = "suspend"  # the value of SHUTDOWN_NODE that asks for a suspend
FEATURE_SUSPEND = "control/feature-suspend"  # "1": the guest answers it (xenstore-paths.pandoc)
SUSPEND_ERROR = "workload/suspend-error"  # the guest's one-line refusal

# The largest record a guest may leave (its workload's blob included): 1 MiB.
MAX_RECORD = 256 * PAGE_SIZE


class SuspendRecordError(ValueError):
    """A record, or its place, that a restore cannot use; the message says what is wrong."""


@dataclass
class SuspendRecord:
    """What the guest kernel carries across a save: its workload's frames and blob.

    ``runs`` are the ``(first pfn, count)`` runs of its page allocator that no
    device held (a device's rings and buffers are set up again on resume);
    ``workload`` is what the workload's ``suspend`` hook returned.
    """

    runs: list[tuple[int, int]] = field(default_factory=list)
    workload: bytes = b""

    def pack(self) -> bytes:
        data = msgpack.packb({"runs": [list(r) for r in self.runs], "workload": self.workload}, use_bin_type=True)
        if len(data) > MAX_RECORD:
            raise SuspendRecordError(f"the suspend record is {len(data)} bytes, over the {MAX_RECORD} allowed")
        return bytes(data)

    @classmethod
    def unpack(cls, data: bytes, first_pfn: int, nr_frames: int) -> SuspendRecord:
        """Parse and check a record: every run inside the guest's free memory ``[first_pfn, nr_frames)``."""
        try:
            value = msgpack.unpackb(data, raw=False)
            runs = [(int(start), int(count)) for start, count in value["runs"]]
            workload = value["workload"]
        except Exception as exc:
            raise SuspendRecordError(f"the suspend record cannot be read: {exc}") from None
        if not isinstance(workload, bytes):
            raise SuspendRecordError("the suspend record's workload state is not bytes")
        for start, count in runs:
            if count <= 0 or start < first_pfn or start + count > nr_frames:
                raise SuspendRecordError(
                    f"the suspend record names frames {start}..{start + count - 1}, outside [{first_pfn}, {nr_frames})"
                )
        return cls(runs, workload)


def check_place(place: object, first_pfn: int, nr_frames: int) -> tuple[int, int]:
    """A record's ``[pfn, length]`` as (pfn, length), inside ``[first_pfn, nr_frames)`` and at most MAX_RECORD."""
    if not (isinstance(place, (list, tuple)) and len(place) == 2 and all(type(v) is int for v in place)):
        raise SuspendRecordError(f"the suspend record's place {place!r} is not [pfn, length]")
    pfn, length = place
    if not 0 < length <= MAX_RECORD:
        raise SuspendRecordError(f"a suspend record of {length} bytes is not within 1..{MAX_RECORD}")
    last = pfn + (length - 1) // PAGE_SIZE
    if pfn < first_pfn or last >= nr_frames:
        raise SuspendRecordError(f"the suspend record at frames {pfn}..{last} is outside [{first_pfn}, {nr_frames})")
    return pfn, length
