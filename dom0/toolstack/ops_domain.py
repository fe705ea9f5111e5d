"""Domain operations: create, list, destroy, shutdown, pause, rename, ... and the host's
(``tools/xl/xl_vmcontrol.c``, ``xl_info.c``, ``xl_misc.c``; ``top`` is libxenstat's sample).

Each handler takes the toolstack and the request; the table in :mod:`.server` says
which answer the request themselves.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from xenlike.public.domctl import DOMAININFOLIST_COLUMNS, XEN_DOMINF_PAUSED, dominf_state
from xenlike.public.toolstack_wire import Table
from xenlike.public.vdisk import MODEL_SPLIT, model_limits
from xenlike.public.xen import PAGE_SIZE
from xenlike.public.xs_wire import XsError, home_path
from xenlike.tools.xl_format import state_letters

from . import ops_device
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from ..builder import BuiltDomain
    from .server import Toolstack

__all__ = [
    "ping",
    "info",
    "dmesg",
    "list_domains",
    "uptime",
    "top",
    "create",
    "destroy",
    "shutdown",
    "reboot",
    "pause",
    "unpause",
    "rename",
    "down",
]

log = logging.getLogger("dom0.toolstack")

HOST_SHUTDOWN_TIMEOUT_S = 10.0
# How long `create` waits for its guest to report its workload started (or failed) before it
# answers that it has not yet: a guest waits for its disks and imports its workload first.
CREATE_REPORT_TIMEOUT_S = 10.0
# How long `top` waits for the block workers' counters; a busy worker that has not
# looked at its control socket by then is shown with the last figures it sent.
TOP_STATS_TIMEOUT_S = 0.5


# -- the host ------------------------------------------------------------------------


def ping(ts: Toolstack, request: Request) -> Any:
    return {"run_dir": str(ts.run_dir.path), "domains": len(ts.domains)}


def info(ts: Toolstack, request: Request) -> Any:
    """The ``physinfo`` sysctl, with ``max_new_domains`` lowered to dom0's fd headroom if that is smaller."""
    physinfo = ts.hypercall("sysctl", cmd="physinfo")[0]
    fit = physinfo.get("max_new_domains")
    by_dom0 = ts.lifecycle.fd_budget.headroom()
    if fit is not None and by_dom0 < fit["count"]:
        physinfo["max_new_domains"] = {**fit, "count": by_dom0, "limit": "dom0 fds (RLIMIT_NOFILE)"}
    if ts.migration_listener is not None:
        physinfo["migration"] = ts.migration_listener.info()
    return physinfo


def sharing(ts: Toolstack, request: Request) -> Any:
    """``xl sharing [DOMAIN]``'s rows: name, domid, ``memory_kb``, ``shared_kb`` (the ``sharing_info`` sysctl)."""
    wanted = None if request.args.get("domain") is None else str(request.args["domain"])
    rows = [row for row in ts.hypercall("sysctl", cmd="sharing_info")[0] if _is(wanted, row["name"], row["domid"])]
    if wanted is not None and not rows:
        raise ToolstackError(f"no domain {wanted!r}; `xenlike list` shows the domains")
    return rows


def dmesg(ts: Toolstack, request: Request) -> Any:
    return ts.hypercall("sysctl", cmd="readconsole", clear=bool(request.args.get("clear")))[0]["lines"]


def down(ts: Toolstack, request: Request) -> None:
    """Shut the host down: domUs cooperatively (then by force), dom0, the hypervisor.

    Every domU is asked at once; those that shut down are not torn down one by one
    (:attr:`Lifecycle.host_stopping`): the hypervisor frees them all with the host.
    A paused domain is asked too but not waited for: it runs nothing, so it could
    only use up the timeout; the hypervisor kills it with the host, as one that
    ignores the request.
    """
    ts.lifecycle.host_stopping = True
    for built in ts.domains.values():
        try:
            ts.xs.write(f"{home_path(built.domid)}/control/shutdown", "poweroff")
        except XsError:
            pass
    paused = _paused_domains(ts)
    domids = set(ts.domains) - paused

    def finish(ok: bool) -> None:
        # The hypervisor kills what still runs once dom0 asks it to stop the host, all in one
        # pass; destroying each here first (a reap, a hypercall and xenstore removals apiece)
        # would make a late down cost seconds per thousand guests. Their devices are closed,
        # so each back end finishes its requests in order.
        for built in list(ts.domains.values()):
            if not ts.lifecycle.has_shut_down(built.domid) and built.domid not in paused:
                log.info("%s: still running at host shutdown; the hypervisor kills it", built.label)
            ts.backends.remove_domain(built.domid)
        request.reply({"forced": not ok or bool(paused)})
        ts.shut_host_down()

    if not domids:
        finish(True)
        return
    ts.wait_for_domains(domids, float(request.args.get("timeout", HOST_SHUTDOWN_TIMEOUT_S)), finish)


