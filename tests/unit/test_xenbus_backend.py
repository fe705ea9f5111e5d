"""dom0's back-end xenbus, driven in-process: a real xenstore daemon, a fake driver, a fake hypercall.

The front end is played by hand, with guest 1's own xenstore connection, so
each test shows what the bus writes after each step of the other end.
"""

from __future__ import annotations

import errno
import os

import pytest

from dom0.backend_worker import WorkerHandle
from dom0.xenbus_backend import BackendError
from xenlike.kernel.hypercall import ChannelClosed, recv_message, send_message, socketpair
from xenlike.public.xenbus import STATE, XenbusState, error_path

from ..support.xenbus import DEVID, GUEST, VBD, FakeBackDriver, LockedXenstore, Rig

S = XenbusState
RELATIVE = f"backend/{VBD}/{GUEST}/{DEVID}"  # the back end's nodename, relative to dom0's home
ERROR = error_path(0, RELATIVE)


@pytest.fixture
def rig():
    rig = Rig()
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def guest(rig: Rig) -> LockedXenstore:
    """Guest 1's connection, for playing the front end."""
    return rig.client(GUEST)


def front_publishes(rig: Rig, guest: LockedXenstore, state: XenbusState, **nodes: str) -> None:
    """The front end writes ``nodes`` and its state in one transaction, as its bus does."""

    def body(tx: int) -> None:
        for key, value in nodes.items():
            guest.write(f"{rig.front_path}/{key}", value, tx=tx)
        guest.write(f"{rig.front_path}/{STATE}", str(int(state)), tx=tx)

    guest.transact(body)


def probed(rig: Rig, driver: FakeBackDriver):
    """Register ``driver``, plug the device and run the bus once: the device is at InitWait."""
    rig.back.register(driver)
    rig.plug()
    rig.back.process_events()
    dev = rig.back.device(VBD, GUEST, DEVID)
    assert dev is not None and rig.back_state() == S.InitWait
    return dev


def connected(rig: Rig, guest: LockedXenstore, driver: FakeBackDriver):
    dev = probed(rig, driver)
    front_publishes(rig, guest, S.Initialised, **{"ring-ref": "8", "event-channel": "3"})
    rig.back.process_events()
    assert rig.back_state() == S.Connected
    return dev


def error_node(rig: Rig) -> str | None:
    return rig.toolstack.value(ERROR)


# -- 1. the whole handshake ------------------------------------------------------------------------


def test_device_goes_through_every_state_following_the_front_end(rig: Rig, guest: LockedXenstore) -> None:
    driver = FakeBackDriver()
    rig.back.register(driver)
    rig.plug()
    rig.back.process_events()

    # Probed once (the toolstack's transaction fired a watch event per node), features out, InitWait.
    assert driver.calls == ["probe"]
    dev = rig.back.device(VBD, GUEST, DEVID)
    assert dev is not None and dev.otherend == rig.front_path and dev.state == S.InitWait
    assert rig.back_state() == S.InitWait
    for key, value in FakeBackDriver.FEATURES.items():
        assert rig.toolstack.value(f"{rig.back_path}/{key}") == value

    # Front Initialised: the driver reads its ring and binds its port, the bus goes Connected.
    front_publishes(rig, guest, S.Initialised, **{"ring-ref": "8", "event-channel": "3"})
    rig.back.process_events()
    assert driver.calls == ["probe", "connect"]
    assert driver.ring_refs == [[8]]
    assert rig.hypercall.made("evtchn_bind_interdomain") == [{"remote_dom": GUEST, "remote_port": 3}]
    assert dev.ports == driver.ports and len(dev.ports) == 1
    assert rig.back_state() == S.Connected
    port = dev.ports[0]

    # Front Connected: nothing more to do.
    front_publishes(rig, guest, S.Connected)
    rig.back.process_events()
    assert driver.calls == ["probe", "connect"] and rig.back_state() == S.Connected

    # Front Closing: the back end follows, the channel stays until the front end is Closed.
    front_publishes(rig, guest, S.Closing)
    rig.back.process_events()
    assert rig.back_state() == S.Closing and dev.ports == [port]
    assert driver.calls == ["probe", "connect"]

    # Front Closed: the port is closed, the driver told, the back end Closed.
    front_publishes(rig, guest, S.Closed)
    rig.back.process_events()
    assert rig.back_state() == S.Closed
    assert rig.hypercall.made("evtchn_close") == [{"port": port}]
    assert dev.ports == []
    assert driver.calls == ["probe", "connect", "disconnect"]

    # The toolstack removes the device: the driver releases it and the bus forgets it.
    rig.back.remove(VBD, GUEST, DEVID)
    assert driver.calls == ["probe", "connect", "disconnect", "remove"]
    assert all(d is dev for d in driver.devices)
    assert rig.back.device(VBD, GUEST, DEVID) is None
    assert [w.path for w in rig.ctx.watcher.conn.watches] == [f"/local/domain/0/backend/{VBD}"]

    # Each state written once, in order; no error on the way.
    assert rig.bus_writes(STATE) == [str(int(s)) for s in (S.InitWait, S.Connected, S.Closing, S.Closed)]
    assert error_node(rig) is None
    assert rig.hypercall.made("evtchn_close") == [{"port": port}]


