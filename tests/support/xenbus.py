"""Both xenbus buses in one process, over one in-process xenstore daemon.

:class:`Rig` holds what a bus test needs:

- a :class:`~dom0.xenstored.Xenstored` with guest 1's home laid out as the
  builder lays it out (``[n0, r1]``, a ``device`` directory, a guest-owned
  ``error``), and dom0 clients over it (the toolstack's, the back-end bus's
  two); ``Xenstored`` is not thread-safe, so every call any client makes goes
  through one lock (:class:`LockedXenstore`);
- dom0's back-end bus (:class:`~dom0.xenbus_backend.XenbusBackend`) with a
  :class:`FakeHypercall` and a real :class:`~xenlike.kernel.events.EventLoop`;
  its events are handled only when a test calls ``rig.back.process_events()``
  (or :meth:`Rig.settle`), as dom0's main loop would;
- on demand, guest 1's xenstore client (:class:`GuestXenbus`, the
  ``GuestXenstore`` interface over ``LocalXenstore(daemon, domid=1)``, with a
  pump thread that plays the guest's event-loop thread and runs its watch and
  reply callbacks) and its front-end bus (:class:`~domu.xenbus_frontend.XenbusFrontend`).

:meth:`Rig.close` ends every thread and closes every fd the rig made.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dom0.context import BackendContext
from dom0.devices import device_type
from dom0.xenbus_backend import XenbusBackend, XenbusDevice
from dom0.xenstored import LocalXenstore, Xenstored
from domu.xenbus_frontend import FrontDevice, XenbusFrontend
from xenlike.kernel.events import EventLoop
from xenlike.public.xenbus import (
    BACKEND,
    FRONTEND,
    STATE,
    XenbusState,
    backend_path,
    frontend_path,
)
from xenlike.public.xs_wire import XsdSockmsgType as XS
from xenlike.public.xs_wire import XsError

__all__ = [
    "DEVID",
    "GUEST",
    "FakeBackDriver",
    "FakeFrontDriver",
    "FakeHypercall",
    "GuestXenbus",
    "LockedXenstore",
    "VBD",
    "Rig",
    "wait_until",
    "write_device_nodes",
]

log = logging.getLogger("tests.xenbus")

GUEST = 1  # the guest's domid
DEVID = 51712  # xvda
VBD = "vbd"


# -- xenstore -------------------------------------------------------------------------------


class LockedXenstore(LocalXenstore):
    """A :class:`LocalXenstore` whose every call holds ``lock``; it also keeps what it wrote.

    With ``on_event`` watch events go to it (as ``(path, token)``) instead of :attr:`events`.
    """

    def __init__(
        self,
        daemon: Xenstored,
        domid: int,
        lock: threading.RLock,
        on_event: Callable[[tuple[str, str]], None] | None = None,
    ) -> None:
        self.lock = lock
        self.on_event = on_event
        self.writes: list[tuple[str, str]] = []  # (path, value) of every write, in order
        with lock:
            super().__init__(daemon, domid)

    def _receive(self, delivery: Any) -> None:
        super()._receive(delivery)
        while self.on_event is not None and self.events:
            path, token = self.events.popleft()
            self.on_event((path, token.decode(errors="replace")))

    def request(self, msg_type: int, payload: bytes, tx: int = 0) -> bytes:
        with self.lock:
            return super().request(msg_type, payload, tx)

    def pop_events(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return super().pop_events()

    def close(self) -> None:
        with self.lock:
            super().close()

    def write(self, path: str, value: bytes | str, perms: Any = None, tx: int = 0) -> None:
        self.writes.append((path, value.decode(errors="replace") if isinstance(value, bytes) else value))
        super().write(path, value, perms, tx=tx)

    def written(self, path: str) -> list[str]:
        """Every value this client wrote to ``path``, in order."""
        return [value for p, value in self.writes if p == path]

    def value(self, path: str) -> str | None:
        """A node's value, None if it is missing."""
        try:
            return self.read(path).decode()
        except XsError as exc:
            if exc.errno_name == "ENOENT":
                return None
            raise


def write_guest_home(xs: LocalXenstore, domid: int) -> None:
    """A guest's home as the builder writes it: ``[n0, r<domid>]``, a ``device`` dir, its own ``error``."""

    def body(tx: int) -> None:
        home = f"/local/domain/{domid}"
        xs.write(home, "", perms=["n0", f"r{domid}"], tx=tx)
        xs.write(f"{home}/name", f"guest{domid}", tx=tx)
        xs.write(f"{home}/device", "", tx=tx)
        xs.write(f"{home}/error", "", perms=[f"n{domid}"], tx=tx)

    xs.transact(body)


