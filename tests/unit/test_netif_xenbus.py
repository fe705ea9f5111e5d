"""netback's and netfront's xenbus drivers on both real buses, over one in-process xenstore daemon.

The handshake is the real one (``dom0.xenbus_backend`` with
:class:`~dom0.netback.xenbus.NetbackDriver`, ``domu.xenbus_frontend`` with
:class:`~domu.netfront.xenbus.NetfrontDriver`); what the hypervisor and the
platform would give is played here: the worker runs its data path in-process
(``netif_data_path`` from the spec the driver built) instead of in a forked
process, the event channel is a pair of eventfds, grant maps go through the
hypervisor's ``GrantMapper``, and the TAPs are made in namespaces of the test's
own (``network.open_vif`` in dom0's, the ``netif_tap`` hypercall in the guest's).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

import pytest

from dom0.backend_worker import WorkerContext, WorkerSpec
from dom0.netback.xenbus import NetbackDriver, parse_rate
from dom0.xenbus_backend import XenbusDevice
from domu.netfront.xenbus import NetfrontDriver
from domu.xenbus_frontend import XenbusFrontend
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.public import netif
from xenlike.public.xenbus import BACKEND, BACKEND_ID, FRONTEND, FRONTEND_ID, ONLINE, STATE, XenbusState
from xenlike.public.xenbus import backend_path, error_path, frontend_path

from ..support.xenbus import GUEST, GuestXenbus, Rig, wait_until
from .netif_support import (
    DOM0_ADDRESS,
    GUEST_ADDRESS,
    FrontKernel,
    HypervisorGrants,
    LoopThread,
    Namespace,
    require_tap,
    serve_step,
)

S = XenbusState
DEVID = 0
FRONT_DIR = frontend_path(GUEST, netif.DEVICE_TYPE, DEVID)
BACK_DIR = backend_path(0, netif.DEVICE_TYPE, GUEST, DEVID)


class Network:
    """dom0's back-end namespace: ``open_vif`` makes the TAP there (no bridge: the test needs none)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.opened: list[tuple[str, str, int]] = []

    def open_vif(self, name: str, bridge: str, mtu: int) -> int:
        self.opened.append((name, bridge, mtu))
        return self.ns.tap(name, DOM0_ADDRESS, mtu)


class GuestHypercalls:
    """The guest's hypercalls netfront's driver makes: netif_tap, and the event channel's."""

    def __init__(self, ns: Namespace, loop: EventLoop) -> None:
        self.ns = ns
        self.loop = loop
        self.port_fd: int | None = None  # the front end's pending fd, for the back end to notify

    def call(self, op: str, **args: Any) -> tuple[dict[str, Any], list[int]]:
        if op == "netif_tap":
            name = f"eth{args['devid']}"
            return {"name": name, "mac": "00:16:3e:00:00:01", "mtu": 1500, "ip": "10.99.0.2"}, [
                self.ns.tap(name, GUEST_ADDRESS)
            ]
        if op == "evtchn_alloc_unbound":
            self.port_fd = new_port_fd()
            return {"port": 3}, [self.port_fd]
        if op == "evtchn_close":
            return {}, []
        raise AssertionError(f"unexpected hypercall {op}")


class InProcessNetback(NetbackDriver):
    """NetbackDriver whose worker is a thread of this process (and whose port is an eventfd pair)."""

    def __init__(self, network: Network, kernel: FrontKernel, guest: GuestHypercalls) -> None:
        super().__init__(network)
        self.kernel = kernel
        self.guest = guest
        self.specs: list[WorkerSpec] = []
        self.workers: list[tuple[LoopThread, Any, EventLoop]] = []

    def connect(self, bus, dev: XenbusDevice) -> None:
        bus.bind_evtchn = lambda dev, remote_port: self._bind(dev, remote_port)
        bus.start_worker = lambda dev, spec: self._start(dev, spec)
        super().connect(bus, dev)

    def _bind(self, dev: XenbusDevice, remote_port: int) -> tuple[int, list[int]]:
        assert remote_port == 3 and self.guest.port_fd is not None
        back_fd = new_port_fd()
        self.kernel.loop.connect(3, os.dup(back_fd))
        dev.ports.append(7)
        return 7, [back_fd, os.dup(self.guest.port_fd)]

    def _start(self, dev: XenbusDevice, spec: WorkerSpec) -> None:
        self.specs.append(spec)
        loop = EventLoop(spec.label)
        (port, fds), = spec.ports
        loop.bind(port, fds[0], fds[1])
        mapper = GrantMapper({GUEST: self.kernel.grant_table}.__getitem__)
        ctx = WorkerContext(spec.label, spec.frontend_id, HypervisorGrants(mapper), loop, self.kernel.memory.fd,
                            [port], spec.fds, spec.params)
        queue = spec.data_path(ctx)
        self.workers.append((LoopThread("netback", serve_step(queue, loop, port)), queue, loop))

    def disconnect(self, bus, dev: XenbusDevice) -> None:
        self.stop_workers()

    def stop_workers(self) -> None:
        for thread, queue, loop in self.workers:
            thread.stop()
            queue.close()
            loop.close()
        self.workers.clear()