def test_request_close_marks_the_device_offline_and_closing(rig: Rig, guest: LockedXenstore) -> None:
    driver = FakeBackDriver()
    dev = connected(rig, guest, driver)
    rig.back.request_close(VBD, GUEST, DEVID)
    assert rig.toolstack.value(f"{rig.back_path}/online") == "0"
    assert rig.back_state() == S.Closing and dev.state == S.Closing

    front_publishes(rig, guest, S.Closing)
    front_publishes(rig, guest, S.Closed)
    rig.back.process_events()
    assert rig.back_state() == S.Closed
    assert driver.calls == ["probe", "connect", "disconnect"]


# -- 2. watch events close together ------------------------------------------------------------------


@pytest.mark.parametrize(
    "states",
    [(S.Initialised, S.Connected), (S.Initialised, S.Initialised), (S.Connected, S.Connected)],
    ids=["initialised-then-connected", "initialised-twice", "connected-twice"],
)
def test_two_front_end_events_before_the_bus_runs_connect_once(
    rig: Rig, guest: LockedXenstore, states: tuple[XenbusState, ...]
) -> None:
    driver = FakeBackDriver()
    dev = probed(rig, driver)
    front_publishes(rig, guest, states[0], **{"ring-ref": "8", "event-channel": "3"})
    front_publishes(rig, guest, states[1])
    rig.back.process_events()
    rig.back.process_events()  # and nothing left over for a second pass

    assert driver.calls == ["probe", "connect"]
    assert len(rig.hypercall.made("evtchn_bind_interdomain")) == 1 and len(dev.ports) == 1
    assert rig.back_state() == S.Connected
    assert rig.bus_writes(STATE) == [str(int(S.InitWait)), str(int(S.Connected))]


# -- 3. a probe or connect that fails -----------------------------------------------------------------


@pytest.mark.parametrize(
    "error, code",
    [(BackendError("no such image"), errno.EIO), (OSError(errno.EACCES, "image not readable"), errno.EACCES)],
    ids=["BackendError", "OSError"],
)
def test_failed_probe_is_reported_once_and_the_device_closes(
    rig: Rig, guest: LockedXenstore, error: Exception, code: int
) -> None:
    driver = FakeBackDriver(fail={"probe": error})
    rig.back.register(driver)
    rig.plug()
    rig.back.process_events()

    report = f"{code} probing: {error}"
    assert error_node(rig) == report
    assert rig.back_state() == S.Closing
    assert rig.bus_writes(STATE) == [str(int(S.Closing))]  # never InitWait
    for key in FakeBackDriver.FEATURES:
        assert rig.toolstack.value(f"{rig.back_path}/{key}") is None

    # The front end follows it down; nothing is reported again, nothing connects.
    front_publishes(rig, guest, S.Closing)
    front_publishes(rig, guest, S.Closed)
    rig.back.process_events()
    assert rig.ctx.xs.written(ERROR) == [report]
    assert driver.calls == ["probe"]
    assert rig.hypercall.calls == []

    rig.back.remove_domain(GUEST)
    assert rig.back.devices == {}


