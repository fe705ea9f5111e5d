"""The guest's front-end xenbus, driven in-process over a real xenstore daemon.

The bus runs its own handshake thread, and its watch callbacks run on the
guest client's pump thread; the back end is either played by hand (the
toolstack's connection writes its state) or is dom0's real back-end bus with a
fake driver, run from the test's thread (:meth:`Rig.settle`).
"""

from __future__ import annotations

import errno
import logging
import time
from types import SimpleNamespace

import pytest

from dom0.xenbus_backend import BackendError
from domu.xenbus_frontend import FrontDevice, FrontendError, XenbusFrontend
from xenlike.public.xenbus import STATE, XenbusState, error_path

from ..support.xenbus import DEVID, GUEST, VBD, FakeBackDriver, FakeFrontDriver, Rig, wait_until

S = XenbusState
TIMEOUT = 2.0  # the bus's handshake timeout where the test answers it in time
GIVE_UP = 0.3  # where the bus is meant to give up
FRONT_ERROR = error_path(GUEST, f"device/{VBD}/{DEVID}")
BACK_ERROR = error_path(0, f"backend/{VBD}/{GUEST}/{DEVID}")


@pytest.fixture
def rig(caplog: pytest.LogCaptureFixture):
    rig = Rig()
    try:
        with caplog.at_level(logging.WARNING):
            yield rig
    finally:
        rig.close()
    assert rig.guest is None or rig.guest.errors == []  # no watch or reply callback raised
    logged = caplog.get_records("call") + caplog.records  # the test's, and its teardown's
    assert [r.getMessage() for r in logged if r.levelno >= logging.ERROR] == []


def states(*values: XenbusState) -> list[str]:
    return [str(int(v)) for v in values]


def start(rig: Rig, driver: FakeFrontDriver, timeout: float = TIMEOUT):
    """Plug the device and start guest 1's bus; returns it once the driver probed the device."""
    bus = rig.frontend(driver, timeout)
    rig.plug()
    bus.start()
    wait_until(lambda: driver.calls == ["probe"], "the probe")
    return bus


def back_publishes_features(rig: Rig) -> None:
    for key, value in FakeBackDriver.FEATURES.items():
        rig.toolstack.write(f"{rig.back_path}/{key}", value)


def quiet(seconds: float = 0.1) -> None:
    """Give the bus's threads time to do what they should not."""
    time.sleep(seconds)


# -- 1. the whole handshake --------------------------------------------------------------------------


def test_device_goes_through_every_state_following_the_back_end(rig: Rig) -> None:
    driver = FakeFrontDriver()
    bus = start(rig, driver)
    dev = bus.devices[(VBD, DEVID)]
    assert dev.otherend == rig.back_path and dev.otherend_id == 0

    # Waiting for the back end: nothing published yet.
    quiet()
    assert rig.front_state() == S.Initialising and driver.calls == ["probe"]

    # Back end InitWait: the driver reads its features, the bus publishes the ring with Initialised.
    back_publishes_features(rig)
    rig.set_back_state(S.InitWait)
    wait_until(lambda: rig.front_state() == S.Initialised, "Initialised")
    assert driver.calls == ["probe", "connect"]
    assert driver.read["feature-flush-cache"] == "1"
    for key, value in FakeFrontDriver.NODES.items():
        assert rig.toolstack.value(f"{rig.front_path}/{key}") == value

    # Back end Connected: the driver reads what it published, the bus goes Connected.
    rig.set_back_state(S.Connected)
    wait_until(lambda: rig.front_state() == S.Connected, "Connected")
    assert driver.calls == ["probe", "connect", "connected"]
    assert driver.read["sectors"] == 2048

    # Back end Closing: I/O stops, the front end goes Closing then Closed, and waits.
    rig.set_back_state(S.Closing)
    wait_until(lambda: rig.front_state() == S.Closed, "Closed")
    quiet()
    assert driver.calls == ["probe", "connect", "connected", "closing"]  # the rings stay until the back end is Closed

    # Back end Closed: the rings are torn down.
    rig.set_back_state(S.Closed)
    wait_until(lambda: driver.calls[-1] == "remove", "the remove")
    assert driver.calls == ["probe", "connect", "connected", "closing", "remove"]
    assert all(d is dev for d in driver.devices)
    assert rig.guest_writes(STATE) == states(S.Initialised, S.Connected, S.Closing, S.Closed)
    assert rig.toolstack.value(FRONT_ERROR) is None


