"""The domain builder: what libxl's ``libxl__domain_make`` and libxc's ``xc_dom_*`` do.

To create a domU, dom0:

1. asks the hypervisor to create the domain (``domctl createdomain``): memory is
   reserved from the host pool, a memfd made; dom0 gets the fd, as a privileged
   domain may map foreign memory;
2. allocates the guest's xenstore and console event channels
   (``alloc_unbound`` for the guest, remote dom0) and binds dom0's ends;
3. writes the start info page, and grant entries 0 (console page) and 1 (xenstore
   page) for dom0, as ``xc_dom_gnttab_init`` does; maps those grants;
4. starts the domain (``domctl startdomain``): the hypervisor hands it to a
   process the zygote forked ahead of time;
5. INTRODUCEs the domain to xenstored, attaches xenconsoled to its console page,
   and writes its nodes (``/local/domain/<id>``, ``/vm/<uuid>``, ``/libxl/<id>``)
   with libxl's permissions.

Teardown undoes it in reverse. Nothing here waits for the guest, so creation costs
a handful of hypercalls and in-process xenstore writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenlike.kernel import trace
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.memory import GuestMemory
from xenlike.public.console import ConsoleInterface
from xenlike.public.grant_table import DEFAULT_MAX_GRANT_FRAMES, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE
from xenlike.public.start_info import CONSOLE_PFN, GNTTAB_PFN, START_INFO_PFN, STORE_PFN, StartInfo
from xenlike.public.trace import Event, TraceClass
from xenlike.public.vcpu import OFFLINE, ONLINE, availability_path
from xenlike.public.vdisk import VDISKS_NODE
from xenlike.public.workload_state import WORKLOAD_DIR
from xenlike.public.xenbus import BACKEND, FRONTEND, backend_path, frontend_path
from xenlike.public.xs_wire import XenstoreInterface, XsError

from .blkback.vbd import open_image
from .devices import DEVICE_TYPES, VBD, DeviceType
from .netback.bridge import guest_address
from .netback.forward import listen

if TYPE_CHECKING:
    from .context import BuilderContext

__all__ = ["BuiltDomain", "DomainBuilder", "home"]

log = logging.getLogger("dom0.builder")

# Nodes under a domain's home that the guest owns and may write (libxl_create.c rwperm),
# and xenlike's ~/workload, where the guest reports its workload starting.
GUEST_WRITABLE = (
    "control/shutdown",
    "control/feature-poweroff",
    "control/feature-reboot",
    "control/feature-suspend",
    "control/sysrq",
    "memory/balloon",
    "data",
    "drivers",
    "feature",
    "attr",
    "error",
    WORKLOAD_DIR,
)


def home(domid: int) -> str:
    return f"/local/domain/{domid}"


def max_vcpus(config: dict[str, Any]) -> int:
    """The vCPUs a domain has (``maxvcpus``, else ``vcpus``), of which ``vcpus`` are online."""
    return int(config.get("maxvcpus") or config.get("vcpus", 1))


@dataclass
class BuiltDomain:
    """A domU as dom0's toolstack keeps it."""

    domid: int
    name: str
    uuid: str
    config: dict[str, Any]
    memory: GuestMemory
    store_port: int  # dom0's end of the guest's xenstore event channel
    console_port: int  # dom0's end of the console event channel
    grant_handles: list[int]
    created: float = field(default_factory=time.time)
    restarts: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"d{self.domid} ({self.name})"