def write_device_nodes(xs: LocalXenstore, domid: int = GUEST, devid: int = DEVID, kind: str = VBD) -> tuple[str, str]:
    """A device's two directories, linked, in one transaction, as ``DomainBuilder._write_device_nodes``.

    The nodes are the device row's (``dom0.devices``). Returns (front, back) directories.
    """
    row = device_type(kind)
    spec = {"devid": devid, "vdev": "xvda", "access": "rw", "devtype": "disk", "target": os.devnull}
    front = frontend_path(domid, kind, devid)
    back = backend_path(0, kind, domid, devid)

    def body(tx: int) -> None:
        xs.write(front, "", perms=[f"n{domid}", "r0"], tx=tx)
        xs.write(back, "", perms=["n0", f"r{domid}"], tx=tx)
        for key, value in {BACKEND: back, **row.frontend_nodes(domid, spec)}.items():
            xs.write(f"{front}/{key}", value, tx=tx)
        for key, value in {FRONTEND: front, **row.backend_nodes(domid, spec)}.items():
            xs.write(f"{back}/{key}", value, tx=tx)

    xs.transact(body)
    return front, back


class GuestXenbus:
    """A guest's ``GuestXenstore`` over ``LocalXenstore(daemon, domid)``.

    Replies come at once (the daemon is in-process), so the blocking calls work
    from any thread. Watch callbacks and ``request_async`` replies run on a pump
    thread of their own, as the guest's loop thread runs them. Every write is
    kept in :attr:`writes` (paths as given, relative or absolute).
    """

    def __init__(self, daemon: Xenstored, domid: int, lock: threading.RLock) -> None:
        self.domid = domid
        self._queue: queue.Queue[Any] = queue.Queue()
        self._callbacks: dict[str, Callable[[str, str], None]] = {}
        self.writes: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []  # what a callback raised
        self.xs = LockedXenstore(daemon, domid, lock, on_event=self._queue.put)
        self._pump = threading.Thread(target=self._run, name=f"xenstore-pump-d{domid}", daemon=True)
        self._pump.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if callable(item):
                    item()
                else:
                    path, token = item
                    callback = self._callbacks.get(token)
                    if callback is not None:
                        callback(path, token)
            except Exception as exc:  # kept for the test to see, as the real client logs it
                log.exception("d%d: xenstore callback failed", self.domid)
                self.errors.append(exc)

    def close(self) -> None:
        self._queue.put(None)
        self._pump.join(5)
        self.xs.close()

    def written(self, path: str) -> list[str]:
        return [value for p, value in self.writes if p == path]

    # -- GuestXenstore ---------------------------------------------------------------

    def read_str(self, path: str) -> str | None:
        try:
            return self.xs.read(path).decode()
        except XsError as exc:
            if exc.errno_name == "ENOENT":
                return None
            raise

    def write(self, path: str, value: bytes | str) -> None:
        self.writes.append((path, value.decode(errors="replace") if isinstance(value, bytes) else value))
        self.xs.write(path, value)

    def directory(self, path: str) -> list[str]:
        return self.xs.directory(path)

    def watch(self, path: str, token: str, callback: Callable[[str, str], None]) -> None:
        self._callbacks[token] = callback
        self.xs.watch(path, token)

    def watch_async(self, path: str, token: str, callback: Callable[[str, str], None]) -> None:
        try:
            self.watch(path, token, callback)
        except XsError as exc:  # the real client logs a failed asynchronous watch
            log.warning("d%d: watch %s failed: %s", self.domid, path, exc)

    def unwatch(self, path: str, token: str) -> None:
        self.xs.unwatch(path, token)
        self._callbacks.pop(token, None)

    def request_async(self, msg_type: int, payload: bytes, callback: Callable[[int, bytes], None]) -> None:
        try:
            reply_type, reply = msg_type, self.xs.request(msg_type, payload)
        except XsError as exc:
            reply_type, reply = XS.ERROR, exc.errno_name.encode() + b"\0"
        if callback is not None:
            self._queue.put(lambda: callback(reply_type, reply))

    def transaction(self) -> _GuestTransaction:
        return _GuestTransaction(self)


class _GuestTransaction:
    """``with guest.transaction() as t``: commits on exit; a conflict raises XsError EAGAIN."""

    def __init__(self, guest: GuestXenbus) -> None:
        self.guest = guest
        self.id = 0

    def __enter__(self) -> _GuestTransaction:
        self.id = self.guest.xs.transaction_start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        commit = exc_type is None
        if not self.guest.xs.transaction_end(self.id, commit) and commit:
            raise XsError("EAGAIN", "the transaction conflicted")

    def read(self, path: str) -> bytes:
        return self.guest.xs.read(path, self.id)

    def write(self, path: str, value: bytes | str) -> None:
        self.guest.writes.append((path, value.decode() if isinstance(value, bytes) else value))
        self.guest.xs.write(path, value, tx=self.id)


