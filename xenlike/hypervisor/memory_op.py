"""A guest's reservation of the host's frames (Xen's ``common/memory.c``, ``do_memory_op``): ballooning.

A balloon driver gives frames back with ``decrease_reservation`` (the
hypervisor frees their memory in the domain's memfd and credits the host's
pool) and takes them again with ``populate_physmap`` (the pool is debited, up to
the domain's maximum). A frame may be given back only if it is the guest's own
(not the builder's start info, rings or grant table) and no other domain maps
it. dom0 sets the maximum with ``domctl max_mem`` (``xl mem-max``).

The frames stay in the guest's address space (xenlike has no p2m to take them
out of): a guest that touches a frame it gave back gets a zero page and counts
against its cgroup's memory limit, not the pool.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain, OutOfMemory
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.public.start_info import reserved_frames
from xenlike.public.xen import PAGE_SIZE

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["decrease_reservation", "populate_physmap", "max_mem", "MAX_EXTENTS"]

log = logging.getLogger("xenlike.hypervisor")

MAX_EXTENTS = 65536  # frames one call may name


def _pfns(caller: Domain, args: dict) -> list[int]:
    pfns = args.get("pfns")
    if not isinstance(pfns, list) or not 0 < len(pfns) <= MAX_EXTENTS or not all(type(p) is int for p in pfns):
        raise Refused(errno.EINVAL, f"{caller.label}: pfns is a list of 1..{MAX_EXTENTS} frame numbers")
    if len(set(pfns)) != len(pfns):
        raise Refused(errno.EINVAL, f"{caller.label}: a frame is named twice")
    first = reserved_frames(caller.gnttab_frames)
    bad = next((p for p in pfns if not first <= p < caller.nr_frames), None)
    if bad is not None:
        raise Refused(
            errno.EINVAL, f"{caller.label}: frame {bad} is not one of its own (frames {first}..{caller.nr_frames - 1})"
        )
    return pfns


def decrease_reservation(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XENMEM_decrease_reservation: ``pfns`` go back to the host."""
    pfns = _pfns(caller, args)
    given = next((p for p in pfns if p in caller.ballooned), None)
    if given is not None:
        raise Refused(errno.EINVAL, f"{caller.label}: frame {given} was given back already")
    mapped = {m.frame for _, m in hv.grants.mappings_of_granter(caller.domid)}
    busy = next((p for p in pfns if p in mapped), None)
    if busy is not None:
        raise Refused(errno.EBUSY, f"{caller.label}: frame {busy} is mapped by another domain")
    caller.memory.release_frames(pfns)
    caller.ballooned.update(pfns)
    hv.pool.release(len(pfns))
    log.info("%s: gave back %d frames (%d MiB now)", caller.label, len(pfns), caller.tot_frames * PAGE_SIZE >> 20)
    return {"nr_done": len(pfns)}, []


def populate_physmap(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XENMEM_populate_physmap: frames given back earlier are the guest's again, if the pool and its maximum allow."""
    pfns = _pfns(caller, args)
    missing = next((p for p in pfns if p not in caller.ballooned), None)
    if missing is not None:
        raise Refused(errno.EINVAL, f"{caller.label}: frame {missing} was not given back")
    if caller.tot_frames + len(pfns) > caller.max_frames:
        raise Refused(
            errno.ENOMEM,
            f"{caller.label}: {len(pfns)} more frames would pass its maximum of "
            f"{caller.max_frames * PAGE_SIZE >> 20} MiB",
        )
    try:
        hv.pool.reserve(len(pfns), caller.label)
    except OutOfMemory as exc:
        raise Refused(errno.ENOMEM, str(exc)) from None
    caller.ballooned.difference_update(pfns)
    log.info("%s: took %d frames again (%d MiB now)", caller.label, len(pfns), caller.tot_frames * PAGE_SIZE >> 20)
    return {"nr_done": len(pfns)}, []


def max_mem(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_max_mem: a domU's maximum, in KiB; not below what it holds now nor above its memory's size."""
    domain = hv.domain(args["domid"])
    frames = int(args["max_kb"]) * 1024 // PAGE_SIZE
    if frames < domain.tot_frames:
        raise Refused(
            errno.EINVAL,
            f"{domain.label} holds {domain.tot_frames * PAGE_SIZE >> 20} MiB; its maximum cannot be less "
            "(`xenlike mem-set` it lower first)",
        )
    if frames > domain.nr_frames:
        raise Refused(
            errno.EINVAL,
            f"{domain.label}'s memory is {domain.nr_frames * PAGE_SIZE >> 20} MiB; xenlike cannot grow a domain "
            "past the memory it was built with",
        )
    domain.max_frames = frames
    return {"max_kb": frames * PAGE_SIZE // 1024}, []
