"""blkfront's teardown against a thread still polling the ring.

A request's waiter polls the ring (virtio-style event suppression) and, on its
way out, re-arms ``rsp_event`` under the device's lock. If the back end closes
meanwhile, the handshake thread fails the request (``stop_io``) and tears the
ring down (``teardown_ring``): the waiter must then find no ring, never a ring
whose views were released under it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from domu.blkfront.blkfront import BlockDevice, BlockIOError
from domu.xenbus_frontend import SharedRing
from xenlike.public.xen import PAGE_SIZE


class _Bus:
    """What BlockDevice asks of the front-end bus for its ring, and nothing else."""

    def __init__(self) -> None:
        self.kernel = SimpleNamespace(domid=1, loop=SimpleNamespace(notify=lambda port: None))
        self.freed: list[str] = []

    def setup_ring(self, xdev: object, nr_pages: int) -> SharedRing:
        return SharedRing(first_pfn=0, view=memoryview(bytearray(nr_pages * PAGE_SIZE)), grefs=[8])

    def alloc_evtchn(self, xdev: object, handler: object) -> int:
        return 5

    def free_evtchn(self, xdev: object, port: int) -> None:
        self.freed.append("evtchn")

    def teardown_ring(self, xdev: object, shared: SharedRing) -> None:
        self.freed.append("ring")


def _device() -> BlockDevice:
    bus = _Bus()
    device = BlockDevice(bus, SimpleNamespace(devid=51712, otherend_id=0), "xvda")  # type: ignore[arg-type]
    device.setup_ring(0)
    return device


def test_a_poller_leaving_after_the_teardown_finds_no_ring():
    device = _device()
    device._poll_begin()  # a waiter is in its polling loop
    device.stop_io()  # the back end closes: the waiter's request fails
    device.teardown_ring()  # and the handshake thread takes the ring down
    device._poll_responses()  # the waiter's last look
    device._poll_end()  # re-arming on the way out: no ring, nothing to do
    assert device.ring is None
    assert device.bus.freed == ["evtchn", "ring"]


def test_a_teardown_with_no_poller_releases_the_ring_views():
    device = _device()
    ring = device.ring
    device.teardown_ring()
    assert device.ring is None
    with pytest.raises(ValueError):  # a released memoryview: the views did not outlive the teardown
        ring.unconsumed_responses()


def test_submitting_after_the_teardown_is_refused():
    device = _device()
    device.stop_io()
    device.teardown_ring()
    with pytest.raises(BlockIOError, match="xvda"):
        device.submit_flush()