# -- hypercalls and drivers --------------------------------------------------------------------


class FakeHypercall:
    """dom0's hypercall(op, **args): records each call, answers what a bus asks for.

    ``fail`` maps ``op`` (``domctl:<cmd>`` for domctl) to the exception to raise.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, BaseException] = {}
        self._next_port = 10

    def __call__(self, op: str, **args: Any) -> tuple[Any, list[int]]:
        self.calls.append((op, args))
        key = f"domctl:{args.get('cmd')}" if op == "domctl" else op
        if key in self.fail:
            raise self.fail[key]
        if op == "evtchn_bind_interdomain":
            self._next_port += 1
            return {"port": self._next_port}, []
        if key in ("evtchn_close", "domctl:close_channel"):
            return {}, []
        raise OSError(errno.ENOSYS, f"{key} is not faked")

    def made(self, op: str) -> list[dict[str, Any]]:
        """The arguments of every call of ``op``, in order."""
        return [args for name, args in self.calls if name == op]


class _Recorder:
    """Records each callback; ``fail`` makes one raise, ``hold`` makes one wait until :meth:`release`."""

    def __init__(self, fail: dict[str, BaseException] | None = None, hold: tuple[str, ...] = ()) -> None:
        self.calls: list[str] = []  # callback names, in order
        self.fail = dict(fail or {})  # callback name -> what it raises
        self.devices: list[Any] = []  # the device of each call
        self.entered = {name: threading.Event() for name in hold}  # set when a held callback is reached
        self._released = {name: threading.Event() for name in hold}

    def release(self, name: str | None = None) -> None:
        """Let a held callback (every one, without ``name``) go on."""
        for held, event in self._released.items():
            if name is None or held == name:
                event.set()

    def _called(self, name: str, dev: Any) -> None:
        self.calls.append(name)
        self.devices.append(dev)
        if name in self.entered:
            self.entered[name].set()
            self._released[name].wait(5)
        if name in self.fail:
            raise self.fail[name]


class FakeBackDriver(_Recorder):
    """A vbd back-end driver: publishes :attr:`FEATURES`, reads the ring ref and binds the port on connect."""

    devicetype = VBD
    FEATURES = {"feature-flush-cache": "1", "sectors": "2048"}

    def __init__(
        self,
        fail: dict[str, BaseException] | None = None,
        on_connect: Callable[[XenbusBackend, XenbusDevice], None] | None = None,
    ) -> None:
        super().__init__(fail)
        self.on_connect = on_connect
        self.ring_refs: list[list[int]] = []
        self.ports: list[int] = []  # dom0's ports it bound

    def probe(self, bus: XenbusBackend, dev: XenbusDevice) -> dict[str, str]:
        self._called("probe", dev)
        dev.drvdata = {"probed": True}
        return dict(self.FEATURES)

    def connect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        self._called("connect", dev)
        self.ring_refs.append(bus.read_ring_refs(dev, max_order=0))
        port, fds = bus.bind_evtchn(dev, bus.read_otherend_int(dev, "event-channel"))
        for fd in fds:
            os.close(fd)
        self.ports.append(port)
        if self.on_connect is not None:
            self.on_connect(bus, dev)

    def disconnect(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        self._called("disconnect", dev)

    def remove(self, bus: XenbusBackend, dev: XenbusDevice) -> None:
        self._called("remove", dev)


class FakeFrontDriver(_Recorder):
    """A vbd front-end driver: publishes :attr:`NODES` on connect, reads the back end's features."""

    devicetype = VBD
    NODES = {"ring-ref": "8", "event-channel": "3"}

    def __init__(self, fail: dict[str, BaseException] | None = None, hold: tuple[str, ...] = ()) -> None:
        super().__init__(fail, hold)
        self.read: dict[str, Any] = {}  # what it read of the back end

    def probe(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        self._called("probe", dev)
        dev.drvdata = {"probed": True}

    def connect(self, bus: XenbusFrontend, dev: FrontDevice) -> dict[str, str]:
        self._called("connect", dev)
        self.read["feature-flush-cache"] = bus.read_otherend(dev, "feature-flush-cache")
        return dict(self.NODES)

    def connected(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        self._called("connected", dev)
        self.read["sectors"] = bus.read_otherend_int(dev, "sectors")

    def closing(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        self._called("closing", dev)

    def remove(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        self._called("remove", dev)


# -- the rig -------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 2.0, pump: Callable[[], None] | None = None
) -> None:
    """Poll ``predicate`` (calling ``pump`` before each look) until it holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if pump is not None:
            pump()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class _StopBus(BaseException):
    """Ends a front-end bus's handshake thread (a BaseException: the bus's loop catches Exception)."""


class Rig:
    """A xenstore daemon, dom0's back-end bus, and (on demand) guest 1's client and front-end bus."""

    def __init__(self) -> None:
        self._fds_before = _open_fds()
        self._threads_before = set(threading.enumerate())
        self.lock = threading.RLock()
        self.daemon = Xenstored()
        self._clients: list[LockedXenstore] = []
        self.toolstack = self.client(0)
        write_guest_home(self.toolstack, GUEST)
        self.hypercall = FakeHypercall()
        self.loop = EventLoop("dom0")
        self.ctx = BackendContext(
            hypercall=self.hypercall,
            loop=self.loop,
            xs=self.client(0),
            watcher=self.client(0),
            foreign_memory_fd=_no_memory,
            domain_name=lambda domid: f"guest{domid}",
            log_path=Path(os.devnull),
        )
        self.back = XenbusBackend(self.ctx)
        self.guest: GuestXenbus | None = None
        self.front: XenbusFrontend | None = None
        self.front_driver: Any = None
        self.front_path = frontend_path(GUEST, VBD, DEVID)
        self.back_path = backend_path(0, VBD, GUEST, DEVID)
        self.nodename = f"device/{VBD}/{DEVID}"  # the front end's, relative to the guest's home

    def client(self, domid: int) -> LockedXenstore:
        xs = LockedXenstore(self.daemon, domid, self.lock)
        self._clients.append(xs)
        return xs

    def frontend(self, driver: Any, timeout: float) -> XenbusFrontend:
        """Guest 1's front-end bus with ``driver`` registered (not started)."""
        self.guest = GuestXenbus(self.daemon, GUEST, self.lock)
        kernel = SimpleNamespace(domid=GUEST, label=f"d{GUEST} (guest{GUEST})", xenbus=self.guest)
        bus = XenbusFrontend(kernel, timeout=timeout)  # type: ignore[arg-type]
        # XenbusFrontend's thread lives as long as the guest; let close() end it.
        run = bus._run

        def run_until_stopped() -> None:
            try:
                run()
            except _StopBus:
                pass

        bus._run = run_until_stopped  # type: ignore[method-assign]
        bus.register(driver)
        self.front, self.front_driver = bus, driver
        return bus

    def plug(self) -> None:
        """The toolstack writes the device's two directories."""
        write_device_nodes(self.toolstack)

    def settle(self, predicate: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
        """Run dom0's back-end bus until ``predicate`` holds."""
        wait_until(predicate, what, timeout, pump=self.back.process_events)

    def back_state(self) -> XenbusState | None:
        value = self.toolstack.value(f"{self.back_path}/{STATE}")
        return None if value is None else XenbusState.parse(value)

    def front_state(self) -> XenbusState | None:
        value = self.toolstack.value(f"{self.front_path}/{STATE}")
        return None if value is None else XenbusState.parse(value)

    def set_back_state(self, state: XenbusState) -> None:
        self.toolstack.write(f"{self.back_path}/{STATE}", str(int(state)))

    def bus_writes(self, key: str) -> list[str]:
        """What dom0's back-end bus wrote to ``<back dir>/<key>``."""
        return self.ctx.xs.written(f"{self.back_path}/{key}")

    def guest_writes(self, key: str) -> list[str]:
        """What the guest wrote to ``device/vbd/<devid>/<key>``."""
        assert self.guest is not None
        return self.guest.written(f"{self.nodename}/{key}")

    def close(self) -> None:
        """End the front bus's thread and the pump, close every client and the loop."""
        problems: list[str] = []
        bus = self.front
        thread = bus._thread if bus is not None else None
        if self.front_driver is not None and hasattr(self.front_driver, "release"):
            self.front_driver.release()  # a callback the test held must not keep the thread
        if thread is not None:

            def stop() -> None:
                raise _StopBus

            bus.scan = stop  # type: ignore[method-assign,union-attr]
            bus._work.put("stop")  # type: ignore[union-attr]
            thread.join(bus.timeout * 3 + 2)  # type: ignore[union-attr]
            if thread.is_alive():
                problems.append("the front-end bus's thread did not stop")
        if self.guest is not None:
            self.guest.close()
            if self.guest._pump.is_alive():
                problems.append("the guest's pump thread did not stop")
        for xs in self._clients:
            xs.close()
        self.loop.close()
        threads = [t.name for t in set(threading.enumerate()) - self._threads_before if t.is_alive()]
        if threads:
            problems.append(f"threads left running: {threads}")
        fds = _open_fds() - self._fds_before
        if fds:
            problems.append(f"fds left open: {sorted(fds)}")
        assert not problems, problems


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _no_memory(domid: int) -> int:
    raise OSError(errno.ENOSYS, "no guest memory in bus tests")
