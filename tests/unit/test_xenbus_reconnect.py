"""The front-end bus when its back end restarts: InitWait again while Connected (dom0 restarted a dead worker).

A driver with a ``reconnect`` hook lets go of its ring and goes through the
handshake again (connect, Initialised, connected, Connected); one without it is
closed, as before. The back end is played by hand over a real xenstore daemon.
"""

from __future__ import annotations

from domu.xenbus_frontend import FrontDevice, XenbusFrontend
from xenlike.public.xenbus import STATE, XenbusState

from ..support.xenbus import FakeFrontDriver, Rig, wait_until
from .test_xenbus_frontend import back_publishes_features, quiet, rig, start, states  # noqa: F401 (rig: fixture)

S = XenbusState


class ReconnectingDriver(FakeFrontDriver):
    def reconnect(self, bus: XenbusFrontend, dev: FrontDevice) -> None:
        self._called("reconnect", dev)


def connect(rig: Rig, driver: FakeFrontDriver) -> None:
    start(rig, driver)
    back_publishes_features(rig)
    rig.set_back_state(S.InitWait)
    wait_until(lambda: rig.front_state() == S.Initialised, "Initialised")
    rig.set_back_state(S.Connected)
    wait_until(lambda: rig.front_state() == S.Connected, "Connected")


def test_a_back_end_back_in_initwait_is_reconnected_through_the_whole_handshake(rig: Rig) -> None:
    driver = ReconnectingDriver()
    connect(rig, driver)
    rig.set_back_state(S.InitWait)  # the restarted back end
    wait_until(lambda: rig.front_state() == S.Initialised, "Initialised on the new ring")
    assert driver.calls == ["probe", "connect", "connected", "reconnect", "connect"]
    rig.set_back_state(S.Connected)
    wait_until(lambda: rig.front_state() == S.Connected, "Connected again")
    assert driver.calls == ["probe", "connect", "connected", "reconnect", "connect", "connected"]
    assert rig.guest_writes(STATE) == states(S.Initialised, S.Connected, S.Initialised, S.Connected)

    # It still follows the back end: Closing closes it.
    rig.set_back_state(S.Closing)
    wait_until(lambda: rig.front_state() == S.Closed, "Closed")
    assert driver.calls[-1] == "closing"


def test_a_driver_that_cannot_reconnect_is_closed_when_its_back_end_restarts(rig: Rig) -> None:
    driver = FakeFrontDriver()
    connect(rig, driver)
    rig.set_back_state(S.InitWait)
    wait_until(lambda: rig.front_state() == S.Closed, "Closed")
    quiet()
    assert driver.calls == ["probe", "connect", "connected", "closing"]
