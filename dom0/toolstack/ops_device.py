"""Device operations: ``xl block-attach``, ``block-detach``, ``block-list`` (``tools/xl/xl_block.c``,
libxl's ``libxl_device_disk_add``/``_remove``), ``network-attach``, ``network-detach``, ``network-list``
(``tools/xl/xl_nic.c``, ``libxl_device_nic_add``/``_remove``), and the devices' counters in ``top``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenlike.public.vdisk import MODEL_DIRECT, MODEL_PASSTHROUGH, MODEL_SPLIT, model_limits
from xenlike.public.xenbus import NUMBER_MAX, XenbusState, backend_path, frontend_path
from xenlike.public.xs_wire import XsError

from ..devices import DEVICE_TYPES, VBD, VIF, DeviceType
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from ..builder import BuiltDomain
    from .server import Toolstack

__all__ = [
    "block_attach",
    "block_detach",
    "block_list",
    "detach_device",
    "network_attach",
    "network_detach",
    "network_list",
    "request_stats",
    "top_counters",
]

log = logging.getLogger("dom0.toolstack")

DEVICE_CLOSE_TIMEOUT_S = 10.0  # libxl's LIBXL_DESTROY_TIMEOUT


def block_attach(ts: Toolstack, request: Request) -> Any:
    """Hotplug a disk (``xl block-attach``): the guest sees it appear."""
    from xenlike.tools.config import parse_disk_spec

    built = ts.lifecycle.find(request.args["domain"])
    disk = parse_disk_spec(request.args["spec"]).to_dict()
    cwd = request.args.get("cwd")
    if isinstance(cwd, str) and os.path.isabs(cwd) and not os.path.isabs(disk["target"]):
        disk["target"] = os.path.normpath(os.path.join(cwd, disk["target"]))  # the caller's, not dom0's
    if VBD.on_xenbus(disk):
        ts.builder.attach_device(built, VBD, disk)
    else:  # direct or passthrough: the hypervisor takes the image, the guest lists its disks again
        try:
            ts.builder.attach_vdisk(built, disk)
        except (OSError, ValueError) as exc:
            raise ToolstackError(f"{built.label}: block-attach {disk['vdev']}: {_reason(exc)}") from None
    return {"vdev": disk["vdev"], "devid": disk["devid"], "model": disk["model"]}


def block_detach(ts: Toolstack, request: Request) -> None:
    """Unplug a disk (``xl block-detach``): online=0, Closing, wait for Closed (10 s), remove."""
    built = ts.lifecycle.find(request.args["domain"])
    vdev = request.args["vdev"]
    disk = next((d for d in built.config.get("disk", []) if vdev in (d["vdev"], str(d["devid"]))), None)
    if disk is None:
        raise ToolstackError(f"{built.label} has no disk {vdev!r}; `xenlike block-list {built.name}` shows its disks")
    model = disk.get("model", MODEL_SPLIT)
    if model == MODEL_PASSTHROUGH:
        raise ToolstackError(
            f"{built.label}'s {disk['vdev']} is a passthrough disk: the guest holds its image's fd and does its own "
            f"I/O, so it cannot be unplugged safely; shut the domain down (`xenlike shutdown {built.name}`) to free it"
        )
    if model == MODEL_DIRECT:  # the hypervisor serves it between two requests: none is half done
        try:
            ts.builder.detach_vdisk(built, disk)
        except OSError as exc:
            raise ToolstackError(f"{built.label}: block-detach {disk['vdev']}: {_reason(exc)}") from None
        request.reply({"vdev": disk["vdev"], "forced": False})
        return
    detach_device(ts, request, built, VBD, disk)


def _reason(exc: OSError | ValueError) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def detach_device(ts: Toolstack, request: Request, built: BuiltDomain, row: DeviceType, spec: dict[str, Any]) -> None:
    """Unplug any device (``libxl__device_destroy``): online=0 and Closing; once the back end is
    Closed (or after :data:`DEVICE_CLOSE_TIMEOUT_S`), forget it and remove its nodes; then reply."""
    backends = ts.backends
    key = (row.kind, built.domid, spec["devid"])
    backends.request_close(*key)

    def closed() -> bool:
        dev = backends.device(*key)
        return dev is None or dev.state == XenbusState.Closed

    def finish(ok: bool) -> None:
        if not ok:
            log.warning(
                "%s: %s did not close within %.0fs; removing it anyway",
                built.label,
                row.name_of(spec),
                DEVICE_CLOSE_TIMEOUT_S,
            )
        backends.remove(*key)
        ts.builder.remove_device_nodes(built, row, spec["devid"])
        request.reply({"vdev": row.name_of(spec), "forced": not ok})

    ts.poll(closed, DEVICE_CLOSE_TIMEOUT_S, finish, request=request)


def block_list(ts: Toolstack, request: Request) -> Any:
    """A domain's disks with their xenbus state, event channel and ring reference (``xl block-list``)."""
    built = ts.lifecycle.find(request.args["domain"])
    read = _node_reader(ts)
    number = _number_reader(read)

    rows = []
    for disk in built.config.get("disk", []):
        model = disk.get("model", MODEL_SPLIT)
        if model != MODEL_SPLIT:  # no xenbus device: the hypervisor (direct) or the guest (passthrough) serves it
            rows.append(
                {
                    "vdev": disk["devid"],
                    "name": disk["vdev"],
                    "backend": 0,
                    "frontend_id": built.domid,
                    "state": -1,
                    "evtch": -1,
                    "ring_ref": -1,
                    "be_path": "hypervisor" if model == MODEL_DIRECT else "guest",
                    "target": disk["target"],
                    "access": disk["access"],
                    "model": model,
                    **model_limits(model),
                }
            )
            continue
        front = frontend_path(built.domid, "vbd", disk["devid"])
        back = backend_path(0, "vbd", built.domid, disk["devid"])
        ring_ref = number(f"{front}/ring-ref")
        rows.append(
            {
                "vdev": disk["devid"],
                "name": disk["vdev"],
                "backend": 0,
                "frontend_id": built.domid,
                "state": number(f"{back}/state"),
                "evtch": number(f"{front}/event-channel"),
                "ring_ref": ring_ref if ring_ref != -1 else number(f"{front}/ring-ref0"),
                "be_path": back,
                "target": disk["target"],
                "access": disk["access"],
                "model": model,
                **model_limits(model),
            }
        )
    return rows


