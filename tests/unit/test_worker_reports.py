"""dom0 takes nothing from a back-end worker on trust: what it sends is checked, and never waited for.

A worker serves a front end that may have taken it over (that is why it is
confined), so its control socket is one more hostile input to dom0's loop. Bytes
that are no message, a message of no known kind, counters that are not counters,
fds dom0 never asked for and half a fragmented message used to raise out of the
loop, keep fds open or block dom0 for ever; now each is a fatal report for that
device, or nothing yet.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import msgpack
import pytest

from dom0.backend_worker import WorkerHandle
from dom0.toolstack.server import Toolstack, _Poll
from xenlike.kernel.hypercall import FRAGMENT, send_message, socketpair


@pytest.fixture
def pair():
    ours, theirs = socketpair()
    yield WorkerHandle("d1 (test) vbd/51712", 0, ours, 9), theirs
    ours.close()
    theirs.close()


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_counters_and_a_fatal_report_are_taken(pair):
    handle, worker = pair
    send_message(worker, {"stats": {"rd_req": 3, "wr_req": 0}})
    assert handle.receive() == {"stats": {"rd_req": 3, "wr_req": 0}} and handle.answered == 1
    send_message(worker, {"fatal": "the front end broke the ring" + "!" * 10_000})
    fatal = handle.receive()["fatal"]
    assert fatal.startswith("the front end broke the ring") and len(fatal) <= 400


@pytest.mark.parametrize(
    "message",
    [
        5,
        [1, 2],
        {"stats": [1, 2, 3]},
        {"stats": {"rd_req": 2**63}},  # msgpack carries it; a counter never gets there
        {"stats": {"rd_req": -1}},
        {"stats": {str(i): i for i in range(1000)}},
        {"stats": {"rd_req": "many"}},
        {"fatal": 7},
        {"stats": {}, "fatal": "x"},
        {"hello": True},
    ],
)
def test_a_message_of_no_known_shape_is_a_fatal_report(pair, message):
    handle, worker = pair
    send_message(worker, message)
    report = handle.receive()
    assert set(report) == {"fatal"} and "back-end worker sent" in report["fatal"]
    assert handle.answered == 0


def test_bytes_that_are_no_message_are_a_fatal_report(pair):
    handle, worker = pair
    worker.send(b"\x92\x01")  # an array of two, cut short
    assert "malformed" in handle.receive()["fatal"]


def test_half_a_fragmented_message_is_waited_for_by_nobody(pair):
    handle, worker = pair
    worker.send(bytes([FRAGMENT, 1]) + msgpack.packb({"stats": {}})[:3])  # the first fragment, never the rest
    assert handle.receive() == {}  # nothing yet; dom0 goes on with its loop


def test_fds_a_worker_sends_are_closed(pair):
    handle, worker = pair
    r, w = os.pipe()
    before = _open_fds()
    socket.send_fds(worker, [msgpack.packb({"stats": {"rd_req": 1}})], [r, w, r, w])
    assert handle.receive() == {"stats": {"rd_req": 1}}
    assert _open_fds() == before
    os.close(r)
    os.close(w)


def test_a_pending_operation_that_raises_fails_its_request_and_not_dom0_s_loop():
    failed: list[str] = []
    request = SimpleNamespace(fail=failed.append)

    def done(ok: bool) -> None:
        raise TypeError("a check the operation missed")

    later = _Poll(lambda: False, float("inf"), lambda ok: None)
    ts = SimpleNamespace(_polls=[_Poll(lambda: True, 0.0, done, request), later], _waiters=[])
    Toolstack.tick(ts)  # type: ignore[arg-type]
    assert failed == ["dom0 failed to finish it: a check the operation missed"]
    assert ts._polls == [later]


def test_nothing_to_read_is_nothing_yet_not_a_dead_worker(pair):
    handle, _worker = pair
    assert handle.receive() == {}