def write_vif_nodes(rig: Rig, **back_nodes: str) -> None:
    """The toolstack's half of a vif (libxl_nic.c), in one transaction."""
    xs = rig.toolstack

    def body(tx: int) -> None:
        xs.write(FRONT_DIR, "", perms=[f"n{GUEST}", "r0"], tx=tx)
        xs.write(BACK_DIR, "", perms=["n0", f"r{GUEST}"], tx=tx)
        for key, value in {BACKEND: BACK_DIR, BACKEND_ID: "0", STATE: "1", netif.HANDLE: "0",
                           netif.MAC: "00:16:3e:00:00:01"}.items():
            xs.write(f"{FRONT_DIR}/{key}", value, tx=tx)
        nodes = {FRONTEND: FRONT_DIR, FRONTEND_ID: str(GUEST), STATE: "1", ONLINE: "1", netif.HANDLE: "0",
                 netif.MAC: "00:16:3e:00:00:01", netif.BRIDGE: "xenbr0", **back_nodes}
        for key, value in nodes.items():
            xs.write(f"{BACK_DIR}/{key}", value, tx=tx)

    xs.transact(body)


@pytest.fixture
def world():
    require_tap()
    rig = Rig()
    parts: dict[str, Any] = {"rig": rig}
    try:
        parts["guest_ns"], parts["dom0_ns"] = Namespace(), Namespace()
        kernel = parts["kernel"] = FrontKernel(GUEST)
        rig.guest = GuestXenbus(rig.daemon, GUEST, rig.lock)
        kernel.xenbus = rig.guest
        kernel.hypercall = GuestHypercalls(parts["guest_ns"], kernel.loop)
        parts["loop_thread"] = LoopThread("guest loop", lambda: kernel.loop.poll(0.05) and None)
        parts["back_driver"] = InProcessNetback(Network(parts["dom0_ns"]), kernel, kernel.hypercall)
        rig.back.register(parts["back_driver"])
        parts["front_driver"] = NetfrontDriver()
        yield parts
    finally:
        front_driver = parts.get("front_driver")
        bus = rig.front
        if bus is not None:
            stop_bus_thread(bus)
            for dev in list(bus.devices.values()):  # the guest goes away: its drivers let go
                if dev.drvdata is not None:
                    front_driver.closing(bus, dev)
            parts["back_driver"].stop_workers()
            for dev in list(bus.devices.values()):
                if dev.drvdata is not None:
                    front_driver.remove(bus, dev)
        elif "back_driver" in parts:
            parts["back_driver"].stop_workers()
        if "loop_thread" in parts:
            parts["loop_thread"].stop()
        for key in ("kernel", "guest_ns", "dom0_ns"):
            if key in parts:
                parts[key].close()
        rig.close()


class _Stop(BaseException):
    """Ends the front-end bus's thread."""


def stop_bus_thread(bus: XenbusFrontend) -> None:
    """End the bus's handshake thread, so the test's teardown does not race it."""
    thread = bus._thread
    if thread is None:
        return

    def stop() -> None:
        raise _Stop

    bus.scan = stop
    bus._work.put("stop")
    thread.join(bus.timeout * 3 + 2)


def start_front(world) -> XenbusFrontend:
    rig: Rig = world["rig"]
    bus = XenbusFrontend(world["kernel"], timeout=5.0)
    run = bus._run

    def run_until_stopped() -> None:
        try:
            run()
        except BaseException:
            pass

    bus._run = run_until_stopped
    bus.register(world["front_driver"])
    rig.front, rig.front_driver = bus, world["front_driver"]
    bus.start()
    return bus


def state(rig: Rig, path: str) -> XenbusState | None:
    value = rig.toolstack.value(f"{path}/{STATE}")
    return None if value is None else XenbusState.parse(value)


