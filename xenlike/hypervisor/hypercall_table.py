"""Every hypercall a domain can make, and who may make it (Xen's ``xen/include/hypercall-defs.c``).

This table is the list: the dispatcher (``core.py``) finds each call's row here,
refuses a ``privileged`` call to every domain but dom0 and a ``target`` call
that names another domain's ``dom`` unless the caller is dom0, and lets a
multicall hold only calls marked ``in_multicall``. Rules that depend on more than
the caller stay with their call and are said in its line: the VIRQs that are
dom0's, a guest's own vCPU processes, grant maps whose frames go to dom0 alone.

A new hypercall is a handler in the module of its family and a row here.
"""

from __future__ import annotations

from xenlike.hypervisor import (
    console,
    domctl,
    event_channel,
    gntalloc,
    grant_table,
    keyhandler,
    logdirty,
    memory_op,
    multicall,
    netif,
    sched_op,
    sysctl,
    vdisk,
    version,
)
from xenlike.hypervisor.hypercall import Hypercall

__all__ = ["HYPERCALLS"]

# One row a call, its description under it: kept as a table, not as the formatter would lay it out.
# fmt: off
HYPERCALLS: tuple[Hypercall, ...] = (
    # Event channels (event_channel.py)
    Hypercall("evtchn_alloc_unbound", event_channel.evtchn_alloc_unbound, target=True,
              doc="EVTCHNOP_alloc_unbound: a port of dom that remote_dom may bind"),
    Hypercall("evtchn_bind_interdomain", event_channel.evtchn_bind_interdomain,
              doc="EVTCHNOP_bind_interdomain: a new port bound to remote_dom's unbound remote_port"),
    Hypercall("evtchn_bind_virq", event_channel.evtchn_bind_virq,
              doc="EVTCHNOP_bind_virq: a port raised for a VIRQ (VIRQ_DOM_EXC is dom0's)"),
    Hypercall("evtchn_close", event_channel.evtchn_close, target=True,
              doc="EVTCHNOP_close: free a port; its interdomain peer goes back to unbound"),
    Hypercall("evtchn_status", event_channel.evtchn_status, target=True,
              doc="EVTCHNOP_status: a port's state, peer and VIRQ"),
    # Grant tables (grant_table.py)
    Hypercall("grant_map", grant_table.grant_map,
              doc="GNTTABOP_map_grant_ref, batched: checked for every domain, the frames given to dom0 alone"),
    Hypercall("grant_unmap", grant_table.grant_unmap,
              doc="GNTTABOP_unmap_grant_ref, batched"),
    Hypercall("grant_copy", grant_table.grant_copy,
              doc="GNTTABOP_copy: copies within one page each, checked against the grants"),
    # Pages a domU allocates to share with one other domU (gntalloc.py)
    Hypercall("gntalloc_alloc", gntalloc.gntalloc_alloc,
              doc="count pages for domid in a sealed memfd of their own; the fd and their first frame"),
    Hypercall("gntalloc_free", gntalloc.gntalloc_free,
              doc="drop the allocation starting at frame; its peer's mappings stay valid"),
    Hypercall("gntalloc_unmap_notify", gntalloc.gntalloc_unmap_notify,
              doc="clear a byte of an allocated page and signal a port when the caller lets go of it"),
    # A guest's own vCPUs, its console, the version (sched_op.py, console.py, version.py)
    Hypercall("sched_shutdown", sched_op.sched_shutdown, in_multicall=False,
              doc="SCHEDOP_shutdown: the guest is done, for a reason; answered before it is killed "
                  "(suspend: stopped, answered when resumed)"),
    Hypercall("vcpu_op", sched_op.vcpu_op,
              doc="VCPUOP_up: a child process of the guest's vCPU 0 becomes a secondary vCPU; "
                  "VCPUOP_down: the scheduler takes one away"),
    Hypercall("console_io", console.console_io,
              doc="HYPERVISOR_console_io write: text for the hypervisor's log (xl dmesg)"),
    Hypercall("xen_version", version.xen_version,
              doc="version and capabilities"),
    # A guest's network devices (netif.py)
    Hypercall("netif_tap", netif.netif_tap,
              doc="the guest's own vif devid: an fd of its eth<devid>, made as dom0 plugged it"),
    Hypercall("domctl", netif.netif_plug, cmd="netif_plug", privileged=True,
              doc="domain dom has vif devid, with this MAC, MTU, address and gateway"),
    Hypercall("domctl", netif.netif_unplug, cmd="netif_unplug", privileged=True,
              doc="vif devid of domain dom goes; its device is deleted"),
    # Domain management (domctl.py)
    Hypercall("domctl", domctl.createdomain, cmd="createdomain", privileged=True,
              doc="reserve a domain's memory and scheduler entry; returns its domid and memfd"),
    Hypercall("domctl", domctl.startdomain, cmd="startdomain", privileged=True,
              doc="fork the domain's vCPU 0 with its boot message, paused if asked"),
    Hypercall("domctl", domctl.destroydomain, cmd="destroydomain", privileged=True,
              doc="kill a domU; answered once it is reaped and freed"),
    Hypercall("decrease_reservation", memory_op.decrease_reservation,
              doc="XENMEM_decrease_reservation: a balloon gives frames back; the pool is credited"),
    Hypercall("populate_physmap", memory_op.populate_physmap,
              doc="XENMEM_populate_physmap: frames given back are the guest's again, within its maximum"),
    Hypercall("domctl", memory_op.max_mem, cmd="max_mem", privileged=True,
              doc="XEN_DOMCTL_max_mem: a domU's maximum memory"),
    Hypercall("domctl", logdirty.shadow_op, cmd="shadow_op", privileged=True,
              doc="XEN_DOMCTL_shadow_op: log-dirty mode on, its status, clean (the frames written since), off"),
    Hypercall("logdirty_register", logdirty.logdirty_register, in_multicall=False,
              doc="a guest in log-dirty mode hands over the userfaultfd of its vCPU 0 process"),
    Hypercall("domctl", domctl.resumedomain, cmd="resumedomain", privileged=True,
              doc="a suspended domU runs on where it stopped; its SCHEDOP_shutdown(suspend) returns cancelled"),
    Hypercall("domctl", domctl.pausedomain, cmd="pausedomain", privileged=True,
              doc="stop a running domU's processes"),
    Hypercall("domctl", domctl.unpausedomain, cmd="unpausedomain", privileged=True,
              doc="hand a paused domU back to the scheduler"),
    Hypercall("domctl", domctl.getdomaininfo, cmd="getdomaininfo", privileged=True,
              doc="one domain's info, or every domain's"),
    Hypercall("sysctl", domctl.getdomaininfolist, cmd="getdomaininfolist", privileged=True,
              doc="XEN_SYSCTL_getdomaininfolist: xl list's fields of every domain, as columns"),
    Hypercall("domctl", domctl.get_changed_domains, cmd="get_changed_domains", privileged=True,
              doc="the domains whose state changed since VIRQ_DOM_EXC was last raised"),
    Hypercall("domctl", domctl.rename, cmd="rename", privileged=True,
              doc="a domain's new name"),
    Hypercall("domctl", domctl.getmemory, cmd="getmemory", privileged=True,
              doc="a domain's memfd, for dom0 to map"),
    Hypercall("domctl", domctl.open_channel, cmd="open_channel", privileged=True,
              doc="a hypercall socket for a back-end worker; what it leaves mapped is unmapped when it closes"),
    Hypercall("domctl", domctl.close_channel, cmd="close_channel", privileged=True,
              doc="close a back-end worker's socket now"),
    Hypercall("domctl", domctl.host_shutdown, cmd="host_shutdown", privileged=True,
              doc="stop the host"),
    Hypercall("domctl", domctl.sched_credit_get, cmd="sched_credit_get", privileged=True,
              doc="XEN_DOMCTL_scheduler_op get: weight and cap"),
    Hypercall("domctl", domctl.sched_credit_set, cmd="sched_credit_set", privileged=True,
              doc="XEN_DOMCTL_scheduler_op put: weight and/or cap"),
    Hypercall("domctl", domctl.vcpu_list, cmd="vcpu_list", privileged=True,
              doc="XEN_DOMCTL_getvcpuinfo of one domain's vCPUs, or every domain's"),
    Hypercall("domctl", domctl.vcpu_pin, cmd="vcpu_pin", privileged=True,
              doc="XEN_DOMCTL_setvcpuaffinity: a vCPU's hard affinity"),
    Hypercall("domctl", domctl.freeze_vcpu, cmd="freeze_vcpu", privileged=True,
              doc="an injected fault: keep one vCPU of a domU stopped, or let it go"),
    Hypercall("domctl", domctl.evtchn_fault, cmd="evtchn_fault", privileged=True,
              doc="an injected fault: drop or delay a domain's sends on one port (none: clear it)"),
    Hypercall("domctl", domctl.sendtrigger, cmd="sendtrigger", privileged=True,
              doc="XEN_DOMCTL_sendtrigger: an NMI to a domU (its threads' stacks); ACPI triggers are HVM's"),
    # Disks the hypervisor holds: the direct and passthrough device models (vdisk.py)
    Hypercall("domctl", vdisk.assign_vdisk, cmd="assign_vdisk", privileged=True,
              doc="give dom a direct or passthrough disk: the image's fd, its geometry, its model"),
    Hypercall("domctl", vdisk.deassign_vdisk, cmd="deassign_vdisk", privileged=True,
              doc="take a direct disk back from dom (a passthrough disk's fd is the guest's: EBUSY)"),
    Hypercall("vdisk_op", vdisk.vdisk_list, cmd="list",
              doc="the caller's direct and passthrough disks; a passthrough disk's image fd with them"),
    Hypercall("vdisk_io", vdisk.vdisk_io,
              doc="one request on a direct disk, checked as blkback checks it and served here"),
    # The host (sysctl.py)
    Hypercall("sysctl", sysctl.physinfo, cmd="physinfo", privileged=True,
              doc="the host's frames, pCPUs, version, grant mappings and ports"),
    Hypercall("sysctl", sysctl.sharing_info, cmd="sharing_info", privileged=True,
              doc="each domain's memory and how much of it ksmd shares (xl sharing)"),
    Hypercall("sysctl", sysctl.readconsole, cmd="readconsole", privileged=True,
              doc="the hypervisor's console ring (xl dmesg), cleared if asked"),
    Hypercall("sysctl", sysctl.sched_info, cmd="sched_info", privileged=True,
              doc="the pool's scheduler and its parameters"),
    Hypercall("sysctl", keyhandler.debug_keys, cmd="debug_keys", privileged=True,
              doc="XEN_SYSCTL_debug_keys: press debug keys; what they dump goes to the console ring"),
    # Batches (multicall.py)
    Hypercall("multicall", multicall.multicall, in_multicall=False,
              doc="several of the above in one round trip; {'$result': [i, key]} takes an earlier result's field"),
)
# fmt: on