def _paused_domains(ts: Toolstack) -> set[int]:
    """The domUs paused now (``XEN_DOMINF_PAUSED``), each logged as one ``down`` will not wait for."""
    columns = ts.lifecycle.domain_list()
    paused = {
        domid
        for domid, flags in zip(columns["domid"], columns["flags"])
        if flags & XEN_DOMINF_PAUSED and domid in ts.domains
    }
    for domid in sorted(paused):
        log.info(
            "%s: paused, so it cannot answer the shutdown; the hypervisor kills it with the host",
            ts.domains[domid].label,
        )
    return paused


# -- listing -------------------------------------------------------------------------


def _disk_models(built: BuiltDomain | None) -> dict[str, list[dict[str, Any]]]:
    """``list -l``'s ``disk_models``: each disk's device model and what that model allows."""
    disks = built.config.get("disk", []) if built is not None else []
    models = [(d["vdev"], d.get("model", MODEL_SPLIT)) for d in disks]
    return {"disk_models": [{"vdev": vdev, "model": model, **model_limits(model)} for vdev, model in models]}


def list_domains(ts: Toolstack, request: Request) -> Any:
    """``xl list``'s rows (name, domid, mem in MiB, vcpus, state letters, cpu_time); with ``long`` each row also
    has the domain's ``info`` (``getdomaininfo``), ``config`` and ``disk_models``.

    The short list is made from ``getdomaininfolist``'s columns and answered as a
    :class:`~xenlike.public.toolstack_wire.Table`, a column per key, so it costs what its reply's size
    costs; the long one needs every domain's full ``getdomaininfo``.
    """
    args = request.args
    wanted = None if args.get("domain") is None else str(args["domain"])
    if args.get("long"):
        rows = [_long_row(ts, info) for info in ts.lifecycle.domain_infos() if _is(wanted, info["name"], info["domid"])]
        if wanted is not None and not rows:
            raise ToolstackError(f"no domain {wanted!r}; `xenlike list` shows the domains")
        return rows
    columns = ts.lifecycle.domain_list()
    if wanted is not None:
        columns = _only(columns, wanted)
    return Table(
        LIST_KEYS,
        (
            columns["name"],
            columns["domid"],
            [kb // 1024 for kb in columns["memory_kb"]],
            columns["vcpus"],
            list(map(_letters, columns["flags"])),
            columns["cpu_time"],
        ),
    )


# The short list's keys, in the order of xl list's columns.
LIST_KEYS = ("name", "domid", "mem", "vcpus", "state", "cpu_time")


def _only(columns: dict[str, list], wanted: str) -> dict[str, list]:
    """``getdomaininfolist``'s columns cut down to the domains ``wanted`` names; ToolstackError if none is."""
    kept = [i for i, (domid, name) in enumerate(zip(columns["domid"], columns["name"])) if _is(wanted, name, domid)]
    if not kept:
        raise ToolstackError(f"no domain {wanted!r}; `xenlike list` shows the domains")
    return {key: [columns[key][i] for i in kept] for key in DOMAININFOLIST_COLUMNS}


def _is(wanted: str | None, name: str, domid: int) -> bool:
    """Whether a domain is the one ``wanted`` names (by name or id); every domain is when it is None."""
    return wanted is None or wanted == name or wanted == str(domid)


@functools.cache
def _letters(flags: int) -> str:
    """xl list's state letters of a ``XEN_DOMINF_*`` word (a host's domains share a handful of them)."""
    return state_letters(_state_of(flags))


def _long_row(ts: Toolstack, info: dict) -> dict:
    built = ts.domains.get(info["domid"])
    return {
        "name": info["name"],
        "domid": info["domid"],
        "mem": info["memory_kb"] // 1024,
        "vcpus": info["vcpus"],
        "state": state_letters(info),
        "cpu_time": info["cpu_time"],
        "info": info,
        "config": built.config if built else {},
        **_disk_models(built),
    }


def uptime(ts: Toolstack, request: Request) -> Any:
    physinfo = ts.hypercall("sysctl", cmd="physinfo")[0]
    rows = []
    for info in ts.lifecycle.domain_infos():
        uptime = time.time() - physinfo["started"] if info["domid"] == 0 else info["uptime"]
        if request.args.get("domain") is None or str(request.args["domain"]) in (info["name"], str(info["domid"])):
            rows.append({"name": info["name"], "domid": info["domid"], "uptime": uptime})
    return rows


def top(ts: Toolstack, request: Request) -> None:
    """One xentop sample (libxenstat's ``xenstat_get_node``, for ``tools/xentop/xentop.c``) in one request.

    ``{"time", "monotonic", "host": {total_kb, free_kb, nr_cpus, cpu_mhz, version},
    "domains": [{domid, name, running, blocked, paused, shutdown, shutdown_reason, dying,
    cpu_time, memory_kb, maxmem_kb, vcpus, nets, vbds, devids, ssid}]}``: ``vbds`` holds each
    disk's blkback counters (None for a disk blkback does not know), ``nets`` each
    vif's netback counters (the guest's view: ``tx_bytes`` it sent, ``rx_bytes`` it
    received). The reply waits for the back-end workers' live counters, at most
    TOP_STATS_TIMEOUT_S. The domains are read with ``getdomaininfolist``, as libxenstat
    reads them with ``xc_domain_getinfolist``, and go as a table: what a sample of
    thousands of domains costs is its size.
    """
    columns = ts.lifecycle.domain_list()
    physinfo = ts.hypercall("sysctl", cmd="physinfo")[0]
    sampled = {"time": time.time(), "monotonic": time.monotonic()}
    answered = ops_device.request_stats(ts)

    def finish(ok: bool) -> None:
        request.reply({**sampled, "host": _top_host(physinfo), "domains": _top_domains(ts, columns)})

    ts.poll(answered, TOP_STATS_TIMEOUT_S, finish, request=request)


# The run state xentop shows, from getdomaininfolist's flags word.
_TOP_STATE = ("running", "blocked", "paused", "shutdown", "shutdown_reason", "dying")


def _top_domains(ts: Toolstack, columns: dict[str, list]) -> Table:
    """Every domain's xentop row data: getdomaininfolist's columns, the run state spelt out, and the
    devices' counters as they are when the workers have answered."""
    states = [_state_of(flags) for flags in columns["flags"]]
    counters = [ops_device.top_counters(ts, domid) for domid in columns["domid"]]
    counter_keys = tuple(counters[0]) if counters else ()
    return Table(
        ("domid", "name", *_TOP_STATE, "cpu_time", "memory_kb", "maxmem_kb", "vcpus", *counter_keys, "ssid"),
        (
            columns["domid"],
            columns["name"],
            *([state[key] for state in states] for key in _TOP_STATE),
            columns["cpu_time"],
            columns["memory_kb"],
            columns["maxmem_kb"],
            columns["vcpus"],
            *([row[key] for row in counters] for key in counter_keys),
            [0] * len(states),
        ),
    )


@functools.cache
def _state_of(flags: int) -> dict[str, object]:
    """``dominf_state`` of a flags word (a host's domains share a handful); the caller must not change it."""
    return dominf_state(flags)


def _top_host(physinfo: dict) -> dict:
    """The host's line of xentop: memory in KiB, CPUs, and the version as libxenstat spells it ("4.19-xenlike")."""
    frame_kb = PAGE_SIZE // 1024
    version = physinfo["version"]
    return {
        "total_kb": physinfo["total_frames"] * frame_kb,
        "free_kb": physinfo["free_frames"] * frame_kb,
        "nr_cpus": physinfo["nr_cpus"],
        "cpu_mhz": _cpu_mhz(),
        "version": f"{version['major']}.{version['minor']}{version['extra']}",
    }


@functools.cache
def _cpu_mhz() -> int:
    """The host CPU's clock in MHz from /proc/cpuinfo (0 if it says none), read once as Xen measures cpu_khz at boot."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return 0


# -- lifecycle -----------------------------------------------------------------------


def create(ts: Toolstack, request: Request) -> None:
    """xl create: build the domain, then answer once its guest reported its workload started or failed
    (``xenlike.public.workload_state``), it ended first, or CREATE_REPORT_TIMEOUT_S passed.

    The reply is ``{domid, name, start}``: ``start`` is :meth:`StartReport.to_dict`
    (``state`` started, failed or pending, the domains that did not start and why,
    on_crash restarts, and ``message``, the line to show when it is not a plain
    start). A paused domain runs nothing yet: its reply has no ``start`` and comes
    at once, as ``xl create -p`` returns.
    """
    paused = bool(request.args.get("paused"))
    built = ts.lifecycle.create(request.args["config"], paused=paused)
    result: dict[str, Any] = {"domid": built.domid, "name": built.name}
    if paused:
        request.reply(result)
        return
    report = ts.lifecycle.await_start(built)

    def finish(ok: bool) -> None:
        if not ok:
            ts.lifecycle.stop_awaiting(report)
            log.warning(
                "%s: no report of its workload starting within %gs; it runs on", built.label, CREATE_REPORT_TIMEOUT_S
            )
        elif report.failures:
            log.warning("%s", report.message(CREATE_REPORT_TIMEOUT_S))
        request.reply({**result, "start": report.to_dict(CREATE_REPORT_TIMEOUT_S)})

    ts.poll(lambda: ts.lifecycle.start_settled(report), CREATE_REPORT_TIMEOUT_S, finish, request=request)


def destroy(ts: Toolstack, request: Request) -> Any:
    """xl destroy. Domain 0 is refused, as xl's ``destroy_domain`` refuses it without ``-f``; with it
    only a toolstack in a domain of its own could go on, and xenlike's runs in domain 0."""
    if str(request.args["domain"]) in ("0", "Domain-0"):
        raise ToolstackError(
            "Domain-0 runs the toolstack and cannot be destroyed, even with -f (xl's -f needs a "
            "hardware domain apart from domain 0); `xenlike down` stops the host"
        )
    built = ts.lifecycle.find(request.args["domain"])
    ts.lifecycle.destroy(built)
    return {"domid": built.domid}


def shutdown(ts: Toolstack, request: Request) -> None:
    _request_shutdown(ts, request, "poweroff")


def reboot(ts: Toolstack, request: Request) -> None:
    _request_shutdown(ts, request, "reboot")


def _request_shutdown(ts: Toolstack, request: Request, action: str) -> None:
    """Write ``control/shutdown`` (what ``libxl_domain_shutdown`` does for a PV guest); with ``wait``,
    answer once the domains are gone or their on_* action ran, as ``xl shutdown -w``."""
    args = request.args
    targets = list(ts.domains.values()) if args.get("all") else [ts.lifecycle.find(args["domain"])]
    for built in targets:
        ts.xs.write(f"{home_path(built.domid)}/control/shutdown", action)
        log.info("%s: %s requested", built.label, action)
    result = {"domids": [b.domid for b in targets]}
    if not (args.get("wait") and targets):
        request.reply(result)
        return
    timeout = args.get("timeout")

    def done(ok: bool) -> None:
        if ok:
            request.reply(result)
        else:
            request.fail(f"domains did not shut down within {timeout}s")

    ts.wait_for_domains({b.domid for b in targets}, timeout or None, done)


def pause(ts: Toolstack, request: Request) -> Any:
    built = ts.lifecycle.find(request.args["domain"])
    ts.hypercall("domctl", cmd="pausedomain", domid=built.domid)
    return {}


def unpause(ts: Toolstack, request: Request) -> Any:
    built = ts.lifecycle.find(request.args["domain"])
    ts.hypercall("domctl", cmd="unpausedomain", domid=built.domid)
    return {}


def rename(ts: Toolstack, request: Request) -> Any:
    built = ts.lifecycle.find(request.args["domain"])
    new = str(request.args["name"])
    if any(d.name == new for d in ts.domains.values()) or new == "Domain-0":
        raise ToolstackError(f"a domain named {new!r} already exists")
    ts.lifecycle.rename(built, new)
    return {}