def test_a_vif_connects_carries_tcp_and_closes(world) -> None:
    rig: Rig = world["rig"]
    write_vif_nodes(rig, **{netif.MTU: "1500", netif.RATE: "125000000,50000"})
    start_front(world)
    rig.settle(lambda: state(rig, FRONT_DIR) == S.Connected, "both ends Connected", timeout=10)
    assert state(rig, BACK_DIR) == S.Connected

    # What each end published.
    for key in (netif.FEATURE_SG, netif.FEATURE_GSO_TCPV4, netif.FEATURE_GSO_TCPV6, netif.FEATURE_RX_COPY):
        assert rig.toolstack.value(f"{BACK_DIR}/{key}") == "1"
    assert rig.toolstack.value(f"{BACK_DIR}/{netif.FEATURE_RX_FLIP}") == "0"
    assert rig.toolstack.value(f"{FRONT_DIR}/{netif.REQUEST_RX_COPY}") == "1"
    (spec,) = world["back_driver"].specs
    assert spec.params["rate"] == [125000000, 50000] and spec.params["mtu"] == 1500
    assert spec.params["sg"] and spec.params["gso_tcpv4"] and spec.params["csum"]
    assert world["back_driver"].network.opened == [("vif1.0", "xenbr0", 1500)]
    interface = world["front_driver"].interfaces["eth0"]
    assert (interface.mac, interface.ip, interface.mtu) == ("00:16:3e:00:00:01", "10.99.0.2", 1500)

    # TCP from the guest's namespace to dom0's, through both drivers' rings.
    server = world["dom0_ns"].socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("10.99.0.1", 5003))
    server.listen(1)
    server.settimeout(10)
    got = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                got.extend(chunk)
            conn.sendall(b"done")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = world["guest_ns"].socket()
    client.settimeout(10)
    client.connect(("10.99.0.1", 5003))
    client.sendall(b"x" * (4 << 20))
    client.shutdown(socket.SHUT_WR)
    assert client.recv(4) == b"done"
    client.close()
    thread.join(10)
    server.close()
    assert len(got) == 4 << 20
    assert interface.stats["tx_bytes"] >= 4 << 20 and interface.stats["rx_packets"] > 0

    # The toolstack unplugs it: both ends close, the interface leaves ctx.net, the worker stops.
    rig.back.request_close(netif.DEVICE_TYPE, GUEST, DEVID)
    rig.settle(lambda: state(rig, FRONT_DIR) == S.Closed and state(rig, BACK_DIR) == S.Closed, "both Closed",
               timeout=10)
    wait_until(lambda: "eth0" not in world["front_driver"].interfaces, "eth0 gone")
    assert world["back_driver"].workers == []


def test_a_front_end_without_request_rx_copy_is_refused_with_eopnotsupp(world) -> None:
    rig: Rig = world["rig"]
    write_vif_nodes(rig)
    rig.settle(lambda: state(rig, BACK_DIR) == S.InitWait, "InitWait")
    for key, value in {netif.TX_RING_REF: "8", netif.RX_RING_REF: "9", netif.EVENT_CHANNEL: "3",
                       STATE: str(int(S.Initialised))}.items():
        rig.toolstack.write(f"{FRONT_DIR}/{key}", value)
    rig.settle(lambda: state(rig, BACK_DIR) == S.Closing, "Closing")
    error = rig.toolstack.value(error_path(0, f"backend/vif/{GUEST}/{DEVID}"))
    assert error is not None and error.startswith(f"{errno.EOPNOTSUPP} ") and "request-rx-copy" in error
    assert world["back_driver"].network.opened == []


@pytest.mark.parametrize("nodes, message", [
    ({netif.MTU: "9x"}, "mtu '9x' is not a number"),
    ({netif.MTU: "20"}, "mtu '20' is not a number in 68"),
    ({netif.RATE: "100"}, "rate '100' is not \"bytes,usecs\""),
    ({netif.RATE: "0,50000"}, "must be positive"),
])
def test_bad_toolstack_nodes_are_refused_at_probe(world, nodes, message) -> None:
    rig: Rig = world["rig"]
    write_vif_nodes(rig, **nodes)
    rig.settle(lambda: state(rig, BACK_DIR) == S.Closing, "Closing")
    error = rig.toolstack.value(error_path(0, f"backend/vif/{GUEST}/{DEVID}"))
    assert error is not None and message in error


def test_parse_rate() -> None:
    assert parse_rate("12500000,50000") == (12500000, 50000)
    for bad in ("", "1", "1,2,3", "a,b", "-1,5", "1,0"):
        with pytest.raises(ValueError):
            parse_rate(bad)
