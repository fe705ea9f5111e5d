"""The block back end's xenbus side (Linux ``drivers/block/xen-blkback/xenbus.c``).

For each ``backend/vbd/<front>/<devid>`` directory the toolstack writes, blkback:

1. probes: opens the image named by ``params``, publishes ``sectors``,
   ``sector-size``, ``info``, ``mode`` and the ``feature-*`` keys and
   ``max-ring-page-order``, and moves to InitWait;
2. when the front end reaches Initialised (or Connected), reads ``ring-ref``/
   ``ring-refN``, ``ring-page-order``, ``event-channel``, ``protocol`` and
   ``feature-persistent``, binds the event channel, starts the device's worker
   process, and moves to Connected;
3. follows the front end to Closing and Closed, stopping the worker (which
   unmaps every grant) and closing the event channel; with ``online`` = 0 the
   device is then forgotten.

Watch events arrive on an in-process xenstore connection and are handled from
dom0's main loop, after the request that caused them.

A connected device's live counters (xentop's VBD_* columns) come from its worker:
:meth:`Blkback.request_stats` asks every worker, the replies arrive on the
control sockets like any other worker message and are kept on the device.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from xenlike.public.blkif import SECTOR_SIZE, VDISK_CDROM, VDISK_READONLY, XEN_IO_PROTO_ABI_NATIVE
from xenlike.kernel.hypercall import recv_message, send_message
from xenlike.public.xenbus import XenbusState, backend_path, frontend_path
from xenlike.public.xs_wire import XsError

from ..xenstored import LocalXenstore
from .blkback import MAX_INDIRECT_SEGMENTS, MAX_RING_PAGE_ORDER, ring_refs_of
from .vbd import Vbd, open_image
from .worker import spawn_worker

if TYPE_CHECKING:
    import socket

    from ..main import Dom0

__all__ = ["Blkback", "BlkbackDevice", "BackendError"]

log = logging.getLogger("dom0.blkback")
WORKER_START_TIMEOUT_S = 10.0
WORKER_STOP_TIMEOUT_S = 5.0


class BackendError(Exception):
    """The front end's parameters cannot be used; the device goes to Closing."""


@dataclass
class BlkbackDevice:
    frontend: int
    devid: int
    vdev: str
    vbd: Vbd | None = None
    port: int | None = None  # dom0's end of the event channel
    worker: int | None = None
    control: "socket.socket | None" = None
    channel: int | None = None  # the worker's hypercall channel (domctl open_channel)
    state: XenbusState = XenbusState.Initialising
    stats: dict[str, int] = field(default_factory=dict)  # the worker's last counters (BlkifRing.stats)
    stats_asked: int = 0  # stats requests sent to its workers
    stats_answered: int = 0  # and answered (a worker answers in order; a stopped one's count as answered)

    @property
    def backend(self) -> str:
        return backend_path(0, "vbd", self.frontend, self.devid)

    @property
    def front(self) -> str:
        return frontend_path(self.frontend, "vbd", self.devid)

    @property
    def label(self) -> str:
        return f"d{self.frontend} {self.vdev}"