def _bad_ring_ref(rig: Rig, driver: FakeBackDriver) -> dict[str, str]:
    return {"ring-ref": "not-a-number", "event-channel": "3"}


def _bind_fails(rig: Rig, driver: FakeBackDriver) -> dict[str, str]:
    rig.hypercall.fail["evtchn_bind_interdomain"] = OSError(errno.EINVAL, "no such port")
    return {"ring-ref": "8", "event-channel": "3"}


def _driver_fails_after_binding(rig: Rig, driver: FakeBackDriver) -> dict[str, str]:
    def fail(bus, dev):
        raise BackendError("cannot map the ring")

    driver.on_connect = fail
    return {"ring-ref": "8", "event-channel": "3"}


def _port_past_uint32(rig: Rig, driver: FakeBackDriver) -> dict[str, str]:
    return {"ring-ref": "8", "event-channel": str(2**64)}  # msgpack cannot even carry it to the hypervisor


def _ring_ref_past_uint32(rig: Rig, driver: FakeBackDriver) -> dict[str, str]:
    return {"ring-ref": str(2**32), "event-channel": "3"}


def _negative_ring_ref(rig: Rig, driver: FakeBackDriver) -> dict[str, str]:
    return {"ring-ref": "-1", "event-channel": "3"}


@pytest.mark.parametrize(
    "setup, report, bound",
    [
        (_bad_ring_ref, f"{errno.EIO} connecting: the front end published no usable ring-ref for order 0", False),
        (_ring_ref_past_uint32, f"{errno.EIO} connecting: the front end published no usable ring-ref for order 0", False),
        (_negative_ring_ref, f"{errno.EIO} connecting: the front end published no usable ring-ref for order 0", False),
        (_port_past_uint32, f"{errno.EIO} connecting: event-channel {2**64} is outside 0..4294967295", False),
        (_bind_fails, f"{errno.EINVAL} connecting: [Errno {errno.EINVAL}] no such port", False),
        (_driver_fails_after_binding, f"{errno.EIO} connecting: cannot map the ring", True),
    ],
    ids=["bad-ring-ref", "ring-ref-past-uint32", "negative-ring-ref", "port-past-uint32", "bind-fails",
         "driver-fails-after-binding"],
)
def test_failed_connect_is_reported_once_and_releases_the_port(
    rig: Rig, guest: LockedXenstore, setup, report: str, bound: bool
) -> None:
    driver = FakeBackDriver()
    dev = probed(rig, driver)
    front_publishes(rig, guest, S.Initialised, **setup(rig, driver))
    rig.back.process_events()

    assert error_node(rig) == report
    assert rig.back_state() == S.Closing
    assert rig.bus_writes(STATE) == [str(int(S.InitWait)), str(int(S.Closing))]
    assert dev.ports == []
    if bound:  # the port bound before the failure is closed, and the driver told
        assert rig.hypercall.made("evtchn_close") == [{"port": driver.ports[0]}]
        assert driver.calls == ["probe", "connect", "disconnect"]
    else:
        assert rig.hypercall.made("evtchn_close") == []
        assert driver.calls == ["probe", "connect"]
    calls = list(driver.calls)

    # The front end follows: the back end ends Closed, with one report and no second disconnect.
    front_publishes(rig, guest, S.Closing)
    rig.back.process_events()
    front_publishes(rig, guest, S.Closed)
    rig.back.process_events()
    assert rig.back_state() == S.Closed
    assert rig.ctx.xs.written(ERROR) == [report]
    assert driver.calls == calls


# -- 4. the worker reports fatal (or dies) while connected ------------------------------------------


