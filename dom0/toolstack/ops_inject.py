"""Fault injection: ``xenlike inject KIND ...``, ``--list``, ``--clear [ID]`` (``dom0/faults.py`` says what
each fault does and what follows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..faults import OUTCOMES, FaultError, check_xs_rule, freeze_worker, kill_worker
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from ..xenbus_backend import XenbusDevice
    from .server import Toolstack

__all__ = ["inject", "inject_list", "inject_clear"]

USAGE = {
    "backend-kill": "DOMAIN DEVICE",
    "backend-freeze": "DOMAIN DEVICE",
    "evtchn-drop": "DOMAIN PORT",
    "evtchn-delay": "DOMAIN PORT MS",
    "xs-refuse": "PATH [ERRNO]",
    "xs-delay": "PATH MS",
    "vcpu-freeze": "DOMAIN VCPU",
}


def inject(ts: Toolstack, request: Request) -> Any:
    """Inject one fault; answers its id, what it targets and its documented outcome."""
    kind = str(request.args.get("kind"))
    words = [str(word) for word in request.args.get("words") or []]
    if kind not in USAGE:
        raise ToolstackError(f"no fault {kind!r}: the faults are {', '.join(USAGE)}")
    needed = USAGE[kind].split()
    least = len([w for w in needed if not w.startswith("[")])
    if not least <= len(words) <= len(needed):
        raise ToolstackError(f"usage: inject {kind} {USAGE[kind]}")
    try:
        fault = _INJECT[kind](ts, kind, words)
    except FaultError as exc:
        raise ToolstackError(str(exc)) from None
    return fault.describe()


def inject_list(ts: Toolstack, request: Request) -> Any:
    return [fault.describe() for fault in ts.injected.faults.values()]


def inject_clear(ts: Toolstack, request: Request) -> Any:
    fault_id = request.args.get("id")
    try:
        return {"cleared": ts.injected.clear(int(fault_id) if fault_id is not None else None)}
    except FaultError as exc:
        raise ToolstackError(str(exc)) from None


def _number(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FaultError(f"{what} is a number, not {text!r}") from None


def _domid(ts: Toolstack, domain: str) -> tuple[int, str]:
    """A domain by name or id, Domain-0 included (its ports and back ends may be the target)."""
    if domain in ("0", "Domain-0"):
        return 0, "Domain-0"
    built = ts.lifecycle.find(domain)
    return built.domid, built.name


def _device(ts: Toolstack, domain: str, device: str) -> XenbusDevice:
    """A domU's device by its vdev (xvda), its devid, or TYPE/DEVID (vbd/51712)."""
    built = ts.lifecycle.find(domain)
    devtype, _, devid_text = device.rpartition("/")
    for dev in ts.backends.devices.values():
        if dev.frontend_id != built.domid or (devtype and dev.devicetype != devtype):
            continue
        disk_names = {str(d.get("vdev")) for d in built.config.get("disk", []) if d.get("devid") == dev.devid}
        if devid_text == str(dev.devid) or devid_text in disk_names:
            if dev.worker is None:
                raise FaultError(f"{built.name}'s {device} has no back-end worker running (it is not connected)")
            return dev
    raise FaultError(f"{built.name} has no device {device!r}; `xenlike block-list {built.name}` shows its disks")


def _backend(ts: Toolstack, kind: str, words: list[str]) -> Any:
    dev = _device(ts, words[0], words[1])
    worker = dev.worker
    assert worker is not None  # _device checked it
    target = f"{words[0]} {words[1]} (worker pid {worker.pid})"
    if kind == "backend-kill":
        kill_worker(worker.pid, worker.label)
        return ts.injected.add(kind, target, None, done=True)
    freeze_worker(worker.pid, worker.label, True)
    return ts.injected.add(kind, target, lambda: freeze_worker(worker.pid, worker.label, False))


def _evtchn(ts: Toolstack, kind: str, words: list[str]) -> Any:
    domid, name = _domid(ts, words[0])
    port = _number(words[1], "PORT")
    action = kind.removeprefix("evtchn-")
    delay = _number(words[2], "MS") if kind == "evtchn-delay" else 0
    ts.hypercall("domctl", cmd="evtchn_fault", domid=domid, port=port, action=action, delay_ms=delay)

    def undo() -> None:
        ts.hypercall("domctl", cmd="evtchn_fault", domid=domid, port=port, action="none")

    return ts.injected.add(kind, f"{name} port {port}" + (f" {delay} ms" if delay else ""), undo)


def _xenstore(ts: Toolstack, kind: str, words: list[str]) -> Any:
    faults = ts.xenstore_service.faults
    rule = check_xs_rule(kind, words[0], words[1] if len(words) > 1 else None)
    fault = ts.injected.add(kind, "", None)
    rule = type(rule)(fault.id, rule.kind, rule.path, rule.errno_name, rule.delay_ms)
    faults.poll = ts.poll
    faults.rules.append(rule)
    fault.target = f"{rule.path} " + (rule.errno_name if kind == "xs-refuse" else f"{rule.delay_ms} ms")
    fault.undo = lambda: faults.rules.remove(rule)
    return fault


def _vcpu(ts: Toolstack, kind: str, words: list[str]) -> Any:
    built = ts.lifecycle.find(words[0])
    vcpu = _number(words[1], "VCPU")
    ts.hypercall("domctl", cmd="freeze_vcpu", domid=built.domid, vcpu=vcpu, frozen=True)

    def undo() -> None:
        ts.hypercall("domctl", cmd="freeze_vcpu", domid=built.domid, vcpu=vcpu, frozen=False)

    return ts.injected.add(kind, f"{built.name} vCPU {vcpu}", undo)


_INJECT = {
    "backend-kill": _backend,
    "backend-freeze": _backend,
    "evtchn-drop": _evtchn,
    "evtchn-delay": _evtchn,
    "xs-refuse": _xenstore,
    "xs-delay": _xenstore,
    "vcpu-freeze": _vcpu,
}
assert set(_INJECT) == set(USAGE) == set(OUTCOMES)
