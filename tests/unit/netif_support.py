"""Both ends of a vif in one process, over real TAP devices in network namespaces of their own.

- :class:`Namespace`: a network namespace from ``netdev.new_netns()`` (nothing
  names it: it goes with its fd), with ``lo`` up and TAPs made in it;
- :class:`HypervisorGrants`: the ``grant_map``/``grant_unmap`` hypercalls answered by
  the hypervisor's own ``GrantMapper`` checks (as the blkback hostile test does);
- :class:`FrontKernel`: the members of a guest kernel netfront uses (its memory,
  page allocator, grant table and event loop), as ``domu.guest_kernel.GuestKernel``;
- :class:`Vif`: netfront's :class:`~domu.netfront.netfront.NetfrontQueue` on a TAP
  ``eth0`` in the guest's namespace, netback's :class:`~dom0.netback.netback.NetifQueue`
  on a TAP ``vif1.0`` in dom0's, their rings and event channel between them, each
  side's loop on a thread of its own (the guest kernel's loop thread; the
  back-end worker's ``_serve``).

Every fd, thread, mapping and namespace is released by ``close()``, even after a failure.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dom0.netback.netback import NetifQueue
from domu.netfront.netfront import BackendFeatures, NetfrontQueue
from domu.xenbus_frontend import SharedRing
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.kernel import netdev
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import HypercallError
from xenlike.kernel.memory import GuestMemory, PageAllocator
from xenlike.kernel.rtnetlink import Rtnetlink
from xenlike.public.grant_table import GrantError
from xenlike.public.ring import RingError

FRONT = 5  # the guest's domid
GUEST_ADDRESS, DOM0_ADDRESS = "10.99.0.2/24", "10.99.0.1/24"
FRONT_PORT, BACK_PORT = 3, 7


def require_tap() -> None:
    """Skip, naming what is missing, unless this process may make TAPs and namespaces."""
    missing = netdev.probe()
    if missing is not None:
        pytest.skip(f"needs {missing}")


class HypervisorGrants:
    """The grant_map/grant_unmap hypercalls, answered by the hypervisor's own checks."""

    def __init__(self, mapper: GrantMapper) -> None:
        self.mapper = mapper

    def call(self, op: str, **args: Any) -> tuple[dict[str, Any], list[int]]:
        try:
            if op == "grant_map":
                readonly = args.get("readonly", False)
                done = [self.mapper.map_grant_ref(0, args["granter"], ref, readonly) for ref in args["refs"]]
                return {"frames": [m.frame for m in done], "handles": [m.handle for m in done]}, []
            if op == "grant_unmap":
                for handle in args["handles"]:
                    self.mapper.unmap_grant_ref(0, handle)
                return {}, []
        except GrantError as exc:
            raise HypercallError(22, str(exc)) from None
        raise AssertionError(f"unexpected hypercall {op}")


class Namespace:
    """A network namespace of the test's own, ``lo`` up."""

    def __init__(self) -> None:
        self.fd = netdev.new_netns()
        with netdev.in_netns(self.fd), Rtnetlink() as rt:
            rt.set_link(rt.link_index("lo"), up=True)

    def tap(self, name: str, address: str | None = None, mtu: int = 1500) -> int:
        """A TAP ``name`` here (10-byte vnet header), up, with ``address``; returns its fd."""
        with netdev.in_netns(self.fd):
            fd, _ = netdev.open_tap(name)
            with Rtnetlink() as rt:
                index = rt.link_index(name)
                rt.set_link(index, up=True, mtu=mtu)
                if address is not None:
                    rt.add_address(index, ipaddress.IPv4Interface(address))
        return fd

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        with netdev.in_netns(self.fd):
            return socket.socket(family, kind)

    def close(self) -> None:
        os.close(self.fd)


class FrontKernel:
    """A guest kernel as netfront sees it: memory, page allocator, grant table, event loop."""

    def __init__(self, domid: int = FRONT, nr_frames: int = 4096) -> None:
        self.domid = domid
        self.label = f"d{domid} (test)"
        self.memory = GuestMemory.create(nr_frames, f"test-net-d{domid}")
        self.grant_table = GrantTable(self.memory, 1, 2)  # 1024 entries: rings and both pools
        self.pages = PageAllocator(3, nr_frames)
        self.loop = EventLoop(self.label)
        self.hypercall = None
        self.xenbus = None
        self._views: list[memoryview] = []

    def write(self, pfn: int, data: bytes) -> None:
        """Write ``data`` at the start of frame ``pfn`` (holding no view of it afterwards)."""
        with self.memory.frames(pfn, 1) as view:
            view[: len(data)] = data

    def shared_ring(self, grantee: int = 0) -> SharedRing:
        pfn = self.pages.alloc(1)
        view = self.memory.frames(pfn, 1)
        view[:] = bytes(len(view))
        self._views.append(view)
        return SharedRing(pfn, view, [self.grant_table.grant_access(grantee, pfn)])

    def close(self) -> None:
        self.loop.close()
        for view in self._views:
            view.release()
        self.grant_table.release()
        self.memory.close()


