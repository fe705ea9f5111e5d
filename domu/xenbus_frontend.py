"""The guest's front-end xenbus: one bus for every split device (Linux ``drivers/xen/xenbus/xenbus_probe_frontend.c``).

The bus watches the guest's ``device`` directory, attaches each
``device/<type>/<devid>`` a registered driver serves and runs the XenbusState
machine for it, so a driver (``struct xenbus_driver``) writes only what is about
its device:

- ``probe(bus, dev)``: make the device's object (``dev.drvdata``);
- ``connect(bus, dev)``: the back end is in InitWait: read its features, set up
  the ring(s) and event channel(s) (:meth:`XenbusFrontend.setup_ring`,
  :meth:`XenbusFrontend.alloc_evtchn`) and return the nodes to publish; the bus
  writes them with state Initialised in one transaction;
- ``connected(bus, dev)``: the back end is Connected: read what it published;
  the bus then goes Connected and follows the back end's state;
- ``closing(bus, dev)``: the back end is going (or the device was unplugged):
  stop I/O;
- ``remove(bus, dev)``: the back end is Closed: tear the rings down;
- ``reconnect(bus, dev)`` (optional): the back end went back to InitWait while
  connected (dom0 restarted it): let go of the old ring, keeping what is in
  flight; the bus then runs ``connect`` and ``connected`` again. A driver
  without it is closed instead;
- ``suspend(bus, dev)`` and ``resume(bus, dev)`` (Linux's ``xenbus_driver``
  ``suspend``/``resume``): when the guest is suspended (:meth:`XenbusFrontend.suspend`),
  complete what is in flight and take no new I/O; when it runs again, take I/O
  again. A driver without them cannot be suspended, and the guest refuses the
  suspend naming its device. Frames a driver allocates for its device are
  allocated with ``owner=dev.nodename`` (as :meth:`XenbusFrontend.setup_ring`
  does): they are the device's, and a save does not carry them.

Handshakes wait for the back end, so they run in one thread per guest (started
when the first device appears), never on the event loop. A handshake that fails
is reported once, as ``xenbus_dev_fatal`` (the error node, then Closing and
Closed); the device then stays down until its directory goes away.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xenlike.kernel import trace
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xenbus import BACKEND, BACKEND_ID, ERROR_MESSAGE_MAX, STATE, XenbusState, error_path
from xenlike.public.xs_wire import XsdSockmsgType as XS
from xenlike.public.xs_wire import XsError

from .guest_kernel import GuestKernel

__all__ = ["FrontDevice", "FrontendDriver", "FrontendError", "SharedRing", "XenbusFrontend", "HANDSHAKE_TIMEOUT_S"]

log = logging.getLogger("domu.xenbus")

HANDSHAKE_TIMEOUT_S = 10.0
DEVICE_DIR = "device"
# A back end in these states will not get to InitWait or Connected any more.
_GOING = {XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown}


class FrontendError(Exception):
    """The device cannot be connected (the back end's features, or it did not answer in time)."""


@dataclass(eq=False)
class FrontDevice:
    """One front-end device (Linux's ``struct xenbus_device``, front-end side)."""

    devicetype: str
    devid: int
    nodename: str  # device/<type>/<devid>, relative to the guest's home
    otherend: str = ""  # the back end's directory (its ``backend`` node)
    otherend_id: int = 0
    state: XenbusState = XenbusState.Initialising
    drvdata: Any = None

    @property
    def key(self) -> tuple[str, int]:
        return self.devicetype, self.devid


@dataclass
class SharedRing:
    """Pages of a ring granted to the back end (what ``xenbus_setup_ring`` returns)."""

    first_pfn: int
    view: memoryview
    grefs: list[int]


class FrontendDriver(Protocol):
    """What a front-end driver gives the bus (Linux's ``struct xenbus_driver``)."""

    devicetype: str

    def probe(self, bus: XenbusFrontend, dev: FrontDevice) -> None: ...

    def connect(self, bus: XenbusFrontend, dev: FrontDevice) -> dict[str, str]: ...

    def connected(self, bus: XenbusFrontend, dev: FrontDevice) -> None: ...

    def closing(self, bus: XenbusFrontend, dev: FrontDevice) -> None: ...

    def remove(self, bus: XenbusFrontend, dev: FrontDevice) -> None: ...


class XenbusFrontend:
    """The front-end bus of one guest: every driver, every device, one handshake thread."""

    def __init__(self, kernel: GuestKernel, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.kernel = kernel
        self.xs = kernel.xenbus
        self.timeout = timeout
        self.drivers: dict[str, FrontendDriver] = {}
        self.devices: dict[tuple[str, int], FrontDevice] = {}
        self._work: queue.Queue[str] = queue.Queue()
        self._changed = threading.Condition()
        self._generation = 0  # bumped by every watch event on a back end's state
        self._thread: threading.Thread | None = None
        self._suspended: list[FrontDevice] = []  # quiesced by suspend(), in order

    def register(self, driver: FrontendDriver) -> None:
        """``xenbus_register_frontend``."""
        self.drivers[driver.devicetype] = driver

    def start(self) -> None:
        """Watch ``device`` (from any thread; the loop thread delivers the events)."""
        self.xs.watch_async(DEVICE_DIR, "xenbus-frontend", self._on_devices_changed)

    # -- events (loop thread) ----------------------------------------------------------

    def _on_devices_changed(self, path: str, token: str) -> None:
        """Watch on ``device``: scan, once there is anything to scan (a guest without devices starts no thread)."""

        def listed(msg_type: int, payload: bytes) -> None:
            if payload.strip(b"\0") or self.devices:
                self.scan_soon()

        self.xs.request_async(XS.DIRECTORY, f"{DEVICE_DIR}\0".encode(), listed)

    def scan_soon(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xenbus-frontend", daemon=True)
            self._thread.start()
        self._work.put("scan")

    def _otherend_changed(self, path: str, token: str) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()
        self.scan_soon()

    # -- the handshake thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._work.get()
            while not self._work.empty():
                self._work.get_nowait()
            try:
                self.scan()
            except Exception:
                log.exception("%s: xenbus scan failed", self.kernel.label)

    def scan(self) -> None:
        """Attach new devices, detach those gone or whose back end is closing (``xenbus_probe_devices``)."""
        present = {(kind, devid) for kind in self.drivers for devid in self._listed(kind)}
        for key in sorted(present - set(self.devices)):
            self._attach(*key)
        for key, dev in list(self.devices.items()):
            if key not in present:
                self._detach(dev)
                del self.devices[key]
            elif dev.state == XenbusState.Connected:
                state = self.otherend_state(dev)
                if state in (XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown):
                    self._detach(dev)
                elif state == XenbusState.InitWait:
                    self._reconnect(dev)

    def _listed(self, kind: str) -> list[int]:
        try:
            return [int(d) for d in self.xs.directory(f"{DEVICE_DIR}/{kind}") if d.isdigit()]
        except XsError:
            return []

    def _attach(self, devicetype: str, devid: int) -> None:
        driver = self.drivers[devicetype]
        dev = FrontDevice(devicetype, devid, f"{DEVICE_DIR}/{devicetype}/{devid}")
        self.devices[dev.key] = dev
        try:
            dev.otherend = self._require(f"{dev.nodename}/{BACKEND}")
            dev.otherend_id = int(self._require(f"{dev.nodename}/{BACKEND_ID}"))
            driver.probe(self, dev)
            self._handshake(dev, driver)
            # Follow the other end from now on: its Closing starts a detach.
            self.xs.watch(f"{dev.otherend}/{STATE}", _otherend_token(dev), self._otherend_changed)
        except (FrontendError, XsError, OSError, ValueError) as exc:
            self.dev_fatal(dev, exc, "connecting")
            self._close(dev, driver)

    def _handshake(self, dev: FrontDevice, driver: FrontendDriver) -> None:
        """InitWait, the driver's nodes with Initialised, Connected (``talk_to_blkback``, ``blkfront_connect``)."""
        self.wait_otherend(dev, {XenbusState.InitWait, XenbusState.Connected})
        nodes = driver.connect(self, dev)
        self.transact(lambda t: self._publish(t, dev, nodes))
        dev.state = XenbusState.Initialised
        _trace_state(dev, XenbusState.Initialised)
        self.wait_otherend(dev, {XenbusState.Connected})
        driver.connected(self, dev)
        self.switch_state(dev, XenbusState.Connected)

    def _reconnect(self, dev: FrontDevice) -> None:
        """The back end restarted (InitWait while we are Connected): the driver's ``reconnect``, then the
        handshake again; a driver without the hook, or a handshake that fails, closes the device."""
        driver = self.drivers[dev.devicetype]
        hook = getattr(driver, "reconnect", None)
        if hook is None:
            self._detach(dev)
            return
        log.info("%s: %s: the back end restarted; reconnecting", self.kernel.label, dev.nodename)
        try:
            hook(self, dev)
            self._handshake(dev, driver)
        except (FrontendError, XsError, OSError, ValueError) as exc:
            self.dev_fatal(dev, exc, "reconnecting")
            try:
                self.xs.unwatch(f"{dev.otherend}/{STATE}", _otherend_token(dev))
            except XsError:
                pass
            self._close(dev, driver)

    def _detach(self, dev: FrontDevice) -> None:
        """The device was unplugged or its back end is closing: Closing, Closed, and the rings go."""
        if dev.state in (XenbusState.Closing, XenbusState.Closed):
            return
        try:
            self.xs.unwatch(f"{dev.otherend}/{STATE}", _otherend_token(dev))
        except XsError:
            pass
        self._close(dev, self.drivers[dev.devicetype])

    def _close(self, dev: FrontDevice, driver: FrontendDriver) -> None:
        try:
            if dev.drvdata is not None:
                driver.closing(self, dev)
            if dev.state != XenbusState.Closing:
                self.switch_state(dev, XenbusState.Closing)
            self.switch_state(dev, XenbusState.Closed)
            if dev.otherend:
                self.wait_otherend(dev, {XenbusState.Closed, XenbusState.Unknown})
        except (FrontendError, XsError, OSError) as exc:
            log.warning("%s: %s/%d: close: %s", self.kernel.label, dev.devicetype, dev.devid, exc)
        finally:
            if dev.drvdata is not None:
                driver.remove(self, dev)

    # -- suspend and resume (xenbus_dev_suspend, xenbus_dev_resume) ------------------------

    def suspend(self) -> None:
        """Quiesce every connected device through its driver's ``suspend`` hook.

        FrontendError naming the device if a driver has no hook or its hook
        fails; the devices already quiesced are resumed first, so the guest
        runs on as it was.
        """
        done: list[FrontDevice] = []
        for dev in [d for d in list(self.devices.values()) if d.state == XenbusState.Connected]:
            hook = getattr(self.drivers[dev.devicetype], "suspend", None)
            try:
                if hook is None:
                    raise FrontendError(f"the {dev.devicetype} driver has no suspend hook")
                hook(self, dev)
            except Exception as exc:  # whatever a driver raised, the devices already quiesced run again
                self._suspended = done
                self.resume()
                raise FrontendError(f"{dev.nodename} cannot be suspended: {exc}") from None
            done.append(dev)
        self._suspended = done
        log.info("%s: %d front end(s) quiesced", self.kernel.label, len(done))

    def resume(self) -> None:
        """Each device :meth:`suspend` quiesced takes I/O again (its driver's ``resume`` hook)."""
        devices, self._suspended = self._suspended, []
        for dev in devices:
            hook = getattr(self.drivers[dev.devicetype], "resume", None)
            try:
                if hook is None:
                    raise FrontendError(f"the {dev.devicetype} driver has no resume hook")
                hook(self, dev)
            except Exception as exc:  # one device's failure does not keep the others quiesced
                self.dev_fatal(dev, exc, "resuming")

    # -- helpers every driver uses (include/xen/xenbus.h) -----------------------------------

    def switch_state(self, dev: FrontDevice, state: XenbusState) -> None:
        """``xenbus_switch_state``."""
        dev.state = state
        self.xs.write(f"{dev.nodename}/{STATE}", str(int(state)))
        _trace_state(dev, state)

    def dev_fatal(self, dev: FrontDevice, error: BaseException | str, doing: str) -> None:
        """``xenbus_dev_fatal``: the error node under the guest's ``error/`` and Closing, once."""
        message = f"{doing}: {error}"
        code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
        log.warning("%s: %s: %s", self.kernel.label, dev.nodename, message)
        try:
            self.xs.write(error_path(self.kernel.domid, dev.nodename), f"{code} {message}"[:ERROR_MESSAGE_MAX])
            self.switch_state(dev, XenbusState.Closing)
        except XsError as exc:
            log.warning("%s: %s: cannot report the error: %s", self.kernel.label, dev.nodename, exc)

    def read_otherend(self, dev: FrontDevice, key: str) -> str | None:
        """A node of the back end's directory, None if missing."""
        return self.xs.read_str(f"{dev.otherend}/{key}")

    def read_otherend_int(self, dev: FrontDevice, key: str, default: int = 0) -> int:
        """``xenbus_read_unsigned``."""
        value = self.read_otherend(dev, key)
        try:
            return default if value is None else int(value)
        except ValueError:
            raise FrontendError(f"the back end's {key} {value!r} is not a number") from None

    def otherend_state(self, dev: FrontDevice) -> XenbusState:
        """The back end's state; Unknown once its directory is gone (or no longer readable)."""
        try:
            return XenbusState.parse(self.read_otherend(dev, STATE))
        except XsError:
            return XenbusState.Unknown

    def wait_otherend(self, dev: FrontDevice, states: set[XenbusState], timeout: float | None = None) -> XenbusState:
        """Wait until the back end is in one of ``states``; FrontendError when it does not get there in time."""
        token = f"xenbus-wait-{dev.devicetype}-{dev.devid}"
        path = f"{dev.otherend}/{STATE}"
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self.xs.watch(path, token, self._otherend_changed)
        try:
            while True:
                with self._changed:
                    generation = self._generation
                # Read with no lock held: the watch callback needs the lock, and it
                # runs on the loop thread that delivers this read's reply.
                state = self.otherend_state(dev)
                if state in states:
                    return state
                if state in _GOING and not states & _GOING:
                    raise FrontendError(f"the back end is {state.name}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FrontendError(
                        f"the back end did not reach {', '.join(s.name for s in states)} (it is {state.name})"
                    )
                with self._changed:
                    self._changed.wait_for(self._moved_since(generation), remaining)
        finally:
            self.xs.unwatch(path, token)

    def _moved_since(self, generation: int) -> Callable[[], bool]:
        """Whether a back end's state watch fired since ``generation`` (call with ``_changed`` held)."""
        return lambda: self._generation != generation

    def transact(self, body: Callable[[Any], None]) -> None:
        """Run ``body(transaction)`` in a xenstore transaction, again until it commits without EAGAIN."""
        while True:
            try:
                with self.xs.transaction() as t:
                    body(t)
                return
            except XsError as exc:
                if exc.errno_name != "EAGAIN":
                    raise

    def setup_ring(self, dev: FrontDevice, nr_pages: int) -> SharedRing:
        """``xenbus_setup_ring``: ``nr_pages`` zeroed pages, each granted to the back end."""
        kernel = self.kernel
        first = kernel.pages.alloc(nr_pages, owner=dev.nodename)
        view = kernel.memory.frames(first, nr_pages)
        view[:] = bytes(len(view))
        grefs = [kernel.grant_table.grant_access(dev.otherend_id, first + i) for i in range(nr_pages)]
        return SharedRing(first, view, grefs)

    def teardown_ring(self, dev: FrontDevice, ring: SharedRing) -> None:
        """``xenbus_teardown_ring``: end access to every page; free them only if the back end let go of all."""
        ended = [self._end_access(dev, gref) for gref in ring.grefs]
        if ended and all(ended):
            self.kernel.pages.free(ring.first_pfn)

    def alloc_evtchn(self, dev: FrontDevice, handler: Callable[[int], None]) -> int:
        """``xenbus_alloc_evtchn``: an unbound port for the back end, bound to ``handler`` on the loop."""
        result, fds = self.kernel.hypercall.call("evtchn_alloc_unbound", remote_dom=dev.otherend_id)
        self.kernel.loop.bind(result["port"], fds[0], handler=handler)
        return result["port"]

    def free_evtchn(self, dev: FrontDevice, port: int) -> None:
        """``xenbus_free_evtchn``."""
        try:
            self.kernel.hypercall.call("evtchn_close", port=port)
        except OSError:
            pass
        self.kernel.loop.unbind(port)

    def end_access(self, dev: FrontDevice, gref: int) -> bool:
        """End a grant; False (logged) if the back end still maps it, and the page must stay out of use."""
        return self._end_access(dev, gref)

    # -- internals -------------------------------------------------------------------------

    def _end_access(self, dev: FrontDevice, gref: int) -> bool:
        try:
            self.kernel.grant_table.end_access(gref)
            return True
        except Exception as exc:  # GrantError: still mapped by a back end that did not let go
            log.warning("%s: %s: grant %d: %s; its page stays out of use", self.kernel.label, dev.nodename, gref, exc)
            return False

    def _require(self, path: str) -> str:
        value = self.xs.read_str(path)
        if value is None:
            raise FrontendError(f"{path} is missing")
        return value

    @staticmethod
    def _publish(t: Any, dev: FrontDevice, nodes: dict[str, str]) -> None:
        for key, value in nodes.items():
            t.write(f"{dev.nodename}/{key}", value)
        t.write(f"{dev.nodename}/{STATE}", str(int(XenbusState.Initialised)))


def _trace_state(dev: FrontDevice, state: XenbusState) -> None:
    if trace.on(TraceClass.XENBUS):
        trace.emit(Event.XENBUS_STATE, {"end": "front", "node": dev.nodename, "state": state.name})


def _otherend_token(dev: FrontDevice) -> str:
    return f"xenbus-otherend-{dev.devicetype}-{dev.devid}"
