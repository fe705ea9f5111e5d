"""Fault injection: ``xenlike inject KIND ...``, ``--list``, ``--clear [ID]`` (``dom0/faults.py`` says what
each fault does and what follows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenlike.public import blkif
from xenlike.public.vdisk import MODEL_SPLIT

from ..faults import (
    OUTCOMES,
    RING_CORRUPTIONS,
    Fault,
    FaultError,
    check_xs_rule,
    freeze_worker,
    kill_worker,
    parse_sector_range,
    traced,
)
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from ..blkback import BlkbackDriver
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
    "sector-eio": "DOMAIN DEVICE FIRST[-LAST]",
    "ring-corrupt": "DOMAIN DEVICE slot|index",
}
INJECT_TIMEOUT_S = 5.0  # how long a worker may take to have a fault in force before inject answers anyway


def inject(ts: Toolstack, request: Request) -> None:
    """Inject one fault; answers its id, what it targets and its documented outcome.

    A fault a back-end worker applies is answered once the worker has it in
    force (it answered a stats request sent after it), so I/O after ``inject``
    returns meets it.
    """
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
    if isinstance(fault, Fault):
        request.reply(fault.describe())
        return
    fault, in_force = fault
    ts.poll(in_force, INJECT_TIMEOUT_S, lambda ok: request.reply(fault.describe()), request=request)


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
    for disk in built.config.get("disk", []):
        model = disk.get("model", MODEL_SPLIT)
        if model != MODEL_SPLIT and devid_text in (str(disk.get("vdev")), str(disk.get("devid"))):
            raise FaultError(
                f"{built.name}'s {device} is a {model} disk, which no back-end worker serves: "
                "this fault needs a split (blkfront/blkback) disk"
            )
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


def _vbd(ts: Toolstack, words: list[str]) -> tuple[XenbusDevice, BlkbackDriver]:
    dev = _device(ts, words[0], words[1])
    if dev.devicetype != blkif.DEVICE_TYPE:
        raise FaultError(f"{words[0]}'s {words[1]} is a {dev.devicetype}, not a disk (vbd)")
    driver: BlkbackDriver = ts.backends.drivers[blkif.DEVICE_TYPE]  # type: ignore[assignment]
    return dev, driver


def _answered(dev: XenbusDevice, number: int | None) -> Callable[[], bool]:
    """Whether the worker answered stats request ``number`` (or is gone): the fault is then in force."""
    worker = dev.worker
    return lambda: number is None or dev.worker is not worker or worker is None or worker.answered >= number


def _sector_eio(ts: Toolstack, kind: str, words: list[str]) -> tuple[Fault, Callable[[], bool]]:
    dev, driver = _vbd(ts, words)
    first, last = parse_sector_range(words[2], dev.drvdata.sectors)
    fault = ts.injected.add(kind, f"{words[0]} {words[1]} sectors {first}-{last}", None)
    number = driver.fail_sectors(dev, fault.id, (first, last))
    traced(kind, device=dev.label, first=first, last=last)

    def undo() -> None:
        if ts.backends.device(*dev.key) is dev:
            driver.fail_sectors(dev, fault.id, None)

    fault.undo = undo
    return fault, _answered(dev, number)


def _ring_corrupt(ts: Toolstack, kind: str, words: list[str]) -> tuple[Fault, Callable[[], bool]]:
    dev, _driver = _vbd(ts, words)
    what = words[2]
    if what not in RING_CORRUPTIONS:
        raise FaultError(f"ring-corrupt scribbles a request slot or the ring's index: slot or index, not {what!r}")
    worker = dev.worker
    assert worker is not None  # _device checked it
    number = worker.inject({"ring_corrupt": what})
    fault = ts.injected.add(kind, f"{words[0]} {words[1]} {what} (worker pid {worker.pid})", None, done=True)
    return fault, _answered(dev, number)


_INJECT: dict[str, Callable[[Toolstack, str, list[str]], Any]] = {
    "backend-kill": _backend,
    "backend-freeze": _backend,
    "evtchn-drop": _evtchn,
    "evtchn-delay": _evtchn,
    "xs-refuse": _xenstore,
    "xs-delay": _xenstore,
    "vcpu-freeze": _vcpu,
    "sector-eio": _sector_eio,
    "ring-corrupt": _ring_corrupt,
}
assert set(_INJECT) == set(USAGE) == set(OUTCOMES)
