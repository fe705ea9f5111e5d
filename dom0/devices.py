"""The toolstack's device types (libxl's ``libxl__device_type``, ``DEFINE_DEVICE_TYPE_STRUCT``).

One record per kind of split device says what the toolstack needs to know of it:
its xl.cfg key, how to check its back-end resource before a domain exists, the
nodes of its front-end and back-end directories, its hotplug verbs and the
xentop field its counters go to. Create, destroy, ``list -l``, ``top`` and the
attach/detach verbs loop over :data:`DEVICE_TYPES`; a new device adds a row.

Device specs are the dicts ``xenlike.tools.config`` produces (``DiskSpec.to_dict``);
every spec has a ``devid``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xenlike.public import blkif
from xenlike.public.vdisk import MODEL_SPLIT
from xenlike.public.xenbus import BACKEND_ID, FRONTEND_ID, ONLINE, STATE, XenbusState

from .blkback.vbd import open_image
from .netback.bridge import guest_address, network_support

__all__ = ["DeviceType", "DEVICE_TYPES", "VBD", "VIF", "device_type", "vif_name"]

Spec = dict[str, Any]


@dataclass(frozen=True)
class DeviceType:
    """What the toolstack knows of one kind of split device."""

    kind: str  # the xenbus device type: backend/<kind>, device/<kind>
    config_key: str  # the xl.cfg list that holds its specs ("disk")
    verbs: tuple[str, str, str]  # xl's attach, detach and list verbs
    top_field: str  # where `top` puts its counters ("vbds", as libxenstat)
    prepare: Callable[[Spec], None]  # check (or create) the back end's resource; raises OSError
    frontend_nodes: Callable[[int, Spec], dict[str, str]]
    backend_nodes: Callable[[int, Spec], dict[str, str]]
    name_of: Callable[[Spec], str]  # how a user names one ("xvda")
    # Hypercalls (multicall entries) that give the domain the device's platform side before its
    # nodes appear, and take it back once it is gone: a vif's net device in the guest.
    plug: Callable[[int, Spec], list[dict]] = lambda domid, spec: []
    unplug: Callable[[int, Spec], list[dict]] = lambda domid, spec: []
    # Whether a spec is a split device on xenbus; a disk of another model is the hypervisor's (vdisk).
    on_xenbus: Callable[[Spec], bool] = lambda spec: True


def _vbd_prepare(disk: Spec) -> None:
    """Check that dom0 can open a disk's image (creating a sparse one for ``size=``)."""
    open_image(disk["target"], disk["access"] == "ro", disk.get("size")).close()


def _vbd_frontend_nodes(domid: int, disk: Spec) -> dict[str, str]:
    """libxl_disk.c's front-end nodes (libxl__device_disk_add)."""
    return {
        BACKEND_ID: "0",
        STATE: str(int(XenbusState.Initialising)),
        blkif.VIRTUAL_DEVICE: str(disk["devid"]),
        blkif.DEVICE_TYPE_KEY: disk["devtype"],
    }


def _vbd_backend_nodes(domid: int, disk: Spec) -> dict[str, str]:
    """libxl_disk.c's back-end nodes: what blkback's probe reads (see ``xenlike.public.blkif``)."""
    return {
        FRONTEND_ID: str(domid),
        ONLINE: "1",
        "removable": "0",
        "bootable": "1",
        STATE: str(int(XenbusState.Initialising)),
        blkif.DEV: disk["vdev"],
        "type": "phy",
        blkif.MODE: "r" if disk["access"] == "ro" else "w",
        blkif.DEVICE_TYPE_KEY: disk["devtype"],
        blkif.PARAMS: disk["target"],
        blkif.DISCARD_ENABLE: "1" if disk.get("discard", True) else "0",
    }


VBD = DeviceType(
    kind=blkif.DEVICE_TYPE,
    config_key="disk",
    verbs=("block-attach", "block-detach", "block-list"),
    top_field="vbds",
    prepare=_vbd_prepare,
    frontend_nodes=_vbd_frontend_nodes,
    backend_nodes=_vbd_backend_nodes,
    name_of=lambda disk: disk["vdev"],
    on_xenbus=lambda disk: disk.get("model", MODEL_SPLIT) == MODEL_SPLIT,
)


def vif_name(domid: int, vif: Spec) -> str:
    """The back end's interface: ``vifname=``, else ``vif<domid>.<devid>`` (xl-network-configuration(5))."""
    return vif.get("vifname") or f"vif{domid}.{vif['devid']}"


def _vif_prepare(vif: Spec) -> None:
    """A vif needs TAP devices, bridges and namespaces on this host (and root to make them)."""
    missing = network_support()
    if missing is not None:
        raise OSError(f"a vif needs {missing}, which this host lacks; a domain without vif = [...] needs none")


def _vif_frontend_nodes(domid: int, vif: Spec) -> dict[str, str]:
    """libxl_nic.c's front-end nodes (``libxl__device_nic_add``)."""
    return {
        BACKEND_ID: "0",
        STATE: str(int(XenbusState.Initialising)),
        "handle": str(vif["devid"]),
        "mac": vif["mac"],
        "mtu": str(vif["mtu"]),
        "trusted": "1" if vif.get("trusted", True) else "0",
    }


def _vif_backend_nodes(domid: int, vif: Spec) -> dict[str, str]:
    """libxl_nic.c's back-end nodes: what netback and the ``vif-bridge`` step read."""
    address, _gateway = guest_address(domid, vif["devid"], vif.get("ip"))
    nodes = {
        FRONTEND_ID: str(domid),
        ONLINE: "1",
        STATE: str(int(XenbusState.Initialising)),
        "script": "vif-bridge",
        "mac": vif["mac"],
        "bridge": vif["bridge"],
        "handle": str(vif["devid"]),
        "type": "vif",
        "mtu": str(vif["mtu"]),
        "vifname": vif_name(domid, vif),
        "hotplug-status": "",
    }
    if address is not None:
        nodes["ip"] = str(address.ip)
    if vif.get("rate_interval_us"):
        nodes["rate"] = f"{vif['rate_bytes_per_interval']},{vif['rate_interval_us']}"
    return nodes


def _vif_plug(domid: int, vif: Spec) -> list[dict]:
    address, gateway = guest_address(domid, vif["devid"], vif.get("ip"))
    args = {"cmd": "netif_plug", "domid": domid, "devid": vif["devid"], "mac": vif["mac"], "mtu": vif["mtu"]}
    return [{"op": "domctl", "args": {**args, "address": str(address) if address else None, "gateway": gateway}}]


def _vif_unplug(domid: int, vif: Spec) -> list[dict]:
    return [{"op": "domctl", "args": {"cmd": "netif_unplug", "domid": domid, "devid": vif["devid"]}}]


VIF = DeviceType(
    kind="vif",
    config_key="vif",
    verbs=("network-attach", "network-detach", "network-list"),
    top_field="nets",
    prepare=_vif_prepare,
    frontend_nodes=_vif_frontend_nodes,
    backend_nodes=_vif_backend_nodes,
    name_of=lambda vif: vif["mac"],
    plug=_vif_plug,
    unplug=_vif_unplug,
)

DEVICE_TYPES: tuple[DeviceType, ...] = (VBD, VIF)


def device_type(kind: str) -> DeviceType:
    """The row of a xenbus device type; KeyError names the types there are."""
    for row in DEVICE_TYPES:
        if row.kind == kind:
            return row
    raise KeyError(f"no device type {kind!r} (there are {', '.join(r.kind for r in DEVICE_TYPES)})")
