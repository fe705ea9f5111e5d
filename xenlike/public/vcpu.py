"""vCPU hotplug: ``vcpu.h``'s ``VCPUOP_up``/``VCPUOP_down`` and the ``cpu/N/availability`` nodes.

A domain has ``maxvcpus`` vCPUs; the toolstack says which are online in the
domain's home, one node per vCPU (``docs/misc/xenstore-paths.pandoc``,
``~/cpu/[0-9]+/availability = ("online"|"offline")``), as libxl's
``libxl__set_vcpuonline_xenstore`` writes them at build and for ``xl vcpu-set``.
The guest kernel watches ``cpu`` (Linux's ``drivers/xen/cpu_hotplug.c``) and
brings each vCPU up (``VCPUOP_up``) or takes it down (``VCPUOP_down``) to match.
The nodes are dom0's; the guest only reads them.
"""

from __future__ import annotations

__all__ = ["CPU_DIR", "OFFLINE", "ONLINE", "availability_path", "parse_availability"]

CPU_DIR = "cpu"  # relative to the domain's home: what the guest watches
ONLINE = "online"
OFFLINE = "offline"


def availability_path(vcpu: int) -> str:
    """``cpu/<vcpu>/availability``, relative to the domain's home."""
    return f"{CPU_DIR}/{vcpu}/availability"


def parse_availability(value: str | None) -> bool | None:
    """True for ``online``, False for ``offline``, None for anything else (as cpu_hotplug.c ignores it)."""
    if value == ONLINE:
        return True
    if value == OFFLINE:
        return False
    return None