def test_both_buses_connect_and_close_on_unplug(rig: Rig) -> None:
    back_driver = FakeBackDriver()
    rig.back.register(back_driver)
    driver = FakeFrontDriver()
    bus = rig.frontend(driver, TIMEOUT)
    rig.plug()
    bus.start()
    rig.settle(lambda: rig.front_state() == S.Connected, "both ends Connected")
    assert rig.back_state() == S.Connected
    assert back_driver.calls == ["probe", "connect"]
    assert back_driver.ring_refs == [[8]]
    assert rig.hypercall.made("evtchn_bind_interdomain") == [{"remote_dom": GUEST, "remote_port": 3}]
    assert driver.calls == ["probe", "connect", "connected"]
    assert driver.read == {"feature-flush-cache": "1", "sectors": 2048}

    rig.back.request_close(VBD, GUEST, DEVID)  # xl block-detach
    rig.settle(lambda: driver.calls[-1:] == ["remove"], "the front end's remove")
    assert rig.back_state() == S.Closed and rig.front_state() == S.Closed
    assert back_driver.calls == ["probe", "connect", "disconnect"]
    assert driver.calls == ["probe", "connect", "connected", "closing", "remove"]
    assert rig.hypercall.made("evtchn_close") == [{"port": back_driver.ports[0]}]
    assert rig.toolstack.value(f"{rig.back_path}/online") == "0"
    assert rig.bus_writes(STATE) == states(S.InitWait, S.Connected, S.Closing, S.Closed)
    assert rig.guest_writes(STATE) == states(S.Initialised, S.Connected, S.Closing, S.Closed)


# -- 2. back-end events close together -------------------------------------------------------------------


def test_back_end_already_connected_when_the_bus_starts(rig: Rig) -> None:
    driver = FakeFrontDriver()
    bus = rig.frontend(driver, TIMEOUT)
    rig.plug()
    back_publishes_features(rig)
    rig.set_back_state(S.InitWait)
    rig.set_back_state(S.Connected)
    bus.start()
    wait_until(lambda: rig.front_state() == S.Connected, "Connected")
    quiet()
    assert driver.calls == ["probe", "connect", "connected"]
    assert rig.guest_writes(STATE) == states(S.Initialised, S.Connected)


def test_same_back_end_state_twice_connects_once(rig: Rig) -> None:
    driver = FakeFrontDriver()
    start(rig, driver)
    back_publishes_features(rig)
    rig.set_back_state(S.InitWait)
    rig.set_back_state(S.InitWait)
    wait_until(lambda: rig.front_state() == S.Initialised, "Initialised")
    rig.set_back_state(S.Connected)
    rig.set_back_state(S.Connected)
    wait_until(lambda: rig.front_state() == S.Connected, "Connected")
    # More events on the device directory and the back end's state: scans that change nothing.
    rig.toolstack.write(f"{rig.front_path}/unrelated", "1")
    rig.set_back_state(S.Connected)
    quiet()
    assert driver.calls == ["probe", "connect", "connected"]
    assert rig.guest_writes(STATE) == states(S.Initialised, S.Connected)


# -- 3. a probe or connect that fails, with dom0's real back-end bus ----------------------------------------


def test_back_end_probe_fails_both_ends_close(rig: Rig) -> None:
    back_driver = FakeBackDriver(fail={"probe": BackendError("no such image")})
    rig.back.register(back_driver)
    driver = FakeFrontDriver(hold=("closing",))
    bus = rig.frontend(driver, TIMEOUT)
    rig.plug()
    bus.start()

    # The back end reports and goes Closing; the front end gives up on it, reports, and goes Closing.
    rig.settle(driver.entered["closing"].is_set, "the front end's closing")
    assert rig.back_state() == S.Closing and rig.front_state() == S.Closing
    back_report = f"{errno.EIO} probing: no such image"
    front_report = f"{errno.EIO} connecting: the back end is Closing"
    assert rig.toolstack.value(BACK_ERROR) == back_report
    assert rig.toolstack.value(FRONT_ERROR) == front_report

    # Then both are Closed (the back end follows its front end down, as after any failure) and the
    # rings go; the failed device stays the toolstack's to remove, as libxl does on the error.
    driver.release("closing")
    rig.settle(lambda: driver.calls[-1:] == ["remove"], "the front end's remove")
    assert rig.back_state() == S.Closed and rig.front_state() == S.Closed
    quiet()
    rig.back.remove(VBD, GUEST, DEVID)
    rig.toolstack.rm(rig.back_path)
    assert rig.ctx.xs.written(BACK_ERROR) == [back_report]
    assert rig.guest.written(FRONT_ERROR) == [front_report]
    assert rig.bus_writes(STATE) == states(S.Closing, S.Closed)
    assert rig.guest_writes(STATE) == states(S.Closing, S.Closed)
    assert back_driver.calls == ["probe", "remove"]
    assert driver.calls == ["probe", "closing", "remove"]  # never connect
    assert rig.back.devices == {}


