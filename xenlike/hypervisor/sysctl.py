"""The host's privileged queries (``xen/common/sysctl.c``): physinfo, the scheduler's settings, the console ring."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain, mib_to_frames
from xenlike.hypervisor.hypercall import Result
from xenlike.hypervisor.version import version_info
from xenlike.kernel import ksm
from xenlike.public.xen import PAGE_SIZE

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["physinfo", "sharing_info", "sched_info", "readconsole"]


def physinfo(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_SYSCTL_physinfo: the host's frames, pCPUs and version, and what it holds for its domains.

    The machine's figures are as Xen's ``arch_do_physinfo`` gives them, from what
    the hypervisor read at start (``xenlike.kernel.machine``): ``cpu_khz``,
    ``threads_per_core`` and ``cores_per_socket`` (of the first CPU),
    ``nr_nodes``, and ``machine_kb``, the machine's memory, beside the pool's frames.
    ``sharing_freed_frames`` and ``sharing_used_frames`` are Xen's
    ``sharing_freed_pages`` and ``sharing_used_frames``: with ``--page-sharing``,
    ksmd's ``pages_sharing`` and ``pages_shared``, which count every process on
    the machine that uses KSM; 0 without.
    """
    machine = hv.machine
    sharing = ksm.counters() if hv.page_sharing else None
    return {
        "total_frames": hv.pool.total,
        "free_frames": hv.pool.free,
        "page_sharing": hv.page_sharing,
        "sharing_freed_frames": sharing.pages_sharing if sharing is not None else 0,
        "sharing_used_frames": sharing.pages_shared if sharing is not None else 0,
        "nr_cpus": os.cpu_count(),
        "nr_nodes": machine.nr_nodes,
        "cores_per_socket": machine.cores_per_socket,
        "threads_per_core": machine.threads_per_core,
        "cpu_khz": machine.cpu_khz,
        "machine_kb": machine.memory_kib,
        "pcpus": hv.pcpus,
        "version": version_info(hv),
        "started": hv.started,
        "grant_mappings": hv.grants.mapping_count(),
        "evtchn_ports": hv.evtchn.open_fds(),
        "sched": hv.scheduler.name,
        "jail": hv.jail,
        "max_new_domains": max_new_domains(hv),
    }, []


def sharing_info(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """What ``xl sharing`` lists of every domain (``libxl_dominfo``'s ``current_memkb`` and ``shared_memkb``), by domid.

    A domain's shared memory is the pages of its vCPU 0 process (its kernel and
    workload) that ksmd maps to a frame shared with another process
    (``ksm_merging_pages``); always 0 without ``--page-sharing``, and for dom0.
    One ``/proc`` read a domain, so it is its own call and not part of ``list``.
    """
    kib_per_frame = PAGE_SIZE // 1024
    rows = []
    for domain in sorted(hv.domains.values(), key=lambda d: d.domid):
        shared = ksm.merging_pages(domain.pid) if hv.page_sharing and domain.pid is not None else 0
        rows.append(
            {
                "domid": domain.domid,
                "name": domain.name,
                "memory_kb": domain.tot_frames * kib_per_frame,
                "shared_kb": shared * kib_per_frame,
            }
        )
    return rows, []


def max_new_domains(hv: Hypervisor) -> dict:
    """How many more domUs fit, and which limit says so: free memory (per smallest guest) or the hypervisor's fds.

    dom0 adds its own fd headroom to this before it answers ``info``.
    """
    from xenlike.hypervisor.core import SMALLEST_GUEST_MIB

    by_memory = hv.pool.free // mib_to_frames(SMALLEST_GUEST_MIB)
    by_fds = hv.fd_budget.headroom()
    if by_fds < by_memory:
        return {"count": by_fds, "limit": "hypervisor fds (RLIMIT_NOFILE)", "guest_mib": SMALLEST_GUEST_MIB}
    return {
        "count": by_memory,
        "limit": f"free memory ({SMALLEST_GUEST_MIB} MiB guests)",
        "guest_mib": SMALLEST_GUEST_MIB,
    }


def sched_info(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_SYSCTL_scheduler_op: the pool's scheduler and its parameters."""
    return hv.scheduler.settings(), []


def readconsole(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_SYSCTL_readconsole: the console ring (``xl dmesg``), emptied when ``clear``."""
    return {"lines": hv.console.read(bool(args.get("clear")))}, []