class Blkback:
    """Every vbd back end of this dom0."""

    def __init__(self, dom0: "Dom0") -> None:
        self.dom0 = dom0
        self.watcher = LocalXenstore(dom0.xenstore_service.daemon)
        self.devices: dict[tuple[int, int], BlkbackDevice] = {}

    @property
    def xs(self) -> LocalXenstore:
        return self.dom0.xs

    # -- events ------------------------------------------------------------------------

    def process_events(self) -> None:
        """Handle queued watch events (from dom0's main loop)."""
        for path, token in self.watcher.pop_events():
            key = _device_key(token)
            device = self.devices.get(key) if key else None
            if device is not None:
                self._frontend_changed(device)

    # -- probe ---------------------------------------------------------------------------

    def probe(self, frontend: int, devid: int) -> BlkbackDevice:
        """A new device the toolstack wrote: open its image, publish features, InitWait."""
        vdev = self._read(backend_path(0, "vbd", frontend, devid), "dev") or str(devid)
        device = BlkbackDevice(frontend, devid, vdev)
        params = self._read(device.backend, "params")
        readonly = self._read(device.backend, "mode") == "r"
        device.vbd = open_image(params or "", readonly)
        self.devices[(frontend, devid)] = device
        cdrom = self._read(device.backend, "device-type") == "cdrom"
        info = (VDISK_READONLY if readonly else 0) | (VDISK_CDROM if cdrom else 0)
        features = {
            "feature-flush-cache": "1",
            "feature-discard": "0" if readonly else "1",
            "discard-granularity": "4096",
            "discard-alignment": "0",
            "discard-secure": "0",
            "feature-barrier": "0",
            "feature-persistent": "1",
            "feature-max-indirect-segments": str(MAX_INDIRECT_SEGMENTS),
            "max-ring-page-order": str(MAX_RING_PAGE_ORDER),
            "sectors": str(device.vbd.sectors),
            "sector-size": str(SECTOR_SIZE),
            "physical-sector-size": str(SECTOR_SIZE),
            "info": str(info),
        }

        def publish(tx: int) -> None:
            for key, value in features.items():
                self.xs.write(f"{device.backend}/{key}", value, tx=tx)

        self.xs.transact(publish)
        self._switch(device, XenbusState.InitWait)
        self.watcher.watch(f"{device.front}/state", f"blkback:{frontend}:{devid}")
        log.info("%s: probed %s (%d sectors%s)", device.label, params, device.vbd.sectors, ", read-only" if readonly else "")
        return device

    # -- the front end's states --------------------------------------------------------

    def _frontend_changed(self, device: BlkbackDevice) -> None:
        state = XenbusState.parse(self._read(device.front, "state"))
        if state in (XenbusState.Initialised, XenbusState.Connected) and device.worker is None \
                and device.state == XenbusState.InitWait:
            try:
                self._connect(device)
            except (BackendError, OSError, XsError) as exc:
                log.warning("%s: cannot connect: %s", device.label, exc)
                self.xs.write(f"{device.backend}/hotplug-error", str(exc)[:200])
                self._switch(device, XenbusState.Closing)
        elif state == XenbusState.Closing and device.state != XenbusState.Closed:
            self._switch(device, XenbusState.Closing)
        elif state in (XenbusState.Closed, XenbusState.Unknown) and device.state != XenbusState.Closed:
            self._disconnect(device)
            self._switch(device, XenbusState.Closed)

    def _connect(self, device: BlkbackDevice) -> None:
        front = {key: self._read(device.front, key) for key in
                 ("ring-page-order", "ring-ref", "event-channel", "protocol", "feature-persistent")}
        protocol = front["protocol"] or XEN_IO_PROTO_ABI_NATIVE
        if protocol != XEN_IO_PROTO_ABI_NATIVE:
            raise BackendError(f"protocol {protocol!r} is not {XEN_IO_PROTO_ABI_NATIVE}")
        try:
            order = int(front["ring-page-order"] or 0)
            port = int(front["event-channel"] or "")
        except ValueError:
            raise BackendError("ring-page-order or event-channel is not a number") from None
        if not 0 <= order <= MAX_RING_PAGE_ORDER:
            raise BackendError(f"ring-page-order {order} outside 0..{MAX_RING_PAGE_ORDER}")
        refs = {f"ring-ref{i}": self._read(device.front, f"ring-ref{i}") for i in range(1 << order)}
        if front["ring-ref"] is not None:
            refs["ring-ref"] = front["ring-ref"]
        try:
            ring_refs = ring_refs_of(order, {k: v for k, v in refs.items() if v is not None})
        except (KeyError, ValueError):
            raise BackendError(f"the front end published no usable ring-ref for order {order}") from None
        built = self.dom0.toolstack.domains.get(device.frontend)
        if built is None:
            raise BackendError(f"domain {device.frontend} is not running")
        bound, evtchn_fds = self.dom0.hypercall("evtchn_bind_interdomain", remote_dom=device.frontend, remote_port=port)
        device.port = bound["port"]
        opened, channel_fds = self.dom0.hypercall("domctl", cmd="open_channel")
        device.channel = opened["channel"]
        assert device.vbd is not None
        params = {
            "label": f"d{device.frontend} ({built.name}) {device.vdev}",
            "frontend": device.frontend,
            "vdev": device.vdev,
            "port": device.port,
            "ring_refs": ring_refs,
            "persistent": front["feature-persistent"] == "1",
            "path": device.vbd.path,
            "sectors": device.vbd.sectors,
            "readonly": device.vbd.readonly,
            "log": str(self.dom0.run_dir.log_path("dom0")),
            "pcpus": self.dom0.hypercall("sysctl", cmd="physinfo")[0]["pcpus"],
        }
        fds = [channel_fds[0], os.dup(built.memory.fd), os.dup(device.vbd.fd), *evtchn_fds]
        device.worker, device.control = spawn_worker(params, fds)
        device.control.settimeout(WORKER_START_TIMEOUT_S)
        reply, _ = recv_message(device.control)
        device.control.settimeout(None)
        if "fatal" in reply:
            self._disconnect(device)
            raise BackendError(reply["fatal"])
        self.dom0.loop.add_reader(device.control.fileno(), lambda fd: self._on_worker(device))
        self._switch(device, XenbusState.Connected)

    def _on_worker(self, device: BlkbackDevice) -> None:
        """The worker spoke (or died): counters are kept; a fatal protocol error or its death disconnects the device."""
        try:
            message, _ = recv_message(device.control)  # type: ignore[arg-type]
        except (ConnectionError, OSError):
            message = {"fatal": "the back-end worker died"}
        if "stats" in message:
            device.stats = message["stats"]
            device.stats_answered += 1
        elif "fatal" in message:
            log.error("%s: disconnected: %s", device.label, message["fatal"])
            self._disconnect(device)
            self._switch(device, XenbusState.Closing)

    def _disconnect(self, device: BlkbackDevice) -> None:
        """Stop the worker (it unmaps every grant) and close the event channel.

        Closing the worker's hypercall channel afterwards unmaps whatever a worker
        that died left mapped, before the front end is told the device closed.
        """
        if device.control is not None:
            self.dom0.loop.remove_reader(device.control.fileno())
            try:
                send_message(device.control, {"stop": True})
            except OSError:
                pass
            device.control.close()
            device.control = None
            device.stats_answered = device.stats_asked
        if device.worker is not None:
            _reap(device.worker, WORKER_STOP_TIMEOUT_S)
            device.worker = None
        if device.channel is not None:
            self.dom0.hypercall("domctl", cmd="close_channel", channel=device.channel)
            device.channel = None
        if device.port is not None:
            try:
                self.dom0.hypercall("evtchn_close", port=device.port)
            except OSError:
                pass
            device.port = None

    # -- statistics ----------------------------------------------------------------------

    def request_stats(self) -> Callable[[], bool]:
        """Ask every connected device's worker for its counters; returns "have all answered?".

        Nothing waits here: the replies come through :meth:`_on_worker` from dom0's
        loop. A device that disconnects meanwhile counts as answered (its last
        counters stay on it); a worker found dead is left to :meth:`_on_worker`.
        """
        asked: list[tuple[BlkbackDevice, int]] = []
        for device in self.devices.values():
            if device.control is None:
                continue
            try:
                send_message(device.control, {"stats": True})
            except OSError:
                continue
            device.stats_asked += 1
            asked.append((device, device.stats_asked))
        return lambda: all(device.stats_answered >= number for device, number in asked)

    def device_stats(self, frontend: int, devid: int) -> dict[str, int] | None:
        """A device's last counters ({} before its worker first reported), None if blkback has no such device."""
        device = self.devices.get((frontend, devid))
        return None if device is None else dict(device.stats)

    # -- removal -------------------------------------------------------------------------

    def request_close(self, frontend: int, devid: int) -> None:
        """The toolstack detaches the device: online = 0, state Closing (libxl's way)."""
        device = self.devices[(frontend, devid)]

        def mark(tx: int) -> None:
            self.xs.write(f"{device.backend}/online", "0", tx=tx)
            self.xs.write(f"{device.backend}/state", str(int(XenbusState.Closing)), tx=tx)

        self.xs.transact(mark)
        device.state = XenbusState.Closing

    def remove(self, frontend: int, devid: int) -> None:
        """Forget a device for good (after Closed, or at domain teardown)."""
        device = self.devices.pop((frontend, devid), None)
        if device is None:
            return
        self._disconnect(device)
        try:
            self.watcher.unwatch(f"{device.front}/state", f"blkback:{frontend}:{devid}")
        except XsError:
            pass
        if device.vbd is not None:
            device.vbd.close()
        log.info("%s: removed", device.label)

    def remove_domain(self, frontend: int) -> None:
        for (front, devid) in [key for key in self.devices if key[0] == frontend]:
            self.remove(front, devid)

    def device_state(self, frontend: int, devid: int) -> XenbusState | None:
        device = self.devices.get((frontend, devid))
        return device.state if device else None

    # -- helpers ---------------------------------------------------------------------------

    def _switch(self, device: BlkbackDevice, state: XenbusState) -> None:
        device.state = state
        self.xs.write(f"{device.backend}/state", str(int(state)))

    def _read(self, base: str, key: str) -> str | None:
        try:
            return self.xs.read(f"{base}/{key}").decode()
        except XsError:
            return None


def _device_key(token: bytes) -> tuple[int, int] | None:
    parts = token.decode(errors="replace").split(":")
    if len(parts) == 3 and parts[0] == "blkback":
        return int(parts[1]), int(parts[2])
    return None


def _reap(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