@pytest.mark.parametrize(
    "error, code",
    [
        (OSError(errno.ENOMEM, "no pages for the ring"), errno.ENOMEM),
        (FrontendError("the back end offers no usable ring"), errno.EIO),
    ],
    ids=["OSError", "FrontendError"],
)
def test_front_end_connect_fails_both_ends_close(rig: Rig, error: Exception, code: int) -> None:
    back_driver = FakeBackDriver()
    rig.back.register(back_driver)
    driver = FakeFrontDriver(fail={"connect": error}, hold=("closing",))
    bus = rig.frontend(driver, TIMEOUT)
    rig.plug()
    bus.start()

    # The front end reports and goes Closing; the back end follows.
    rig.settle(lambda: driver.entered["closing"].is_set() and rig.back_state() == S.Closing, "both ends Closing")
    report = f"{code} connecting: {error}"
    assert rig.toolstack.value(FRONT_ERROR) == report
    assert rig.front_state() == S.Closing
    for key in FakeFrontDriver.NODES:  # nothing of the ring was published
        assert rig.toolstack.value(f"{rig.front_path}/{key}") is None

    # Then both Closed, and the front end's rings go.
    driver.release("closing")
    rig.settle(lambda: driver.calls[-1:] == ["remove"], "the front end's remove")
    assert rig.back_state() == S.Closed and rig.front_state() == S.Closed
    assert rig.guest.written(FRONT_ERROR) == [report]
    assert rig.toolstack.value(BACK_ERROR) is None
    assert rig.guest_writes(STATE) == states(S.Closing, S.Closed)
    assert rig.bus_writes(STATE) == states(S.InitWait, S.Closing, S.Closed)
    assert driver.calls == ["probe", "connect", "closing", "remove"]
    assert back_driver.calls == ["probe"]
    assert rig.hypercall.calls == []


# -- 4. the back end vanishes while connected ------------------------------------------------------------


def test_back_end_directory_removed_while_connected(rig: Rig) -> None:
    driver = FakeFrontDriver()
    bus = start(rig, driver)
    back_publishes_features(rig)
    rig.set_back_state(S.InitWait)
    wait_until(lambda: rig.front_state() == S.Initialised, "Initialised")
    rig.set_back_state(S.Connected)
    wait_until(lambda: rig.front_state() == S.Connected, "Connected")

    rig.toolstack.rm(rig.back_path)
    wait_until(lambda: driver.calls[-1:] == ["remove"], "the remove")
    assert driver.calls == ["probe", "connect", "connected", "closing", "remove"]
    assert rig.guest_writes(STATE) == states(S.Initialised, S.Connected, S.Closing, S.Closed)
    assert bus.devices[(VBD, DEVID)].state == S.Closed  # its directory is still there
    assert rig.toolstack.value(rig.back_path) is None  # and nothing wrote the back end's back
    quiet()
    assert driver.calls.count("remove") == 1


# -- 5. the device destroyed mid-handshake --------------------------------------------------------------


def test_device_removed_while_waiting_for_initwait_gives_up(rig: Rig) -> None:
    driver = FakeFrontDriver()
    bus = start(rig, driver, GIVE_UP)
    rig.toolstack.rm(rig.front_path)
    wait_until(lambda: bus.devices == {}, "the device forgotten", timeout=GIVE_UP * 2 + 3)

    assert driver.calls == ["probe", "closing", "remove"]
    # It reported why, once, and did not bring the device's directory back with its state.
    reports = rig.guest.written(FRONT_ERROR)
    assert len(reports) == 1 and reports[0].startswith(f"{errno.EIO} connecting: the back end did not reach")
    assert rig.toolstack.value(rig.front_path) is None
    quiet()
    assert driver.calls == ["probe", "closing", "remove"] and bus.devices == {}


def test_domain_devices_removed_while_waiting_gives_up_at_once(rig: Rig) -> None:
    driver = FakeFrontDriver()
    bus = start(rig, driver, timeout=10.0)  # the back end's going is seen: no waiting for the timeout
    rig.toolstack.rm(rig.back_path)
    rig.toolstack.rm(rig.front_path)
    wait_until(lambda: bus.devices == {}, "the device forgotten", timeout=3.0)
    assert driver.calls == ["probe", "closing", "remove"]
    assert rig.toolstack.value(rig.front_path) is None


# -- 8. suspend ----------------------------------------------------------------------------------


class _SuspendDriver:
    """A driver whose suspend hook records the call, or raises what it is given."""

    def __init__(self, devicetype: str, fails: BaseException | None = None) -> None:
        self.devicetype = devicetype
        self.fails = fails
        self.calls: list[str] = []

    def suspend(self, bus, dev) -> None:
        if self.fails is not None:
            raise self.fails
        self.calls.append("suspend")

    def resume(self, bus, dev) -> None:
        self.calls.append("resume")


@pytest.mark.parametrize("error", [ValueError("operation forbidden on released memoryview"), OSError(errno.EIO, "x")])
def test_a_suspend_hook_that_fails_in_any_way_resumes_the_devices_already_quiesced(error: Exception) -> None:
    """Whatever a driver's hook raises (a bug included), the guest runs on as it was."""
    bus = object.__new__(XenbusFrontend)
    first, second = _SuspendDriver("vbd"), _SuspendDriver("vif", error)
    bus.kernel = SimpleNamespace(label="d1 (test)")
    bus.drivers = {"vbd": first, "vif": second}
    bus.devices = {
        ("vbd", 51712): FrontDevice("vbd", 51712, "device/vbd/51712", state=S.Connected),
        ("vif", 0): FrontDevice("vif", 0, "device/vif/0", state=S.Connected),
    }
    bus._suspended = []
    with pytest.raises(FrontendError, match="device/vif/0 cannot be suspended"):
        bus.suspend()
    assert first.calls == ["suspend", "resume"] and bus._suspended == []
