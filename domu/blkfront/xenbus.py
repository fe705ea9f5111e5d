"""blkfront's xenbus side (Linux ``drivers/block/xen-blkfront.c``: ``talk_to_blkback``,
``blkback_changed``, ``blkfront_connect``, ``blkfront_closing``).

:class:`Blkfront` follows ``device/vbd`` in the guest's xenstore home. For each
device the toolstack adds it:

1. waits for the back end's InitWait and reads its features
   (``max-ring-page-order``, ``feature-persistent``,
   ``feature-max-indirect-segments``);
2. has the device set up its ring and event channel and size its grant pool
   (:meth:`BlockDevice.setup_ring`, :meth:`BlockDevice.setup_pool`), publishes
   ``ring-ref``/``ring-refN``, ``ring-page-order``, ``event-channel``,
   ``protocol``, ``feature-persistent`` and moves to Initialised;
3. when the back end is Connected, reads ``sectors`` and ``info``, moves to
   Connected and watches the back end's state;
4. on detach (the device gone, or the back end Closing or Closed) stops the
   device's I/O, goes Closing and Closed, waits for the back end's Closed and
   has the device tear its ring down (:meth:`BlockDevice.stop_io`,
   :meth:`BlockDevice.teardown_ring`).

Handshakes run in a thread of their own, since they wait for the back end.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

from xenlike.public.blkif import VDISK_READONLY, XEN_IO_PROTO_ABI_NATIVE
from xenlike.public.xenbus import XenbusState
from xenlike.public.xs_wire import XsdSockmsgType as XS
from xenlike.public.xs_wire import XsError

from .blkfront import MAX_RING_PAGE_ORDER, BlockDevice, BlockIOError

if TYPE_CHECKING:
    from ..kernel import Kernel
    from ..xenbus import Transaction

__all__ = ["Blkfront", "HANDSHAKE_TIMEOUT_S"]

log = logging.getLogger("domu.blkfront")

HANDSHAKE_TIMEOUT_S = 10.0
BACKEND_FEATURES = ("max-ring-page-order", "feature-persistent", "feature-max-indirect-segments")


class Blkfront:
    """Every vbd of this guest, and the thread that runs their handshakes."""

    def __init__(self, kernel: "Kernel") -> None:
        self.kernel = kernel
        self.disks: dict[str, BlockDevice] = {}
        self._by_devid: dict[int, BlockDevice] = {}
        self._work: queue.Queue[str] = queue.Queue()
        self._backend_changed = threading.Condition()
        self._generation = 0  # bumped by every back-end state watch event
        self._thread: threading.Thread | None = None
        kernel.xenbus.watch_async("device/vbd", "blkfront", self._on_devices_changed)

    def _on_devices_changed(self, path: str, token: str) -> None:
        """Watch on ``device/vbd`` (loop thread): scan, once there is anything to scan.

        A guest without disks never starts the handshake thread.
        """
        def listed(msg_type: int, payload: bytes) -> None:
            if payload.strip(b"\0") or self._by_devid:
                self._scan_soon()

        self.kernel.xenbus.request_async(XS.DIRECTORY, b"device/vbd\0", listed)

    def _scan_soon(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xenbus-blkfront", daemon=True)
            self._thread.start()
        self._work.put("scan")

    def wait_for(self, vdevs: list[str], timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        """Block until these disks are connected (the kernel waits for its boot disks)."""
        with self._backend_changed:
            self._backend_changed.wait_for(lambda: all(v in self.disks for v in vdevs), timeout)

    def transact(self, body: Callable[["Transaction"], None]) -> None:
        """Run ``body(transaction)`` in a xenstore transaction, again until it commits without EAGAIN."""
        while True:
            try:
                with self.kernel.xenbus.transaction() as t:
                    body(t)
                return
            except XsError as exc:
                if exc.errno_name != "EAGAIN":
                    raise

    def wait_backend(self, device: BlockDevice, states: set[XenbusState], timeout: float = HANDSHAKE_TIMEOUT_S) -> XenbusState:
        """Wait until the back end of ``device`` is in one of ``states``."""
        token = f"blkfront-be-{device.devid}"
        path = f"{device.backend_path}/state"
        deadline = time.monotonic() + timeout
        self.kernel.xenbus.watch(path, token, lambda p, t: self._notify())
        try:
            while True:
                with self._backend_changed:
                    generation = self._generation
                # Read with no lock held: the watch callback needs the lock, and it
                # runs on the loop thread that delivers this read's reply.
                state = self._backend_state(device)
                if state in states:
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BlockIOError(f"{device.vdev}: the back end did not reach "
                                       f"{', '.join(s.name for s in states)} (it is {state.name})")
                with self._backend_changed:
                    self._backend_changed.wait_for(lambda: self._generation != generation, remaining)
        finally:
            self.kernel.xenbus.unwatch(path, token)

    def _backend_state(self, device: BlockDevice) -> XenbusState:
        """The back end's state; Unknown once its directory is gone (or no longer readable)."""
        try:
            return XenbusState.parse(self.kernel.xenbus.read_str(f"{device.backend_path}/state"))
        except XsError:
            return XenbusState.Unknown

    def _notify(self) -> None:
        with self._backend_changed:
            self._generation += 1
            self._backend_changed.notify_all()
        self._scan_soon()

    def _run(self) -> None:
        while True:
            self._work.get()
            while not self._work.empty():
                self._work.get_nowait()
            try:
                self._scan()
            except Exception:
                log.exception("d%d: blkfront scan failed", self.kernel.domid)

    def _scan(self) -> None:
        xs = self.kernel.xenbus
        try:
            present = {int(d) for d in xs.directory("device/vbd")}
        except XsError:
            present = set()
        for devid in sorted(present - set(self._by_devid)):
            self._attach(devid)
        for devid, device in list(self._by_devid.items()):
            state = self._backend_state(device) if device.backend_path else XenbusState.Unknown
            if devid not in present or state in (XenbusState.Closing, XenbusState.Closed, XenbusState.Unknown):
                self._detach(device)

    def _attach(self, devid: int) -> None:
        xs = self.kernel.xenbus
        base = f"device/vbd/{devid}"
        backend = xs.read_str(f"{base}/backend")
        if backend is None:
            return
        vdev = xs.read_str(f"{backend}/dev") or str(devid)
        device = BlockDevice(self.kernel, devid, vdev)
        self._by_devid[devid] = device
        try:
            self._connect(device)
        except Exception as exc:
            log.warning("d%d %s: cannot connect: %s", self.kernel.domid, vdev, exc)
            return
        with self._backend_changed:
            self.disks[vdev] = device
            self._backend_changed.notify_all()
        print(f"[blkfront] {vdev}: {device.size >> 20} MiB{' read-only' if device.readonly else ''}", flush=True)

    def _detach(self, device: BlockDevice) -> None:
        self._by_devid.pop(device.devid, None)
        self.disks.pop(device.vdev, None)
        try:
            self._close(device)
        except Exception as exc:
            log.warning("d%d %s: close: %s", self.kernel.domid, device.vdev, exc)
        print(f"[blkfront] {device.vdev}: detached", flush=True)

    # -- one device's handshake ------------------------------------------------------

    def _connect(self, device: BlockDevice) -> None:
        """Take ``device`` from its back end's InitWait to Connected (see the module)."""
        xs = self.kernel.xenbus
        device.backend_path = xs.read_str(f"{device.path}/backend") or ""
        device.backend_id = int(xs.read_str(f"{device.path}/backend-id") or 0)
        self.wait_backend(device, {XenbusState.InitWait, XenbusState.Connected})
        features = {key: xs.read_str(f"{device.backend_path}/{key}") for key in BACKEND_FEATURES}
        order = min(int(features["max-ring-page-order"] or 0), MAX_RING_PAGE_ORDER)
        device.persistent = features["feature-persistent"] == "1"
        ring_refs, port = device.setup_ring(order)
        device.setup_pool(int(features["feature-max-indirect-segments"] or 0))
        self.transact(lambda t: self._publish(t, device, order, ring_refs, port))
        self.wait_backend(device, {XenbusState.Connected})
        device.sectors = int(xs.read_str(f"{device.backend_path}/sectors") or 0)
        device.readonly = bool(int(xs.read_str(f"{device.backend_path}/info") or 0) & VDISK_READONLY)
        xs.write(f"{device.path}/state", str(int(XenbusState.Connected)))
        # Follow the other end from now on (Linux's otherend watch): its Closing starts a detach.
        xs.watch(f"{device.backend_path}/state", _otherend_token(device), lambda path, token: self._notify())

    @staticmethod
    def _publish(t: "Transaction", device: BlockDevice, order: int, ring_refs: list[int], port: int) -> None:
        """Write the front end's half of the handshake and move to Initialised, in transaction ``t``."""
        if order == 0:
            t.write(f"{device.path}/ring-ref", str(ring_refs[0]))
        else:
            t.write(f"{device.path}/ring-page-order", str(order))
            for i, gref in enumerate(ring_refs):
                t.write(f"{device.path}/ring-ref{i}", str(gref))
        t.write(f"{device.path}/event-channel", str(port))
        t.write(f"{device.path}/protocol", XEN_IO_PROTO_ABI_NATIVE)
        t.write(f"{device.path}/feature-persistent", "1")
        t.write(f"{device.path}/state", str(int(XenbusState.Initialised)))

    def _close(self, device: BlockDevice) -> None:
        """The back end is going away: fail what is in flight, go Closed, give the grants back."""
        xs = self.kernel.xenbus
        device.stop_io()
        try:
            xs.unwatch(f"{device.backend_path}/state", _otherend_token(device))
        except XsError:
            pass
        xs.write(f"{device.path}/state", str(int(XenbusState.Closing)))
        xs.write(f"{device.path}/state", str(int(XenbusState.Closed)))
        self.wait_backend(device, {XenbusState.Closed}, timeout=HANDSHAKE_TIMEOUT_S)
        device.teardown_ring()


def _otherend_token(device: BlockDevice) -> str:
    return f"blkfront-otherend-{device.devid}"
