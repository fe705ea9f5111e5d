"""Domain management, dom0's alone (``xen/common/domctl.c``): create, start, destroy, pause, info, scheduling.

Every function here is a ``domctl`` command; the table marks them all
privileged, so they run for dom0 only. The scheduling commands are
``XEN_DOMCTL_scheduler_op`` (weight, cap), ``getvcpuinfo`` (``vcpu_list``) and
``setvcpuaffinity`` (``vcpu_pin``).
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import signal
from typing import TYPE_CHECKING, Any

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Deferred, Refused, Result
from xenlike.hypervisor.sched import DEFAULT_WEIGHT, SchedError
from xenlike.hypervisor.vdisk import passthrough_size_limit
from xenlike.public.domctl import XEN_DOMINF_BLOCKED, XEN_DOMINF_RUNNING, dominf_flags
from xenlike.public.grant_table import DEFAULT_MAX_GRANT_FRAMES
from xenlike.public.trace import FaultAction
from xenlike.public.xen import PAGE_SIZE, ShutdownReason

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = [
    "createdomain",
    "startdomain",
    "destroydomain",
    "resumedomain",
    "pausedomain",
    "unpausedomain",
    "getdomaininfo",
    "getdomaininfolist",
    "get_changed_domains",
    "rename",
    "getmemory",
    "open_channel",
    "close_channel",
    "host_shutdown",
    "sched_credit_get",
    "sched_credit_set",
    "vcpu_list",
    "vcpu_pin",
    "sendtrigger",
    "TRIGGERS",
    "freeze_vcpu",
    "evtchn_fault",
]

log = logging.getLogger("xenlike.hypervisor")


def createdomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_createdomain: reserve a domain's memory and scheduler entry; it runs once started."""
    name = args["name"]
    if name in hv.names:
        raise Refused(errno.EEXIST, f"a domain named {name!r} already exists")
    vcpus = int(args.get("max_vcpus") or args.get("vcpus", 1))  # the domain has maxvcpus; vcpu-set onlines them
    weight, cap, cpus = args.get("weight", DEFAULT_WEIGHT), args.get("cap", 0), args.get("cpus")
    try:  # refused before anything is reserved
        hv.scheduler.check_weight(weight)
        hv.scheduler.check_cap(f"domain {name!r}", vcpus, cap)
        if cpus is not None:
            hv.scheduler.check_cpus(cpus)
    except SchedError as exc:
        raise Refused(exc.errno, str(exc)) from None
    refusal = hv.fd_budget.refusal(name)
    if refusal is not None:
        raise Refused(errno.EMFILE, refusal)
    domid = hv.allocate_domid()
    domain = hv.new_domain(
        domid,
        name,
        int(args["memory_mib"]),
        int(args.get("maxmem_mib") or args["memory_mib"]),
        vcpus,
        int(args.get("max_grant_frames", DEFAULT_MAX_GRANT_FRAMES)),
    )
    if args.get("uuid"):
        domain.uuid = args["uuid"]
    hv.scheduler.add_domain(domid, domain.label, vcpus, weight, cap, cpus)
    log.info("%s: created, %d MiB, %d vCPU(s)", domain.label, domain.nr_frames * PAGE_SIZE >> 20, domain.vcpus)
    return {"domid": domid, "uuid": domain.uuid, "nr_frames": domain.nr_frames}, [domain.memory.fd]


def startdomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Fork the domain's vCPU 0 with its boot message (``paused``: stopped before it runs)."""
    domain = hv.domain(args["domid"])
    if domain.pid is not None or domain.shutdown_reason is not None:
        raise Refused(errno.EINVAL, f"{domain.label} has already run")
    boot = {"role": "domu", **args.get("boot", {}), "file_size_limit": passthrough_size_limit(domain)}
    pid = hv.spawn(domain, boot)
    if args.get("paused"):
        domain.paused = True
        os.killpg(pid, signal.SIGSTOP)
        hv.scheduler.pause(domain.domid)
    hv.scheduler.vcpu_up(domain.domid, 0, pid)
    log.info("%s: started, pid %d%s", domain.label, pid, " (paused)" if domain.paused else "")
    return {"pid": pid}, []


def destroydomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_destroydomain: kill a domU; answered once its process is reaped and it is freed."""
    domain = hv.domain(args["domid"])
    if domain.domid == 0:
        raise Refused(errno.EINVAL, "dom0 cannot be destroyed; shut the host down instead")
    domain.dying = True
    if domain.pid is None:
        hv.finalize(domain)
        return {"domid": domain.domid}, []
    hv.reply_when_destroyed(domain)
    hv.kill(domain)
    raise Deferred()


def resumedomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_resumedomain: a suspended domU runs on where it stopped; its SCHEDOP_shutdown says cancelled.

    With ``paused`` it stays stopped, paused, until unpaused (``xl save -p``).
    """
    domain = hv.domain(args["domid"])
    if domain.shutdown_reason != ShutdownReason.SUSPEND or domain.pid is None or domain.suspend_reply is None:
        raise Refused(errno.EINVAL, f"{domain.label} is not suspended")
    held, domain.suspend_reply = domain.suspend_reply, None
    domain.shutdown_reason = None
    domain.suspend_record = None
    hv.send_reply(held, {"cancelled": 1})
    if args.get("paused"):
        domain.paused = True  # still stopped, and the scheduler keeps it so
    elif not domain.paused:
        os.killpg(domain.pid, signal.SIGCONT)
        hv.scheduler.unpause(domain.domid)
    log.info("%s: resumed (suspend cancelled)%s", domain.label, " paused" if domain.paused else "")
    return {}, []


def pausedomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_pausedomain: stop every process of a running domU until unpaused."""
    domain, pid = _running_domu(hv, args["domid"])
    if not domain.paused:
        domain.paused = True
        os.killpg(pid, signal.SIGSTOP)
        hv.scheduler.pause(domain.domid)  # it stays stopped whatever the scheduler decides
        log.info("%s: paused", domain.label)
    return {}, []


def unpausedomain(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_unpausedomain: hand a paused domU back to the scheduler."""
    domain, pid = _running_domu(hv, args["domid"])
    if domain.paused:
        domain.paused = False
        os.killpg(pid, signal.SIGCONT)
        hv.scheduler.unpause(domain.domid)  # back to the scheduler, which may stop it again
        log.info("%s: unpaused", domain.label)
    return {}, []


def _running_domu(hv: Hypervisor, domid: Any) -> tuple[Domain, int]:
    """The domU ``domid`` names and its process group, if it runs."""
    domain = hv.domain(domid)
    if domain.domid == 0:
        raise Refused(errno.EINVAL, "dom0 cannot be paused")
    if domain.pid is None or domain.shutdown_reason is not None:
        raise Refused(errno.EINVAL, f"{domain.label} is not running")
    return domain, domain.pid