@pytest.mark.parametrize("how", ["fatal", "dies"])
def test_worker_failure_disconnects_and_reports_the_device(rig: Rig, guest: LockedXenstore, how: str) -> None:
    ours, theirs = socketpair()
    pid = os.fork()
    if pid == 0:  # the "worker": gone at once, as a crashed one would be
        os._exit(0)
    try:
        driver = FakeBackDriver(
            on_connect=lambda bus, dev: bus.attach_worker(dev, WorkerHandle(dev.label, pid, ours, 9))
        )
        dev = connected(rig, guest, driver)
        port = dev.ports[0]
        assert dev.worker is not None

        # Counters first: the device stays up.
        send_message(theirs, {"stats": {"rd_req": 3}})
        assert rig.loop.poll(1.0) == 1
        assert dev.stats == {"rd_req": 3} and dev.worker is not None and rig.back_state() == S.Connected

        if how == "fatal":
            send_message(theirs, {"fatal": "the front end broke the ring protocol"})
            reason = "the front end broke the ring protocol"
        else:
            theirs.close()
            reason = "the back-end worker died"
        assert rig.loop.poll(1.0) == 1

        # The worker was stopped and reaped, its channel closed, the port closed, the driver told.
        assert dev.worker is None
        assert ours.fileno() == -1
        assert rig.hypercall.made("domctl") == [{"cmd": "close_channel", "channel": 9}]
        assert rig.hypercall.made("evtchn_close") == [{"port": port}]
        assert driver.calls == ["probe", "connect", "disconnect"]
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if how == "fatal":
            assert recv_message(theirs)[0] == {"stop": True}
            with pytest.raises(ChannelClosed):
                recv_message(theirs)

        # ... and the device reported once, Closing.
        assert error_node(rig) == f"{errno.EIO} serving: {reason}"
        assert rig.back_state() == S.Closing
        assert rig.loop.poll(0) == 0  # the control socket is no longer watched

        front_publishes(rig, guest, S.Closing)
        front_publishes(rig, guest, S.Closed)
        rig.back.process_events()
        assert rig.back_state() == S.Closed
        assert driver.calls == ["probe", "connect", "disconnect"]
        assert rig.ctx.xs.written(ERROR) == [f"{errno.EIO} serving: {reason}"]
        assert rig.bus_writes(STATE) == [str(int(s)) for s in (S.InitWait, S.Connected, S.Closing, S.Closed)]
    finally:
        theirs.close()
        ours.close()
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


# -- 5. the front end destroyed mid-handshake --------------------------------------------------------


@pytest.mark.parametrize("events_first", [True, False], ids=["bus-sees-it-first", "removed-first"])
def test_front_end_destroyed_at_initwait(rig: Rig, events_first: bool) -> None:
    driver = FakeBackDriver()
    probed(rig, driver)

    rig.toolstack.rm(f"/local/domain/{GUEST}")  # the domain is destroyed: its home goes
    if events_first:
        rig.back.process_events()  # the front end's state is gone: the device closes
        assert rig.back_state() == S.Closed
    rig.back.remove_domain(GUEST)
    rig.toolstack.rm(f"/local/domain/0/backend/{VBD}/{GUEST}")
    rig.back.process_events()  # events for a device forgotten, and for its removed directory
    rig.back.remove_domain(GUEST)  # twice is harmless

    assert driver.calls == ["probe", "remove"]
    assert rig.back.devices == {}
    assert rig.hypercall.calls == []
    assert error_node(rig) is None
    assert [w.path for w in rig.ctx.watcher.conn.watches] == [f"/local/domain/0/backend/{VBD}"]


# -- 6. what a front end writes that no check foresaw fails its device, not dom0 --------------------


def test_a_state_that_is_not_text_reads_as_unknown_and_closes_the_device(rig: Rig, guest: LockedXenstore) -> None:
    driver = FakeBackDriver()
    probed(rig, driver)
    guest.write(f"{rig.front_path}/{STATE}", b"\xff")  # its own node: the guest may write any bytes there
    rig.back.process_events()
    assert rig.back_state() == S.Closed  # XenbusStateUnknown, as Linux's xenbus_read_driver_state gives
    assert driver.calls == ["probe"]


def test_an_error_no_check_caught_fails_that_device_and_the_loop_goes_on(rig: Rig, guest: LockedXenstore) -> None:
    driver = FakeBackDriver(fail={"connect": TypeError("a check the driver missed")})
    probed(rig, driver)
    front_publishes(rig, guest, S.Initialised, **{"ring-ref": "8", "event-channel": "3"})
    rig.back.process_events()  # would have ended dom0's loop
    assert error_node(rig) == f"{errno.EIO} handling its front end's change: a check the driver missed"
    assert rig.back_state() == S.Closing
    assert driver.calls == ["probe", "connect"]  # it failed before binding: nothing to disconnect