def network_attach(ts: Toolstack, request: Request) -> Any:
    """Hotplug a vif (``xl network-attach DOMAIN [SPEC]``): the guest sees eth<devid> appear."""
    from xenlike.tools.config import ConfigError, parse_vif_spec

    built = ts.lifecycle.find(request.args["domain"])
    present = built.config.get("vif", [])
    devid = max((vif["devid"] for vif in present), default=-1) + 1  # libxl: the next free devid
    try:
        vif = parse_vif_spec(str(request.args.get("spec", "")), devid).to_dict()
    except ConfigError as exc:
        raise ToolstackError(str(exc)) from None
    try:
        ts.builder.attach_device(built, VIF, vif)
    except (OSError, ValueError) as exc:
        raise ToolstackError(f"{built.label}: network-attach: {exc}") from None
    return {"devid": vif["devid"], "mac": vif["mac"], "name": f"eth{vif['devid']}"}


def network_detach(ts: Toolstack, request: Request) -> None:
    """Unplug a vif named by devid or MAC (``xl network-detach DOMAIN DEVID|MAC``)."""
    built = ts.lifecycle.find(request.args["domain"])
    which = str(request.args["vif"]).lower()
    vif = next((v for v in built.config.get("vif", []) if which in (str(v["devid"]), v["mac"])), None)
    if vif is None:
        raise ToolstackError(f"{built.label} has no vif {which!r}; `xenlike network-list {built.name}` shows its vifs")
    detach_device(ts, request, built, VIF, vif)


def network_list(ts: Toolstack, request: Request) -> Any:
    """A domain's vifs with their state, event channel and ring references (``xl network-list``)."""
    built = ts.lifecycle.find(request.args["domain"])
    read = _node_reader(ts)
    number = _number_reader(read)

    rows = []
    for vif in built.config.get("vif", []):
        front = frontend_path(built.domid, VIF.kind, vif["devid"])
        back = backend_path(0, VIF.kind, built.domid, vif["devid"])
        rows.append(
            {
                "idx": vif["devid"],
                "backend": 0,
                "mac": vif["mac"],
                "handle": vif["devid"],
                "state": number(f"{back}/state"),
                "evtch": number(f"{front}/event-channel"),
                "tx_ring_ref": number(f"{front}/tx-ring-ref"),
                "rx_ring_ref": number(f"{front}/rx-ring-ref"),
                "be_path": back,
                "bridge": vif["bridge"],
                "ip": read(f"{back}/ip"),
            }
        )
    return rows


def _node_reader(ts: Toolstack) -> Callable[[str], str]:
    """``read(path)``: a node's value, or ``"-1"`` for one that is not there (as xl prints a missing field)."""

    def read(path: str) -> str:
        try:
            return ts.xs.read(path).decode(errors="replace")  # a front end's nodes hold what the guest wrote
        except XsError:
            return "-1"

    return read


def _number_reader(read: Callable[[str], str]) -> Callable[[str], int]:
    """``number(path)``: a node's integer, or -1 for one that is missing or no uint32_t (as xl prints either)."""

    def number(path: str) -> int:
        text = read(path)
        if not (text.isascii() and text.isdigit() and len(text) <= 10):
            return -1
        value = int(text)
        return value if value <= NUMBER_MAX else -1

    return number


def request_stats(ts: Toolstack) -> Callable[[], bool]:
    """Ask the back ends for their devices' live counters; returns "have all answered?"."""
    return ts.backends.request_stats()


def top_counters(ts: Toolstack, domid: int) -> dict[str, Any]:
    """A domain's device counters for its xentop row, one list per device type (``vbds``, ``nets``),
    one entry per device (None for one no back end knows), and under ``devids`` each list's
    device ids in the same order (xenstat_vbd_dev, the number xentop's ``-x`` lines show)."""
    built = ts.domains.get(domid)
    counters: dict[str, Any] = {"devids": {}}
    for row in DEVICE_TYPES:
        specs = built.config.get(row.config_key, []) if built is not None else []
        counters[row.top_field] = [_device_stats(ts, row.kind, domid, spec["devid"]) for spec in specs]
        counters["devids"][row.top_field] = [spec["devid"] for spec in specs]
    return counters


def _device_stats(ts: Toolstack, devicetype: str, domid: int, devid: int) -> dict[str, int] | None:
    """A device's last counters ({} before its worker first reported), None if no back end has it."""
    dev = ts.backends.device(devicetype, domid, devid)
    return None if dev is None else dict(dev.stats)
