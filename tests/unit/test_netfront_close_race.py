"""A vif detached (its queue closed) while a suspend is waiting for its tx ring to drain.

``quiesce`` runs in the suspend thread and looks at the tx ring every few
milliseconds; ``close`` runs in the xenbus front end's thread when the back end
went Closed. A close between two looks released the ring the next look read,
and the ValueError escaped the suspend, leaving the devices it had already
quiesced without their TAPs. The test holds quiesce in its sleep with a request
on the ring no back end answers, closes the queue, then lets go.
"""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

from domu.netfront import netfront as netfront_module
from tests.unit.netif_support import Vif, require_tap


def _frame_in_flight(vif: Vif) -> None:
    """The guest's kernel sends a frame that reaches the tx ring and stays there (netback is stopped)."""
    vif.back_thread.stop()
    sender = vif.guest_ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"ping", ("10.99.0.1", 9))  # an ARP request first: any frame will do
    finally:
        sender.close()
    deadline = time.monotonic() + 10
    while not vif.front._tx_busy:
        assert time.monotonic() < deadline, "the frame never reached the tx ring"
        time.sleep(0.01)


def test_a_queue_closed_while_a_suspend_waits_for_its_tx_ring_ends_the_wait(monkeypatch):
    require_tap()
    vif = Vif()
    try:
        _frame_in_flight(vif)
        entered, release = threading.Event(), threading.Event()
        real_sleep = time.sleep

        def held_sleep(seconds: float) -> None:
            entered.set()
            assert release.wait(10)
            real_sleep(seconds)

        clock = SimpleNamespace(monotonic=time.monotonic, monotonic_ns=time.monotonic_ns, sleep=held_sleep)
        monkeypatch.setattr(netfront_module, "time", clock)
        errors: list[BaseException] = []

        def suspend() -> None:
            try:
                vif.front.quiesce(10.0)
            except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
                errors.append(exc)

        suspender = threading.Thread(target=suspend, daemon=True)
        suspender.start()
        assert entered.wait(10)
        vif.front.stop()
        vif.front.close()  # the detach, while the suspend sleeps between two looks at the ring
        release.set()
        suspender.join(10)
        assert not suspender.is_alive()
        assert not errors, errors
        vif.check()
        vif.front.unquiesce()  # a cancelled suspend's resume: nothing to watch on a closed queue
        assert not vif.front._tap_watched
    finally:
        vif.close()
