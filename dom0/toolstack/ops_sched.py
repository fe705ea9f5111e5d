"""Scheduling operations: ``xl sched-credit``, ``vcpu-list``, ``vcpu-pin``, ``vcpu-set``
(``tools/xl/xl_sched.c``, ``xl_vcpu.c``).

The first three apply to any domain, dom0 included, as in Xen; ``vcpu-set`` to a domU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenlike.public.toolstack_wire import Table
from xenlike.public.vcpu import OFFLINE, ONLINE, availability_path
from xenlike.public.xs_wire import home_path

from ..builder import max_vcpus
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from .server import Toolstack

__all__ = ["sched_credit", "vcpu_list", "vcpu_pin", "vcpu_set"]


def _domid_of(ts: Toolstack, spec: Any) -> int:
    """Any domain, dom0 included, by name or id (from getdomaininfolist: a name costs no domain's full info)."""
    text = str(spec)
    columns = ts.lifecycle.domain_list()
    for domid, name in zip(columns["domid"], columns["name"]):
        if text in (name, str(domid)):
            return domid
    raise ToolstackError(f"no domain {text!r}; `xenlike list` shows the domains")


def sched_credit(ts: Toolstack, request: Request) -> Any:
    """Set a domain's weight/cap (``weight``, ``cap``), or show them with the pool's parameters."""
    args = request.args
    domid = _domid_of(ts, args["domain"]) if args.get("domain") is not None else None
    if args.get("weight") is not None or args.get("cap") is not None:
        if domid is None:
            raise ToolstackError("a weight or cap needs a domain (-d DOMAIN)")
        return {
            "set": ts.hypercall(
                "domctl", cmd="sched_credit_set", domid=domid, weight=args.get("weight"), cap=args.get("cap")
            )[0]
        }
    rows = ts.hypercall("domctl", cmd="sched_credit_get", **({} if domid is None else {"domid": domid}))[0]
    pool = ts.hypercall("sysctl", cmd="sched_info")[0]
    return {"pool": {"name": "Pool-0", **pool}, "domains": rows}


def vcpu_list(ts: Toolstack, request: Request) -> Any:
    """xl vcpu-list's rows of every domain, or of ``domains`` in that order, as a table (the hypervisor
    answers in columns), and the host's ``nr_cpus``."""
    domains = request.args.get("domains") or []
    if not domains:
        parts = [ts.hypercall("domctl", cmd="vcpu_list")[0]]
    else:
        parts = [ts.hypercall("domctl", cmd="vcpu_list", domid=_domid_of(ts, spec))[0] for spec in domains]
    keys = list(dict.fromkeys(key for part in parts for key in part))  # a domain with no vCPU rows has two
    vcpus = Table(keys, [[value for part in parts for value in part.get(key, [])] for key in keys])
    return {"nr_cpus": ts.hypercall("sysctl", cmd="physinfo")[0]["nr_cpus"], "vcpus": vcpus}


def vcpu_pin(ts: Toolstack, request: Request) -> Any:
    """Hard affinity: ``vcpu`` a number or "all", ``cpus`` in xl's syntax ("all", "0-3,^1")."""
    from xenlike.tools.config import ConfigError, parse_cpus

    args = request.args
    domid = _domid_of(ts, args["domain"])
    vcpu = args.get("vcpu", "all")
    if str(vcpu) != "all" and not str(vcpu).isdigit():
        raise ToolstackError(f"vCPU {vcpu!r}: expected a vCPU number or 'all'")
    try:
        cpus = parse_cpus(str(args["cpus"]), key="CPUS")
    except ConfigError as exc:
        raise ToolstackError(str(exc)) from None
    ts.hypercall("domctl", cmd="vcpu_pin", domid=domid, vcpu=None if str(vcpu) == "all" else int(vcpu), cpus=cpus)
    return {}


def vcpu_set(ts: Toolstack, request: Request) -> Any:
    """``count`` vCPUs online, 1..maxvcpus: libxl's ``libxl_set_vcpuonline`` writes ``cpu/N/availability``.

    The guest's kernel follows the nodes; ``vcpu-list`` shows when it has. The
    count is kept in the domain's config, so a save or a migration carries it.
    """
    built = ts.lifecycle.find(request.args["domain"])
    count, most = request.args.get("count"), max_vcpus(built.config)
    if type(count) is not int or count < 1:
        raise ToolstackError(f"{built.name}: a vCPU count is a whole number from 1 to {most}, not {count!r}")
    if count > most:
        raise ToolstackError(
            f"{built.name}: cannot set {count} vCPUs, its maxvcpus is {most} (a domain gets more with "
            "maxvcpus in its config, at create)"
        )
    base = home_path(built.domid)

    def write_all(tx: int) -> None:
        for vcpu in range(most):
            ts.xs.write(f"{base}/{availability_path(vcpu)}", ONLINE if vcpu < count else OFFLINE, tx=tx)

    ts.xs.transact(write_all)
    built.config["vcpus"] = count
    return {"vcpus": count, "maxvcpus": most}