class DomainBuilder:
    """Creates and tears down domUs on behalf of the toolstack."""

    def __init__(self, ctx: BuilderContext) -> None:
        self.ctx = ctx

    def create(
        self,
        config: dict[str, Any],
        *,
        paused: bool = False,
        uuid: str | None = None,
        restore: Callable[[BuiltDomain], dict[str, Any]] | None = None,
        precreated: tuple[dict[str, Any], int] | None = None,
    ) -> BuiltDomain:
        """Build and start a domain from a validated config dict; returns it running.

        Two multicalls make the whole build: (1) create the domain, allocate its
        xenstore and console event channels and bind dom0's ends; then, after the
        start info and grant entries are written, (2) map the two grants and
        start the guest. The guest starts before its xenstore nodes are written:
        it needs none to boot, and as dom0 serves xenstore only from its main
        loop, the guest's first request is answered after the nodes exist.

        ``restore(built)``, for a restore, fills the new domain's memory from an
        image before the start info is written, and returns what the start
        info's image gains (``resume``: where the guest's suspend record is).
        ``precreated`` is a domain already made by ``createdomain`` (its result
        and memfd), as an incoming migration makes one to write its pages into
        as they arrive; it is renamed to the config's name and built from there.
        """
        for row in DEVICE_TYPES:
            for spec in config.get(row.config_key, []):
                row.prepare(spec)  # a target dom0 cannot open fails here, before any domain exists
        if config.get("ports") and not config.get("vif"):  # a config from an image or a sender is not parsed here
            raise ValueError("ports need a vif to forward to (a forward reaches the first vif)")
        listeners = self._listen(config)  # so does a forward's host port in use
        try:
            built = self._build(config, paused, uuid, restore, precreated)
        except BaseException:
            for sock, _port in listeners:
                sock.close()
            raise
        if listeners:
            self._forward(built, listeners)
        log.info("%s: created (%d MiB, workload %s)", built.label, config["memory"], config.get("workload", "idle"))
        return built

    def _build(
        self,
        config: dict[str, Any],
        paused: bool,
        uuid: str | None,
        restore: Callable[[BuiltDomain], dict[str, Any]] | None,
        precreated: tuple[dict[str, Any], int] | None = None,
    ) -> BuiltDomain:
        ctx = self.ctx
        gnttab_frames = int(config.get("max_grant_frames", DEFAULT_MAX_GRANT_FRAMES))
        if precreated is None:
            domid_of: Any = {"$result": [0, "domid"]}
            first = [{"op": "domctl", "args": self.createdomain_args(config, uuid)}]
        else:
            domid_of = precreated[0]["domid"]
            first = []
            ctx.hypercall("domctl", cmd="rename", domid=domid_of, name=config["name"])
        at = len(first)  # where the channel calls' results start
        with trace.span(Event.DOM_STEP, {"step": "createdomain", "name": config["name"]}) as step:
            results = ctx.multicall(
                [
                    *first,
                    {"op": "evtchn_alloc_unbound", "args": {"dom": domid_of, "remote_dom": 0}},
                    {"op": "evtchn_alloc_unbound", "args": {"dom": domid_of, "remote_dom": 0}},
                    {
                        "op": "evtchn_bind_interdomain",
                        "args": {"remote_dom": domid_of, "remote_port": {"$result": [at, "port"]}},
                    },
                    {
                        "op": "evtchn_bind_interdomain",
                        "args": {"remote_dom": domid_of, "remote_port": {"$result": [at + 1, "port"]}},
                    },
                ],
                undo=self._undo_create if precreated is None else None,
            )
            created = results[0] if precreated is None else (precreated[0], [precreated[1]])
            step["dom"] = created[0]["domid"]
        store, console, store_bind, console_bind = results[at:]
        domid = created[0]["domid"]
        memory = GuestMemory.from_fd(created[1][0], created[0]["nr_frames"])
        store_port = ctx.adopt_port(*store_bind)
        console_port = ctx.adopt_port(*console_bind)
        ports = (store[0]["port"], console[0]["port"])
        built = BuiltDomain(
            domid, config["name"], created[0]["uuid"], dict(config), memory, store_port, console_port, []
        )
        try:
            extra = restore(built) if restore is not None else {}
            with trace.span(Event.DOM_STEP, {"step": "start_info", "dom": domid}):
                self._write_start_info(built, gnttab_frames, *ports, extra=extra)
            self._assign_vdisks(built)
            plugs = [
                call
                for row in DEVICE_TYPES
                for spec in config.get(row.config_key, [])
                for call in row.plug(domid, spec)
            ]
            with trace.span(Event.DOM_STEP, {"step": "map_and_start", "dom": domid, "paused": paused}):
                mapped, *_plugged = ctx.multicall(
                    [
                        {
                            "op": "grant_map",
                            "args": {"granter": domid, "refs": [GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE]},
                        },
                        *plugs,  # a vif's net device exists before netfront asks for it
                        {"op": "domctl", "args": {"cmd": "startdomain", "domid": domid, "paused": paused}},
                    ]
                )
            built.grant_handles = mapped[0]["handles"]
            console_pfn, store_pfn = mapped[0]["frames"]
            with trace.span(Event.DOM_STEP, {"step": "connect_xenstore_console", "dom": domid}):
                ctx.xenstore_service.connect_domain(
                    domid, XenstoreInterface(memory.frame(store_pfn)), store_port, built.label
                )
                ctx.xenconsoled.add(domid, built.name, ConsoleInterface(memory.frame(console_pfn)), console_port)
            with trace.span(Event.DOM_STEP, {"step": "write_nodes", "dom": domid}):
                self._write_nodes(built, *ports)  # the back-end bus probes each device it finds there
        except BaseException:
            log.exception("%s: build failed; destroying it", built.label)
            self.destroy(built)
            raise
        if trace.on(TraceClass.LIFECYCLE):
            trace.emit(Event.DOM_ADD, {"dom": domid, "name": built.name, "memory": config["memory"]})
        return built

    def _listen(self, config: dict[str, Any]) -> list[tuple[Any, int]]:
        """The host's side of a domain's ``ports``: a listener on 127.0.0.1 for each, or OSError naming the port."""
        listeners: list[tuple[Any, int]] = []
        try:
            for forward in config.get("ports", []):
                listeners.append((listen(forward["host_port"]), forward["guest_port"]))
        except BaseException:
            for sock, _port in listeners:
                sock.close()
            raise
        return listeners

    def _forward(self, built: BuiltDomain, listeners: list[tuple[Any, int]]) -> None:
        """Relay the domain's ``ports`` to its first vif's address."""
        forwards = self.ctx.forwards
        vif = built.config["vif"][0]
        address, _gateway = guest_address(built.domid, vif["devid"], vif.get("ip"))
        if forwards is None or address is None:
            for sock, _port in listeners:
                sock.close()
            log.warning(
                "%s: its ports are not forwarded: %s",
                built.label,
                "no back-end network" if forwards is None else "its first vif has no IPv4 address",
            )
            return
        forwards.add(built.domid, built.label, str(address.ip), listeners)

    @staticmethod
    def createdomain_args(config: dict[str, Any], uuid: str | None = None) -> dict[str, Any]:
        """``domctl createdomain``'s arguments for a config."""
        return {
            "cmd": "createdomain",
            "name": config["name"],
            "memory_mib": config["memory"],
            "maxmem_mib": config.get("maxmem") or config["memory"],
            "vcpus": config.get("vcpus", 1),
            "max_vcpus": max_vcpus(config),
            "max_grant_frames": int(config.get("max_grant_frames", DEFAULT_MAX_GRANT_FRAMES)),
            "uuid": uuid or config.get("uuid"),
            # libxl's sched_params and cpumap, applied at creation (libxl__build_pre)
            "weight": config.get("weight", 256),
            "cap": config.get("cap", 0),
            "cpus": config.get("cpus"),
        }

    def _undo_create(self, results: list[dict]) -> None:
        """A failed first multicall: destroy the domain if it was created."""
        if results:
            self.ctx.hypercall("domctl", cmd="destroydomain", domid=results[0]["domid"])

    def _write_start_info(
        self,
        built: BuiltDomain,
        gnttab_frames: int,
        store_evtchn: int,
        console_evtchn: int,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Frame 0's start info and grant entries 0 and 1 for dom0 (``xc_dom_gnttab_init``)."""
        config = built.config
        image = {
            "name": built.name,
            "uuid": built.uuid,
            "workload": config.get("workload", "idle"),
            "workload_args": list(config.get("workload_args", [])),
            "extra": config.get("cmdline") or config.get("extra", ""),  # xl: cmdline, else root= + extra
            "vcpus": config.get("vcpus", 1),  # online at boot; the kernel follows cpu/N/availability after
            "max_vcpus": max_vcpus(config),
            "disks": [disk["vdev"] for disk in config.get("disk", []) if VBD.on_xenbus(disk)],  # blkfront's
            "vifs": [vif["devid"] for vif in config.get("vif", [])],  # the kernel brings them up before the workload
            **(extra or {}),
        }
        StartInfo(
            nr_pages=built.memory.nr_frames,
            domid=built.domid,
            store_evtchn=store_evtchn,
            console_evtchn=console_evtchn,
            gnttab_frames=gnttab_frames,
            image=image,
        ).write(built.memory.frame(START_INFO_PFN))
        grants = GrantTable(built.memory, GNTTAB_PFN, gnttab_frames)
        grants.grant_access_ref(GNTTAB_RESERVED_CONSOLE, 0, CONSOLE_PFN)
        grants.grant_access_ref(GNTTAB_RESERVED_XENSTORE, 0, STORE_PFN)
        grants.release()

    def _assign_vdisks(self, built: BuiltDomain) -> None:
        """Give the hypervisor each direct or passthrough disk's image, before the guest starts and asks for them.

        dom0 opens the image (read-only for an ``access=ro`` disk), as blkback's
        probe does for a split disk; the hypervisor keeps a copy of the fd with the domain.
        """
        for disk in built.config.get("disk", []):
            if not VBD.on_xenbus(disk):
                self._assign_vdisk(built, disk)

    def _assign_vdisk(self, built: BuiltDomain, disk: dict[str, Any]) -> None:
        vbd = open_image(disk["target"], disk["access"] == "ro", disk.get("size"))
        try:
            self.ctx.hypercall(
                "domctl",
                fds=[vbd.fd],
                cmd="assign_vdisk",
                dom=built.domid,
                vdev=disk["vdev"],
                devid=disk["devid"],
                model=disk["model"],
                sectors=vbd.sectors,
                readonly=vbd.readonly,
            )
        finally:
            vbd.close()

    def attach_vdisk(self, built: BuiltDomain, disk: dict[str, Any]) -> None:
        """Hotplug a direct or passthrough disk: the hypervisor takes its image, then the guest is told to look.

        OSError (the hypervisor's refusal) or ValueError (a vdev or devid in use).
        """
        present = built.config.get("disk", [])
        if any(d["vdev"] == disk["vdev"] or d["devid"] == disk["devid"] for d in present):
            raise ValueError(f"{built.label} already has a disk {disk['vdev']}")
        self._assign_vdisk(built, disk)
        built.config.setdefault("disk", []).append(disk)
        self._vdisks_changed(built)

    def detach_vdisk(self, built: BuiltDomain, disk: dict[str, Any]) -> None:
        """Take a direct disk back (``domctl deassign_vdisk``) and tell the guest; OSError if the hypervisor refuses."""
        self.ctx.hypercall("domctl", cmd="deassign_vdisk", dom=built.domid, devid=disk["devid"])
        built.config["disk"] = [d for d in built.config.get("disk", []) if d["devid"] != disk["devid"]]
        self._vdisks_changed(built)

    def _vdisks_changed(self, built: BuiltDomain) -> None:
        """Bump :data:`~xenlike.public.vdisk.VDISKS_NODE` (dom0's; the guest may read it), which the guest watches."""
        path = f"{home(built.domid)}/{VDISKS_NODE}"
        try:
            count = int(self.ctx.xs.read(path).decode()) + 1
        except (XsError, ValueError):
            count = 1
        self.ctx.xs.write(path, str(count), perms=["n0", f"r{built.domid}"])

    def _write_nodes(self, built: BuiltDomain, store_evtchn: int, console_evtchn: int) -> None:
        """The xenstore nodes of a new domain, with libxl's permissions, in one transaction.

        The home and ``/vm/<uuid>`` get ``[n0, r<domid>]`` first; their children
        inherit it, so only the guest-writable nodes need a permission change.
        """
        domid, config = built.domid, built.config
        base = home(domid)
        ro = ["n0", f"r{domid}"]
        memory_kb = config["memory"] * 1024
        maxmem_kb = (config.get("maxmem") or config["memory"]) * 1024
        vm = f"/vm/{built.uuid}"
        nodes = {
            "name": built.name,
            "domid": str(domid),
            "vm": vm,
            "memory/static-max": str(maxmem_kb),
            "memory/target": str(memory_kb),
            "store/port": str(store_evtchn),
            "store/ring-ref": str(STORE_PFN),
            "console/port": str(console_evtchn),
            "console/ring-ref": str(CONSOLE_PFN),
            "console/type": "xenconsoled",
            "console/limit": str(1 << 20),
            "control/platform-feature-multiprocessor-suspend": "0",
            "device": "",
        }
        online = int(config.get("vcpus", 1))
        for vcpu in range(max_vcpus(config)):  # libxl__set_vcpuonline_xenstore
            nodes[availability_path(vcpu)] = ONLINE if vcpu < online else OFFLINE

        def write_all(tx: int) -> None:
            xs = self.ctx.xs
            xs.write(base, "", perms=ro, tx=tx)
            xs.write(vm, "", perms=ro, tx=tx)
            xs.write(f"/libxl/{domid}", "", perms=["n0"], tx=tx)
            for key, value in nodes.items():
                xs.write(f"{base}/{key}", value, tx=tx)
            for key in GUEST_WRITABLE:
                xs.write(f"{base}/{key}", "", perms=[f"n{domid}"], tx=tx)
            for key, value in {"uuid": built.uuid, "name": built.name, "start_time": f"{built.created:.2f}"}.items():
                xs.write(f"{vm}/{key}", value, tx=tx)
            for action in ("on_poweroff", "on_reboot", "on_crash"):
                xs.write(f"/libxl/{domid}/{action}", str(config.get(action, "")), tx=tx)
            for row in DEVICE_TYPES:
                for spec in config.get(row.config_key, []):
                    if row.on_xenbus(spec):
                        self._write_device_nodes(row, domid, spec, tx)

        self.ctx.xs.transact(write_all)

    def _write_device_nodes(self, row: DeviceType, domid: int, spec: dict[str, Any], tx: int) -> None:
        """A device's front-end and back-end directories, linked (``libxl__device_generic_add``)."""
        xs = self.ctx.xs
        front = frontend_path(domid, row.kind, spec["devid"])
        back = backend_path(0, row.kind, domid, spec["devid"])
        xs.write(front, "", perms=[f"n{domid}", "r0"], tx=tx)
        xs.write(back, "", perms=["n0", f"r{domid}"], tx=tx)
        for key, value in {BACKEND: back, **row.frontend_nodes(domid, spec)}.items():
            xs.write(f"{front}/{key}", value, tx=tx)
        for key, value in {FRONTEND: front, **row.backend_nodes(domid, spec)}.items():
            xs.write(f"{back}/{key}", value, tx=tx)

    def attach_device(self, built: BuiltDomain, row: DeviceType, spec: dict[str, Any]) -> None:
        """Hotplug: write the device's nodes; the back-end bus probes it and the guest sees it appear."""
        if not row.on_xenbus(spec):
            raise ValueError(
                f"a {spec.get('model')} {row.config_key} is given when the domain is created, not hotplugged: "
                "attach it with model=split, or add it to the config"
            )
        present = built.config.get(row.config_key, [])
        if any(row.name_of(d) == row.name_of(spec) or d["devid"] == spec["devid"] for d in present):
            raise ValueError(f"{built.label} already has a {row.config_key} {row.name_of(spec)}")
        row.prepare(spec)
        for call in row.plug(built.domid, spec):
            self.ctx.hypercall(call["op"], **call["args"])
        self.ctx.xs.transact(lambda tx: self._write_device_nodes(row, built.domid, spec, tx))
        built.config.setdefault(row.config_key, []).append(spec)

    def remove_device_nodes(self, built: BuiltDomain, row: DeviceType, devid: int) -> None:
        """After a detach completed: the device's directories go, and it leaves the config."""
        for path in (frontend_path(built.domid, row.kind, devid), backend_path(0, row.kind, built.domid, devid)):
            try:
                self.ctx.xs.rm(path)
            except XsError:
                pass
        for spec in [d for d in built.config.get(row.config_key, []) if d["devid"] == devid]:
            for call in row.unplug(built.domid, spec):
                try:
                    self.ctx.hypercall(call["op"], **call["args"])
                except OSError as exc:
                    log.warning("%s: %s: %s", built.label, row.name_of(spec), exc)
        built.config[row.config_key] = [d for d in built.config.get(row.config_key, []) if d["devid"] != devid]

    def destroy(self, built: BuiltDomain) -> None:
        """Tear a domain down: its process, its rings, its nodes, its memory."""
        ctx = self.ctx
        if ctx.forwards is not None:
            ctx.forwards.remove(built.domid)
        ctx.backends.remove_domain(built.domid)
        ctx.xenconsoled.remove(built.domid)
        ctx.xenstore_service.release_domain(built.domid)
        for port in (built.store_port, built.console_port):
            ctx.close_port(port)
        if built.grant_handles:
            try:
                ctx.hypercall("grant_unmap", handles=built.grant_handles)
            except OSError:
                pass  # the domain's grants went with it
        try:
            ctx.hypercall("domctl", cmd="destroydomain", domid=built.domid)
        except OSError as exc:
            log.warning("%s: destroydomain: %s", built.label, exc)
        built.memory.close()
        backends = [backend_path(0, row.kind, built.domid, 0).rsplit("/", 1)[0] for row in DEVICE_TYPES]
        for path in (home(built.domid), f"/vm/{built.uuid}", f"/libxl/{built.domid}", *backends):
            try:
                ctx.xs.rm(path)
            except XsError:
                pass
        if trace.on(TraceClass.LIFECYCLE):
            trace.emit(Event.DOM_REM, {"dom": built.domid, "name": built.name})
        log.info("%s: destroyed", built.label)

    def rename(self, built: BuiltDomain, name: str) -> None:
        ctx = self.ctx
        ctx.hypercall("domctl", cmd="rename", domid=built.domid, name=name)
        ctx.xs.write(f"{home(built.domid)}/name", name)
        ctx.xs.write(f"/vm/{built.uuid}/name", name)
        ctx.xenconsoled.rename(built.domid, name)
        built.name = name
        built.config["name"] = name
