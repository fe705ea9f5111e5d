"""dom0's back-end xenbus: one bus for every split device (Linux ``drivers/xen/xenbus/xenbus_probe_backend.c``).

The bus watches ``/local/domain/0/backend/<type>`` for every registered driver,
probes each device directory the toolstack writes there (while its ``state`` is
Initialising, as ``xenbus_probe_node`` does), follows the front end's ``state``
and runs the XenbusState machine, so a driver (``struct xenbus_driver``) writes
only what is about its device:

- ``probe(bus, dev)``: open what the device needs and return the features to
  publish; the bus publishes them and moves to InitWait;
- ``connect(bus, dev)``: the front end is Initialised (or Connected): read its
  ring refs and event channels (:meth:`XenbusBackend.read_ring_refs`,
  :meth:`XenbusBackend.read_otherend`) and start the device's worker
  (:meth:`XenbusBackend.start_worker`); the bus then moves to Connected;
- ``disconnect(bus, dev)``: the worker has been stopped (optional);
- ``remove(bus, dev)``: the device is forgotten: release what ``probe`` opened.

A failure in ``probe`` or ``connect`` (:class:`BackendError`, ``OSError``, a
xenstore error) or a worker's fatal report is reported once, as
``xenbus_dev_fatal``: the error node and Closing; the front end follows.

A worker that dies (a signal, a crash: not a front end breaking the protocol) is
restarted if its driver says ``restarts = True``: the bus goes back to InitWait
and connects a new worker once the front end has published a new ring
(Initialised), as a driver domain that comes back does; blkfront then re-issues
what was in flight (``blkif_recover``). More than :data:`MAX_RESTARTS` deaths
within :data:`RESTART_WINDOW_S` are reported as a fatal error instead.

Watch events arrive on the bus's own in-process xenstore connection and are
handled from dom0's main loop (:meth:`XenbusBackend.process_events`), after the
request that caused them.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from xenlike.kernel import trace
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xenbus import (
    ERROR_MESSAGE_MAX,
    FRONTEND,
    NUMBER_MAX,
    ONLINE,
    STATE,
    XenbusState,
    backend_path,
    error_path,
)
from xenlike.public.xs_wire import XsError

from .backend_worker import WorkerError, WorkerHandle, WorkerSpec, spawn_worker
from .context import BackendContext

__all__ = ["BackendDriver", "BackendError", "XenbusBackend", "XenbusDevice", "RING_REF", "ring_ref_keys"]

log = logging.getLogger("dom0.xenbus")

RING_REF = "ring-ref"
RING_PAGE_ORDER = "ring-page-order"
MAX_RESTARTS = 3  # a dead worker restarted at most this often ...
RESTART_WINDOW_S = 60.0  # ... within this many seconds


class BackendError(Exception):
    """The device cannot be served as the front end (or the toolstack) set it up; it goes to Closing."""


# What a probe or connect may fail with; each is reported once, with dev_fatal.
_DEVICE_ERRORS = (BackendError, WorkerError, OSError, XsError, ValueError)


@dataclass(eq=False)
class XenbusDevice:
    """One back-end device (Linux's ``struct xenbus_device``, back-end side)."""

    devicetype: str  # "vbd", "vif", ...
    frontend_id: int  # dev->otherend_id
    devid: int
    name: str  # the front end's domain name, for logs
    state: XenbusState = XenbusState.Initialising
    otherend: str = ""  # the front end's device directory (its ``frontend`` node)
    ports: list[int] = field(default_factory=list)  # dom0's ends of the device's event channels
    worker: WorkerHandle | None = None
    stats: dict[str, int] = field(default_factory=dict)  # the worker's last counters
    drvdata: Any = None  # the driver's own per-device state (dev_set_drvdata)
    restarted: bool = False  # back in InitWait after its worker died: connect on a new ring only
    deaths: list[float] = field(default_factory=list)  # when its workers died, within RESTART_WINDOW_S

    @property
    def nodename(self) -> str:
        """The back end's directory: ``/local/domain/0/backend/<type>/<fe>/<devid>``."""
        return backend_path(0, self.devicetype, self.frontend_id, self.devid)

    @property
    def relative_nodename(self) -> str:
        """``backend/<type>/<fe>/<devid>``: the nodename as Linux keeps it, relative to dom0's home."""
        return f"backend/{self.devicetype}/{self.frontend_id}/{self.devid}"

    @property
    def key(self) -> tuple[str, int, int]:
        return self.devicetype, self.frontend_id, self.devid

    @property
    def label(self) -> str:
        """``d3 (web) vbd/51712``: the front end's domain and the device, for every log line."""
        return f"d{self.frontend_id} ({self.name}) {self.devicetype}/{self.devid}"


class BackendDriver(Protocol):
    """What a back-end driver gives the bus (Linux's ``struct xenbus_driver``)."""

    devicetype: str

    def probe(self, bus: XenbusBackend, dev: XenbusDevice) -> dict[str, str]:
        """A new device: open its resources; return the nodes to publish before InitWait."""
        ...

    def connect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        """The front end published its half: read it and start the worker (``bus.start_worker``)."""
        ...

    def disconnect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        """The worker was stopped and the event channels closed."""
        ...

    def remove(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        """The device is forgotten: release what probe opened."""
        ...


def ring_ref_keys(order: int, prefix: str = "") -> list[str]:
    """The ring-ref keys a front end publishes for a ring of ``2**order`` pages.

    blkif.h note 6: one page is ``ring-ref``, more are ``ring-ref0``..``ring-ref<N-1>``.
    netif.h's ``tx-ring-ref``/``rx-ring-ref`` come with ``prefix``.
    """
    if order == 0:
        return [f"{prefix}{RING_REF}"]
    return [f"{prefix}{RING_REF}{i}" for i in range(1 << order)]


class XenbusBackend:
    """The back-end bus of dom0: every driver, every device."""

    def __init__(self, ctx: BackendContext) -> None:
        self.ctx = ctx
        self.drivers: dict[str, BackendDriver] = {}
        self.devices: dict[tuple[str, int, int], XenbusDevice] = {}

    # -- drivers ---------------------------------------------------------------------

    def register(self, driver: BackendDriver) -> None:
        """``xenbus_register_backend``: watch ``backend/<type>`` and probe what appears there."""
        if driver.devicetype in self.drivers:
            raise ValueError(f"a {driver.devicetype} back-end driver is registered already")
        self.drivers[driver.devicetype] = driver
        self.ctx.watcher.watch(f"/local/domain/0/backend/{driver.devicetype}", _type_token(driver.devicetype))

    # -- events ------------------------------------------------------------------------

    def process_events(self) -> None:
        """Handle queued watch events (from dom0's main loop).

        A front end's nodes are the guest's to write: whatever one event's handling
        raises fails that device (``dev_fatal``), never dom0's loop.
        """
        for path, token in self.ctx.watcher.pop_events():
            kind, _, rest = token.decode(errors="replace").partition(":")
            device = None
            try:
                if kind == "backend":
                    self._backend_changed(rest, path)
                elif kind == "otherend" and (key := _parse_device_key(rest)) is not None:
                    device = self.devices.get(key)
                    if device is not None:
                        self._otherend_changed(device)
            except Exception as exc:  # a check missed: the device goes, the other guests' stay
                log.exception("%s: handling a change of %s", device.label if device else "xenbus", path)
                if device is not None:
                    self._disconnect(device)
                    self.dev_fatal(device, exc, "handling its front end's change")

    def _backend_changed(self, devicetype: str, path: str) -> None:
        """Something under ``backend/<type>`` changed: probe a new device (``backend_changed``)."""
        parts = path.split("/")
        base = len(backend_path(0, devicetype, 0, 0).split("/")) - 2
        if len(parts) < base + 2 or devicetype not in self.drivers:
            return
        try:
            key = (devicetype, int(parts[base]), int(parts[base + 1]))
        except ValueError:
            return
        if key in self.devices:
            return
        nodename = backend_path(0, *key)
        state = self.read(nodename, STATE)
        # Only a directory the toolstack finished writing (its front-end link is in
        # the same transaction) and that nobody has taken through the states yet.
        if self.read(nodename, FRONTEND) is None or XenbusState.parse(state) != XenbusState.Initialising:
            return
        self.probe(*key)

    # -- probe -------------------------------------------------------------------------

    def probe(self, devicetype: str, frontend_id: int, devid: int) -> XenbusDevice | None:
        """``xenbus_dev_probe``: the driver probes, the bus publishes its nodes and moves to InitWait.

        Returns the device, or None when the probe failed (reported with :meth:`dev_fatal`).
        """
        driver = self.drivers[devicetype]
        dev = XenbusDevice(devicetype, frontend_id, devid, self.ctx.domain_name(frontend_id))
        dev.otherend = self.read(dev.nodename, FRONTEND) or ""
        self.devices[dev.key] = dev
        if dev.otherend:  # followed from the start, so a failed probe still goes down with its front end
            self.ctx.watcher.watch(f"{dev.otherend}/{STATE}", _device_token(dev))
        try:
            nodes = driver.probe(self, dev)

            def publish(tx: int) -> None:
                for key, value in nodes.items():
                    self.ctx.xs.write(f"{dev.nodename}/{key}", value, tx=tx)

            self.ctx.xs.transact(publish)
        except _DEVICE_ERRORS as exc:
            self.dev_fatal(dev, exc, "probing")
            return None
        self.switch_state(dev, XenbusState.InitWait)
        log.info("%s: probed", dev.label)
        return dev

    # -- the front end's states (frontend_changed) -------------------------------------

    def _otherend_changed(self, dev: XenbusDevice) -> None:
        state = XenbusState.parse(self.read(dev.otherend, STATE))
        if state in (XenbusState.Initialised, XenbusState.Connected):
            # A second event for the same state (two watches close together) finds us Connected.
            # After a restart the front end is still Connected to the old ring: wait for its new one.
            if dev.state == XenbusState.InitWait and not (dev.restarted and state == XenbusState.Connected):
                self._connect(dev)
        elif state == XenbusState.Closing:
            if dev.state not in (XenbusState.Closing, XenbusState.Closed):
                self.switch_state(dev, XenbusState.Closing)
        elif state in (XenbusState.Closed, XenbusState.Unknown):
            if dev.state != XenbusState.Closed:
                self._disconnect(dev)
                self.switch_state(dev, XenbusState.Closed)

    def _connect(self, dev: XenbusDevice) -> None:
        try:
            self.drivers[dev.devicetype].connect(self, dev)
        except _DEVICE_ERRORS as exc:
            self._disconnect(dev)
            self.dev_fatal(dev, exc, "connecting")
            return
        dev.restarted = False
        self.switch_state(dev, XenbusState.Connected)
        log.info("%s: connected", dev.label)

    def _disconnect(self, dev: XenbusDevice) -> None:
        """Stop the worker and close the event channels (``xen_blkif_disconnect``, for every type)."""
        if dev.worker is not None:
            self.ctx.loop.remove_reader(dev.worker.control.fileno())
            dev.worker.stop(self.ctx.hypercall)
            dev.worker = None
        for port in dev.ports:
            try:
                self.ctx.hypercall("evtchn_close", port=port)
            except OSError:
                pass
        if dev.ports:
            dev.ports.clear()
            self.drivers[dev.devicetype].disconnect(self, dev)

    # -- helpers every driver uses (include/xen/xenbus.h) --------------------------------

    def switch_state(self, dev: XenbusDevice, state: XenbusState) -> None:
        """``xenbus_switch_state``."""
        dev.state = state
        self.ctx.xs.write(f"{dev.nodename}/{STATE}", str(int(state)))
        _trace_state(dev, state)

    def dev_fatal(self, dev: XenbusDevice, error: BaseException | str, doing: str) -> None:
        """``xenbus_dev_fatal``: write the error node once and move to Closing; the front end follows."""
        message = f"{doing}: {error}"
        code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
        log.warning("%s: %s", dev.label, message)
        try:
            self.ctx.xs.write(error_path(0, dev.relative_nodename), f"{code} {message}"[:ERROR_MESSAGE_MAX])
            if dev.state != XenbusState.Closing:
                self.switch_state(dev, XenbusState.Closing)
        except XsError as exc:
            log.warning("%s: cannot report the error: %s", dev.label, exc)

    def read(self, base: str, key: str) -> str | None:
        """``xenbus_read``: a node's value, None if it is missing or unreadable (not UTF-8 included).

        A front end writes what it likes into its own nodes: a state that is not
        text reads as missing, which :meth:`XenbusState.parse` takes as Unknown.
        """
        try:
            return self.ctx.xs.read(f"{base}/{key}").decode()
        except (XsError, UnicodeDecodeError):
            return None

    def read_otherend(self, dev: XenbusDevice, key: str, default: str | None = None) -> str | None:
        """A node of the front end's device directory, or ``default``."""
        value = self.read(dev.otherend, key)
        return default if value is None else value

    def read_otherend_int(self, dev: XenbusDevice, key: str, default: int | None = None) -> int:
        """``xenbus_read_unsigned``; a missing node is ``default``, a non-number is a BackendError."""
        value = self.read_otherend(dev, key)
        if value is None:
            if default is None:
                raise BackendError(f"the front end published no {key}")
            return default
        try:
            number = int(value)
        except ValueError:
            raise BackendError(f"{key} {value[:40]!r} is not a number") from None
        if not 0 <= number <= NUMBER_MAX:  # every such node is a uint32_t: a port, a ref, an order, a size
            raise BackendError(f"{key} {number} is outside 0..{NUMBER_MAX}")
        return number

    def read_ring_refs(self, dev: XenbusDevice, max_order: int, prefix: str = "") -> list[int]:
        """The grant refs of the front end's ring: ``<prefix>ring-ref`` or ``<prefix>ring-ref<N>``.

        The order is the front end's ``<prefix>ring-page-order`` (default 0), refused above ``max_order``.
        """
        order = self.read_otherend_int(dev, f"{prefix}{RING_PAGE_ORDER}", 0)
        if not 0 <= order <= max_order:
            raise BackendError(f"{prefix}{RING_PAGE_ORDER} {order} outside 0..{max_order}")
        refs = [self.read_otherend(dev, key) for key in ring_ref_keys(order, prefix)]
        if order == 0 and refs[0] is None:  # a one-page ring published as ring-ref0
            refs = [self.read_otherend(dev, f"{prefix}{RING_REF}0")]
        texts = [ref for ref in refs if ref is not None]
        if len(texts) == len(refs):  # every ring-ref is there
            try:
                numbers = [int(ref) for ref in texts]
            except ValueError:
                numbers = []
            if numbers and all(0 <= ref <= NUMBER_MAX for ref in numbers):  # grant_ref_t
                return numbers
        raise BackendError(f"the front end published no usable {prefix}{RING_REF} for order {order}")

    def bind_evtchn(self, dev: XenbusDevice, remote_port: int) -> tuple[int, list[int]]:
        """``xenbus_bind_evtchn``: bind to the front end's port; returns dom0's port and its two fds.

        The port is the device's until it disconnects; the fds are for its worker.
        """
        bound, fds = self.ctx.hypercall("evtchn_bind_interdomain", remote_dom=dev.frontend_id, remote_port=remote_port)
        dev.ports.append(bound["port"])
        return bound["port"], fds

    def start_worker(self, dev: XenbusDevice, spec: WorkerSpec) -> None:
        """Run the device's data path in a worker of its own; raises WorkerError if it cannot start."""
        self.attach_worker(dev, spawn_worker(spec, self.ctx))

    def attach_worker(self, dev: XenbusDevice, worker: WorkerHandle) -> None:
        """Make ``worker`` the device's: its messages are read from dom0's loop, it is stopped on disconnect."""
        dev.worker = worker
        self.ctx.loop.add_reader(worker.control.fileno(), lambda fd: self._on_worker(dev))

    def _on_worker(self, dev: XenbusDevice) -> None:
        """The worker spoke (or died): counters are kept; a fatal report or its death closes the device."""
        worker = dev.worker
        if worker is None:
            return
        message = worker.receive()
        if "stats" in message:
            dev.stats = message["stats"]
        elif "fatal" in message:
            self._disconnect(dev)
            if not (message.get("died") and self._restart(dev)):
                self.dev_fatal(dev, message["fatal"], "serving")

    def _restart(self, dev: XenbusDevice) -> bool:
        """A dead worker's device back to InitWait, for a new worker; False if its driver or its record says no
        (or the device was not Connected: one closing goes on closing)."""
        if dev.state != XenbusState.Connected or not getattr(self.drivers[dev.devicetype], "restarts", False):
            return False
        now = time.monotonic()
        dev.deaths = [*(t for t in dev.deaths if now - t < RESTART_WINDOW_S), now]
        if len(dev.deaths) > MAX_RESTARTS:
            log.warning(
                "%s: the back-end worker died %d times within %.0fs: not restarted",
                dev.label,
                len(dev.deaths),
                RESTART_WINDOW_S,
            )
            return False
        log.warning("%s: the back-end worker died; restarting the back end", dev.label)
        dev.restarted = True
        self.switch_state(dev, XenbusState.InitWait)
        return True

    # -- the toolstack's side ---------------------------------------------------------------

    def request_stats(self) -> Callable[[], bool]:
        """Ask every connected device's worker for its counters; returns "have all answered?".

        Nothing waits here: the replies come through the workers' control sockets,
        handled from dom0's loop. A device that disconnects meanwhile counts as answered.
        """
        asked = [(dev, dev.worker.ask_stats()) for dev in self.devices.values() if dev.worker is not None]
        return lambda: all(dev.worker is None or dev.worker.answered >= number for dev, number in asked)

    def device(self, devicetype: str, frontend_id: int, devid: int) -> XenbusDevice | None:
        return self.devices.get((devicetype, frontend_id, devid))

    def request_close(self, devicetype: str, frontend_id: int, devid: int) -> None:
        """The toolstack unplugs the device: ``online`` = 0 and Closing (libxl's way).

        A device already Closed (both ends went through the close, as when its worker
        died) only gets ``online`` = 0: moved back to Closing, it would wait for a front
        end that has nothing left to answer.
        """
        dev = self.devices[(devicetype, frontend_id, devid)]
        closed = dev.state == XenbusState.Closed

        def mark(tx: int) -> None:
            self.ctx.xs.write(f"{dev.nodename}/{ONLINE}", "0", tx=tx)
            if not closed:
                self.ctx.xs.write(f"{dev.nodename}/{STATE}", str(int(XenbusState.Closing)), tx=tx)

        self.ctx.xs.transact(mark)
        if closed:
            return
        dev.state = XenbusState.Closing
        _trace_state(dev, XenbusState.Closing)

    def remove(self, devicetype: str, frontend_id: int, devid: int) -> None:
        """Forget a device for good (after Closed, or at domain teardown): ``xenbus_dev_remove``."""
        dev = self.devices.pop((devicetype, frontend_id, devid), None)
        if dev is None:
            return
        self._disconnect(dev)
        if dev.otherend:
            try:
                self.ctx.watcher.unwatch(f"{dev.otherend}/{STATE}", _device_token(dev))
            except XsError:
                pass
        self.drivers[devicetype].remove(self, dev)
        log.info("%s: removed", dev.label)

    def remove_domain(self, frontend_id: int) -> None:
        """Every device of a domain that is going away."""
        for key in [key for key in self.devices if key[1] == frontend_id]:
            self.remove(*key)


def _trace_state(dev: XenbusDevice, state: XenbusState) -> None:
    if trace.on(TraceClass.XENBUS):
        trace.emit(
            Event.XENBUS_STATE,
            {"end": "back", "node": dev.nodename, "state": state.name, "frontend": dev.frontend_id},
        )


def _type_token(devicetype: str) -> str:
    return f"backend:{devicetype}"


def _device_token(dev: XenbusDevice) -> str:
    return f"otherend:{dev.devicetype}:{dev.frontend_id}:{dev.devid}"


def _parse_device_key(text: str) -> tuple[str, int, int] | None:
    parts = text.split(":")
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        return None
