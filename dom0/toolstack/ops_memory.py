"""Memory operations: ``xl mem-set`` and ``xl mem-max`` (``tools/xl/xl_mem.c``; libxl's
``libxl_set_memory_target`` and ``libxl_domain_setmaxmem``).

``mem-set`` writes the balloon's target (``memory/target``, KiB); the guest's
balloon driver follows it and the hypervisor's pool with it. ``mem-max`` sets the
most the domain may hold (``domctl max_mem``, ``memory/static-max``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenlike.public.start_info import reserved_frames
from xenlike.public.xen import PAGE_SIZE
from xenlike.public.xs_wire import home_path

from .ops_migrate import first_free_pfn
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from .server import Toolstack

__all__ = ["mem_set", "mem_max", "MIN_FREE_KB"]

MIN_FREE_KB = 2048  # what a guest keeps beyond its builder's frames, whatever the target


def _kb(request: Request) -> int:
    kb = request.args.get("kb")
    if type(kb) is not int or kb <= 0:
        raise ToolstackError(f"a memory size in KiB is a positive number, not {kb!r}")
    return kb


def mem_set(ts: Toolstack, request: Request) -> Any:
    """The balloon's target: at least the builder's frames and MIN_FREE_KB, at most the domain's maximum."""
    built = ts.lifecycle.find(request.args["domain"])
    kb = _kb(request)
    info = ts.hypercall("domctl", cmd="getdomaininfo", domid=built.domid)[0][0]
    least = first_free_pfn(built.config) * PAGE_SIZE // 1024 + MIN_FREE_KB
    most = min(info["maxmem_kb"], built.memory.nr_frames * PAGE_SIZE // 1024)
    if kb > most:
        raise ToolstackError(
            f"{built.name}: {kb} KiB is above its maximum of {most} KiB (xenlike cannot grow a domain past the "
            "memory it was built with; `xenlike mem-max` sets a lower maximum)"
        )
    if kb < least:
        raise ToolstackError(f"{built.name}: {kb} KiB is too little; it needs at least {least} KiB")
    ts.xs.write(f"{home_path(built.domid)}/memory/target", str(kb))
    return {"target_kb": kb}


def mem_max(ts: Toolstack, request: Request) -> Any:
    """The most the domain may hold (not below what it holds now)."""
    built = ts.lifecycle.find(request.args["domain"])
    kb = _kb(request)
    if kb < reserved_frames(0) * PAGE_SIZE // 1024:
        raise ToolstackError(f"{built.name}: {kb} KiB is too little for any domain")
    result = ts.hypercall("domctl", cmd="max_mem", domid=built.domid, max_kb=kb)[0]
    ts.xs.write(f"{home_path(built.domid)}/memory/static-max", str(result["max_kb"]))
    built.config["maxmem"] = result["max_kb"] // 1024
    return result