def getdomaininfo(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_getdomaininfo of one domain (``domid``) or of every domain."""
    if "domid" in args:
        return [domain_info(hv, hv.domain(args["domid"]))], []
    return [domain_info(hv, d) for d in sorted(hv.domains.values(), key=lambda d: d.domid)], []


def get_changed_domains(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """The domains whose state changed since the last call, each with its info (None: destroyed).

    What libxenmanage's ``xenmanage_poll_changed_domain`` asks Xen
    (``XEN_DOMCTL_get_domain_state``): what ``VIRQ_DOM_EXC`` is about, so its
    handler need not fetch every domain's info to find out.
    """
    rows = []
    for domid in hv.take_changed_domains():
        domain = hv.domains.get(domid)
        rows.append({"domid": domid, "info": domain_info(hv, domain) if domain is not None else None})
    return rows, []


def getdomaininfolist(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_SYSCTL_getdomaininfolist: what ``xl list`` shows of every domain, by domid, as the columns of
    ``xenlike.public.domctl.DOMAININFOLIST_COLUMNS`` (the run state as its ``XEN_DOMINF_*`` word).

    Each value is the one :func:`getdomaininfo` gives; the scheduler's accounting of every running domain is
    read in one pass and no dict is built per domain, so the answer costs what its size costs.
    """
    domains = sorted(hv.domains.values(), key=_domid)
    states = hv.scheduler.domain_states([d.domid for d in domains])
    scheduled_domains = hv.scheduler.domains
    kib_per_frame = PAGE_SIZE // 1024
    domids: list[int] = []
    names: list[str] = []
    memory_kb: list[int] = []
    maxmem_kb: list[int] = []
    vcpus: list[int] = []
    cpu_times: list[float] = []
    flags: list[int] = []
    # One pass, the per-domain helpers inlined (_accounted, Domain.scheduled_flags, tot_frames): this loop
    # is what a list of thousands of domains costs the hypervisor.
    for domain, (cpu_time, on_cpu, blocked) in zip(domains, states):
        domid = domain.domid
        domids.append(domid)
        names.append(domain.name)
        memory_kb.append((domain.nr_frames - len(domain.ballooned)) * kib_per_frame)
        maxmem_kb.append(domain.max_frames * kib_per_frame)
        accounted = domain.pid is not None and domain.shutdown_reason is None and domid in scheduled_domains
        vcpus.append(hv.scheduler.online_vcpus(domid) if domain.vcpus > 1 and accounted else domain.vcpus)
        if accounted and cpu_time is not None and on_cpu is not None and blocked is not None:
            cpu_times.append(cpu_time)
            flags.append(
                domain.scheduled_flags(on_cpu, blocked)
                if domain.paused or domain.dying
                else (XEN_DOMINF_RUNNING if on_cpu else 0) | (XEN_DOMINF_BLOCKED if blocked else 0)
            )
            continue
        # Not started, shut down, or a scheduler that does not track the run state: getdomaininfo's way,
        # from what the scheduler did account.
        info = domain.info({"cpu_time": cpu_time} if accounted and cpu_time is not None else None)
        cpu_times.append(info["cpu_time"])
        flags.append(dominf_flags(info))
    columns = {
        "domid": domids,
        "name": names,
        "memory_kb": memory_kb,
        "maxmem_kb": maxmem_kb,
        "vcpus": vcpus,
        "cpu_time": cpu_times,
        "flags": flags,
    }
    return columns, []


_domid = operator.attrgetter("domid")


def _accounted(hv: Hypervisor, domain: Domain) -> bool:
    """Whether the scheduler accounts the domain's CPU time and run state: it runs (started, not shut down)."""
    return domain.pid is not None and domain.shutdown_reason is None and domain.domid in hv.scheduler.domains


def _vcpus_online(hv: Hypervisor, domain: Domain) -> int:
    """``xl list``'s VCPUs: the vCPUs up of a running domain's ``maxvcpus`` (only asked if it has more than one)."""
    if domain.vcpus > 1 and _accounted(hv, domain):
        return hv.scheduler.online_vcpus(domain.domid)
    return domain.vcpus


def domain_info(hv: Hypervisor, domain: Domain) -> dict:
    """``getdomaininfo`` of one domain; CPU time and run state as the scheduler accounted them."""
    info = domain.info(hv.scheduler.domain_info(domain.domid) if _accounted(hv, domain) else None)
    info["vcpus"] = _vcpus_online(hv, domain)
    # dom0 is privileged, as in Xen; a domU is jailed unless the host runs with --no-jail.
    info["jailed"] = domain.domid != 0 and bool(hv.jail.get("enabled"))
    return info


def rename(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Give a domain a new name, unique on the host."""
    domain = hv.domain(args["domid"])
    new = args["name"]
    if hv.names.get(new, domain) is not domain:
        raise Refused(errno.EEXIST, f"a domain named {new!r} already exists")
    log.info("%s: renamed to %s", domain.label, new)
    if hv.names.get(domain.name) is domain:
        del hv.names[domain.name]
    domain.name = new
    hv.names[new] = domain
    if domain.domid in hv.scheduler.domains:
        hv.scheduler.domains[domain.domid].label = domain.label
    return {}, []


def getmemory(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """A domain's memfd, for dom0 to map (a privileged domain may map foreign memory)."""
    domain = hv.domain(args["domid"])
    return {"nr_frames": domain.nr_frames}, [domain.memory.fd]


def open_channel(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Another hypercall socket for dom0, for a back-end worker process; returns its id, the socket
    and the worker's trace buffer."""
    channel, fd, trace_fd = hv.open_channel(caller)
    return {"channel": channel}, [fd, trace_fd]


def close_channel(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """dom0 is done with a worker's channel: close it now, unmapping what it left mapped."""
    hv.close_channel(args["channel"])
    return {}, []


def host_shutdown(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Stop the host (dom0's last call, as Xen's hardware domain shutting down halts the machine).

    Every other domain is killed and, once reaped, freed; dom0 is answered and
    exits on its own, which the hypervisor logs as ``stopped (host shutdown)``.
    """
    hv.stop("requested by dom0", ends_itself=caller)
    return {}, []


# --------------------------------------------------------------------------------
# Scheduling (XEN_DOMCTL_scheduler_op, getvcpuinfo, setvcpuaffinity).


def _scheduled(hv: Hypervisor, domid: Any) -> Domain:
    domain = hv.domain(domid)
    if domain.domid not in hv.scheduler.domains:
        raise Refused(errno.EINVAL, f"{domain.label} is not running: it has no vCPUs to schedule")
    return domain


def _scheduled_domains(hv: Hypervisor, args: dict) -> list[Domain]:
    """The domain ``args["domid"]`` names, or every scheduled domain."""
    if "domid" in args:
        return [_scheduled(hv, args["domid"])]
    scheduled = hv.scheduler.domains
    return [hv.domains[domid] for domid in sorted(hv.domains) if domid in scheduled]


def sched_credit_get(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Weight and cap of one domain (``domid``) or of every scheduled domain."""
    return [
        {"domid": d.domid, "name": d.name, **hv.scheduler.params(d.domid)} for d in _scheduled_domains(hv, args)
    ], []


def sched_credit_set(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Set a domain's weight and/or cap; either may be left out."""
    domain = _scheduled(hv, args["domid"])
    try:
        params = hv.scheduler.adjust(domain.domid, args.get("weight"), args.get("cap"))
    except SchedError as exc:
        raise Refused(exc.errno, str(exc)) from None
    log.info("%s: weight %d, cap %d", domain.label, params["weight"], params["cap"])
    return params, []


def vcpu_list(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """Every vCPU of one domain (``domid``) or of every scheduled domain, as columns: ``domid``, ``name``
    and the fields of the scheduler's ``vcpu_list`` rows, a list each, the i-th entry of each being the
    i-th vCPU (as :func:`getdomaininfolist` answers, so thousands of vCPUs cost what their values cost).
    """
    domids: list[int] = []
    names: list[str] = []
    rows: list[dict] = []
    for domain in _scheduled_domains(hv, args):
        vcpus = hv.scheduler.vcpu_list(domain.domid)
        rows += vcpus
        domids += [domain.domid] * len(vcpus)
        names += [domain.name] * len(vcpus)
    columns: dict[str, list] = {"domid": domids, "name": names}
    try:
        columns.update((key, [row[key] for row in rows]) for key in (rows[0] if rows else ()))
    except KeyError as exc:  # every row of a scheduler's vcpu_list has the same fields
        raise Refused(errno.EIO, f"the {hv.scheduler.name} scheduler's vCPU rows lack {exc}") from None
    return columns, []


def vcpu_pin(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """A vCPU's hard affinity (``vcpu`` None: every vCPU of the domain; ``cpus`` None: every pCPU)."""
    domain = _scheduled(hv, args["domid"])
    vcpu, cpus = args.get("vcpu"), args["cpus"]
    if cpus is None:
        cpus = list(hv.pcpus)
    try:
        hv.scheduler.pin(domain.domid, vcpu, cpus)
    except SchedError as exc:
        raise Refused(exc.errno, str(exc)) from None
    log.info(
        "%s: vCPU %s pinned to pCPUs %s",
        domain.label,
        "all" if vcpu is None else vcpu,
        ",".join(map(str, sorted(cpus))),
    )
    return {}, []


# XEN_DOMCTL_SENDTRIGGER_*: what each does to a PV guest (Xen's arch_do_domctl takes only NMI for PV).
TRIGGERS = {
    "nmi": "every thread's stack of its vCPU 0 into the host's logs/hypervisor-stderr.log",
    "reset": None,
    "init": None,
    "power": None,
    "sleep": None,
    "s3resume": None,
}


def sendtrigger(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_sendtrigger: an NMI to a domU's vCPU 0 (its kernel dumps its threads); the
    ACPI triggers are refused, as Xen refuses them for a PV guest."""
    trigger, vcpu = args["trigger"], args.get("vcpu", 0)
    if trigger not in TRIGGERS:
        raise Refused(errno.EINVAL, f"no trigger {trigger!r}: the triggers are {', '.join(TRIGGERS)}")
    domain, pid = _running_domu(hv, args["domid"])
    if TRIGGERS[trigger] is None:
        raise Refused(
            errno.ENOSYS,
            f"trigger {trigger!r} is an HVM guest's (ACPI or a CPU reset); {domain.label} is PV: "
            "use shutdown, reboot or destroy",
        )
    if vcpu != 0:
        raise Refused(errno.EINVAL, f"an NMI goes to vCPU 0 of {domain.label}, whose kernel runs there, not {vcpu}")
    os.kill(pid, signal.SIGUSR1)  # the guest kernel's faulthandler: its NMI handler
    log.info("%s: NMI sent to vCPU 0", domain.label)
    return {"trigger": trigger}, []


def freeze_vcpu(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """An injected fault: keep one vCPU of a running domU stopped (``frozen``) or let it go again."""
    domain, _pid = _running_domu(hv, args["domid"])
    vcpu, frozen = int(args["vcpu"]), bool(args["frozen"])
    try:
        hv.scheduler.freeze_vcpu(domain.domid, vcpu, frozen)
    except SchedError as exc:
        raise Refused(exc.errno, str(exc)) from None
    log.warning("%s: vCPU %d %s (injected fault)", domain.label, vcpu, "frozen" if frozen else "thawed")
    return {"vcpu": vcpu, "frozen": frozen}, []


def evtchn_fault(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """An injected fault: drop or delay what a domain sends on one of its ports (``action`` none clears it)."""
    domain = hv.domain(args["domid"])
    port, action, delay_ms = int(args["port"]), str(args["action"]), int(args.get("delay_ms", 0))
    actions = {"none": FaultAction.NONE, "drop": FaultAction.DROP, "delay": FaultAction.DELAY}
    if action not in actions:
        raise Refused(errno.EINVAL, f"no event-channel fault {action!r}: drop, delay or none")
    if action == "delay" and not 0 < delay_ms <= 60_000:
        raise Refused(errno.EINVAL, f"a delay of {delay_ms} ms is not within 1 to 60000")
    if action != "none" and not any(p.port == port for p in hv.evtchn.port_fds(domain.domid)):
        raise Refused(errno.EINVAL, f"{domain.label} has no port {port} open (`xenlike debug-keys e` lists them)")
    try:
        hv.trace.set_evtchn_fault(domain.domid, port, actions[action], delay_ms)
    except ValueError as exc:
        raise Refused(errno.ENOSPC, str(exc)) from None
    log.warning("%s: port %d: %s (injected fault)", domain.label, port, action)
    return {"port": port, "action": action}, []
