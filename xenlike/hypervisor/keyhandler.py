"""Debug keys (``xen/common/keyhandler.c``): the hypervisor dumps its state into its console ring.

``xl debug-keys KEYS`` (``XEN_SYSCTL_debug_keys``) presses each key in turn, as
typing them on Xen's serial console would; what a key prints goes to the
hypervisor's log, so ``xl dmesg`` shows it:

* ``q``: every domain (memory, vCPUs, process, state, its trace buffer);
* ``e``: every domain's event channels (state, peer, VIRQ);
* ``g``: the grant maptrack (who maps whose ref, the frame, read-only);
* ``r``: the run queues (each pCPU's vCPUs: running, runnable or blocked, priority, credit);
* ``h``: the keys.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.public.event_channel import ChannelState

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["KEY_HANDLERS", "debug_keys", "MAX_KEYS"]

log = logging.getLogger("xenlike.hypervisor")

MAX_KEYS = 64  # keys one call may press


def _dump_domains(hv: Hypervisor) -> None:
    """'q' (``dump_domains``)."""
    log.info("'q' pressed -> dumping domain info (now = %.3f)", time.monotonic())
    for domain in sorted(hv.domains.values(), key=lambda d: d.domid):
        flags = ",".join(name for name, on in domain.state_flags().items() if on) or "none"
        log.info(
            "General information for domain %d (%s): pid %s, %d frames (max %d), %d vCPU(s), "
            "grant frames %d, state %s, trace buffer %s",
            domain.domid,
            domain.name,
            domain.pid,
            domain.nr_frames,
            domain.max_frames,
            domain.vcpus,
            domain.gnttab_frames,
            flags,
            domain.trace_buffer,
        )


def _dump_evtchn(hv: Hypervisor) -> None:
    """'e' (``dump_evtchn_info``)."""
    log.info("'e' pressed -> dumping event-channel info")
    for domid in sorted(hv.domains):
        log.info("Event channel information for domain %d:", domid)
        for fds in hv.evtchn.port_fds(domid):
            status = hv.evtchn.status(domid, fds.port)
            state = ChannelState(int(status["status"] or 0)).name.lower()
            peer = f" d{status['remote_dom']}:{status['remote_port']}" if status["remote_dom"] is not None else ""
            virq = f" virq {status['virq']}" if status["virq"] is not None else ""
            log.info("    port %4d: %s%s%s", fds.port, state, peer, virq)


def _dump_gnttab(hv: Hypervisor) -> None:
    """'g' (``gnttab_usage_print_all``)."""
    log.info("'g' pressed -> dumping grant table info (maptrack)")
    count = 0
    for domid in sorted(hv.domains):
        for mapping in sorted(hv.grants.mappings_of(domid), key=lambda m: m.handle):
            count += 1
            log.info(
                "    d%d handle %5d: d%d ref %5d frame %#x %s",
                domid,
                mapping.handle,
                mapping.granter,
                mapping.ref,
                mapping.frame,
                "ro" if mapping.readonly else "rw",
            )
    log.info("    %d grant mapping(s)", count)


def _dump_runq(hv: Hypervisor) -> None:
    """'r' (``dump_runq``): per pCPU, its vCPUs by priority."""
    log.info("'r' pressed -> dumping run queues (scheduler %s)", hv.scheduler.name)
    by_cpu: dict[int | None, list[str]] = {}
    for domid in sorted(hv.domains):
        try:
            rows = hv.scheduler.vcpu_list(domid)
        except (KeyError, ValueError, OSError):
            continue  # not (or no longer) scheduled
        for row in rows:
            if not row.get("online"):
                continue
            state = "running" if row.get("running") else "blocked" if row.get("blocked") else "runnable"
            prio = f" pri {row['priority']} credit {row['credit']}" if row.get("priority") else ""
            by_cpu.setdefault(row.get("cpu"), []).append(f"d{domid}v{row['vcpu']} {state}{prio}")
    for cpu in sorted(by_cpu, key=lambda c: -1 if c is None else c):
        log.info("CPU[%s]: %s", "?" if cpu is None else f"{cpu:02d}", "; ".join(by_cpu[cpu]))


def _show_help(hv: Hypervisor) -> None:
    """'h' (``show_handlers``)."""
    log.info("'h' pressed -> showing installed handlers")
    for key, (description, _handler) in KEY_HANDLERS.items():
        log.info(" key '%s': %s", key, description)


KEY_HANDLERS: dict[str, tuple[str, Callable[[Hypervisor], None]]] = {
    "e": ("dump evtchn info", _dump_evtchn),
    "g": ("print grant table usage", _dump_gnttab),
    "h": ("show this message", _show_help),
    "q": ("dump domain (and guest debug) info", _dump_domains),
    "r": ("dump run queues", _dump_runq),
}


def debug_keys(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_SYSCTL_debug_keys: press each of ``keys`` in turn; EINVAL naming a key that has no handler."""
    keys = args["keys"]
    if not isinstance(keys, str) or not keys or len(keys) > MAX_KEYS:
        raise Refused(errno.EINVAL, f"debug keys are a string of 1 to {MAX_KEYS} keys")
    unknown = sorted({key for key in keys if key not in KEY_HANDLERS})
    if unknown:
        raise Refused(errno.EINVAL, f"no handler for key(s) {''.join(unknown)!r}: the keys are {''.join(KEY_HANDLERS)}")
    for key in keys:
        KEY_HANDLERS[key][1](hv)
    return {"keys": keys}, []