class LoopThread:
    """Run ``step`` until stopped; an exception stops the thread and is kept for the test to see."""

    def __init__(self, name: str, step: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._step = step
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._step()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def serve_step(queue: NetifQueue, loop: EventLoop, port: int) -> Callable[[], None]:
    """One turn of the back-end worker's ``_serve`` loop."""

    def step() -> None:
        if queue.process():
            loop.notify(port)
        elif not queue.final_check():
            loop.poll(0.05)

    return step


def event_channel(front: EventLoop, back: EventLoop) -> None:
    """An interdomain channel: each end's pending fd, and the peer's to notify."""
    front_fd, back_fd = new_port_fd(), new_port_fd()
    front.bind(FRONT_PORT, front_fd, os.dup(back_fd))
    back.bind(BACK_PORT, back_fd, os.dup(front_fd))


class Vif:
    """netfront and netback connected over their rings, each on a TAP in its own namespace."""

    def __init__(
        self,
        *,
        features: BackendFeatures = BackendFeatures(sg=True, gso_tcpv4=True, gso_tcpv6=True, ipv6_csum=True),
        rate: tuple[int, int] | None = None,
        mtu: int = 1500,
        front_sg: bool = True,
        front_gso: bool = True,
        front_csum: bool = True,
    ) -> None:
        self._closers: list[Callable[[], None]] = []
        try:
            self._build(features, rate, mtu, front_sg, front_gso, front_csum)
        except BaseException:
            self.close()
            raise

    def _build(
        self,
        features: BackendFeatures,
        rate: tuple[int, int] | None,
        mtu: int,
        front_sg: bool,
        front_gso: bool,
        front_csum: bool,
    ) -> None:
        self.guest_ns = Namespace()
        self._closers.append(self.guest_ns.close)
        self.dom0_ns = Namespace()
        self._closers.append(self.dom0_ns.close)
        self.kernel = FrontKernel()
        self._closers.append(self.kernel.close)
        self.mapper = GrantMapper({FRONT: self.kernel.grant_table}.__getitem__)
        self.back_loop = EventLoop("test netback")
        self._closers.append(self.back_loop.close)
        event_channel(self.kernel.loop, self.back_loop)
        tx_ring, rx_ring = self.kernel.shared_ring(), self.kernel.shared_ring()
        guest_tap = self.guest_ns.tap("eth0", GUEST_ADDRESS, mtu)
        dom0_tap = self.dom0_ns.tap("vif5.0", DOM0_ADDRESS, mtu)
        gso4, gso6 = front_sg and front_gso and front_csum, front_sg and front_gso and front_csum
        netdev.set_offload(
            dom0_tap,
            (netdev.TUN_F_CSUM if front_csum else 0)
            | (netdev.TUN_F_TSO4 if gso4 else 0)
            | (netdev.TUN_F_TSO6 if gso6 else 0),
        )
        self.front = NetfrontQueue(
            self.kernel, 0, guest_tap, tx_ring, rx_ring, FRONT_PORT, features, name="eth0", mtu=mtu
        )
        self._closers.append(self.front.close)
        self.kernel.loop.set_handler(FRONT_PORT, self.front.on_event)
        self.back = NetifQueue(
            "test vif5.0",
            FRONT,
            HypervisorGrants(self.mapper),
            self.kernel.memory.fd,
            self.back_loop,
            dom0_tap,
            tx_ring.grefs[0],
            rx_ring.grefs[0],
            sg=front_sg,
            gso_tcpv4=gso4,
            gso_tcpv6=gso6,
            csum=front_csum,
            rate=rate,
            mtu=mtu,
        )
        self._closers.append(self.back.close)
        self.back_thread = LoopThread("netback", serve_step(self.back, self.back_loop, BACK_PORT))
        self._closers.append(self.back_thread.stop)
        self.front_thread = LoopThread("netfront", lambda: self.kernel.loop.poll(0.05) and None)
        self._closers.append(self.front_thread.stop)
        self.front.start()

    def check(self) -> None:
        """Neither loop failed."""
        for thread in (self.back_thread, self.front_thread):
            if thread.error is not None:
                raise AssertionError(f"a loop failed: {thread.error!r}") from thread.error

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except RingError:
                pass
        self._closers.clear()
