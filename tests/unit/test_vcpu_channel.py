"""The channel to a secondary vCPU, with its end played by hand over a socketpair.

A vCPU answers with a length and a pickle; a large answer arrives in pieces, and a
vCPU the scheduler stopped mid-send leaves half of one on the socket. ``done()``
must leave that half for the next look, not lose it; ``close()`` (a vCPU taken
offline, from the hotplug thread) must end a ``result()`` waiting in another thread
with EOFError; and ``done()`` never waits for a reader in another thread.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading

import pytest

from domu.vcpu import Vcpu

LENGTH = struct.Struct("<I")


@pytest.fixture
def channel():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    vcpu = Vcpu(1, 0, ours, None)
    yield vcpu, theirs
    vcpu.close()
    theirs.close()


def _take_call(theirs: socket.socket) -> None:
    """The vCPU's side reads one call (and drops it)."""
    (size,) = LENGTH.unpack(theirs.recv(LENGTH.size))
    while size:
        size -= len(theirs.recv(size))


def _answer(value: object) -> bytes:
    body = pickle.dumps((True, value), protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(body)) + body


def _in_thread(target) -> tuple[threading.Thread, list]:
    out: list = []

    def body() -> None:
        try:
            out.append(("value", target()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            out.append(("raised", exc))

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def test_done_with_half_an_answer_in_keeps_it_for_the_next_look(channel):
    vcpu, theirs = channel
    call = vcpu.submit(len, b"x")
    _take_call(theirs)
    message = _answer(b"R" * 100_000)
    half = LENGTH.size + len(message) // 2
    theirs.sendall(message[:half])
    assert call.done() is False
    theirs.sendall(message[half:])
    thread, out = _in_thread(call.result)
    thread.join(10)
    assert out == [("value", b"R" * 100_000)]


def test_answers_complete_their_calls_in_order_whoever_asks(channel):
    vcpu, theirs = channel
    first, second = vcpu.submit(len, b"a"), vcpu.submit(len, b"bb")
    _take_call(theirs)
    _take_call(theirs)
    theirs.sendall(_answer(1) + _answer(2))
    assert second.result() == 2 and first.done() and first.result() == 1


def test_a_vcpu_closed_while_a_thread_waits_ends_the_wait_with_eoferror(channel):
    vcpu, theirs = channel
    call = vcpu.submit(len, b"x")
    _take_call(theirs)
    waiter, out = _in_thread(call.result)
    while not vcpu._read_lock.locked():  # the waiter is reading
        threading.Event().wait(0.01)
    vcpu.close()  # the hotplug thread takes the vCPU offline
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(out) == 1 and out[0][0] == "raised" and isinstance(out[0][1], EOFError), out
    with pytest.raises(EOFError):
        call.result()
    with pytest.raises(EOFError, match="offline"):
        vcpu.submit(len, b"y")
    assert call.done()


def test_done_does_not_wait_for_a_thread_blocked_in_result(channel):
    vcpu, theirs = channel
    call = vcpu.submit(len, b"x")
    _take_call(theirs)
    waiter, _ = _in_thread(call.result)
    while not vcpu._read_lock.locked():
        threading.Event().wait(0.01)
    looker, looked = _in_thread(call.done)
    looker.join(10)
    assert looked == [("value", False)], "done() waited for the reader"
    theirs.sendall(_answer(3))
    waiter.join(10)
    assert call.result() == 3


def test_a_vcpu_whose_process_died_fails_every_pending_call(channel):
    vcpu, theirs = channel
    calls = [vcpu.submit(len, b"x") for _ in range(3)]
    _take_call(theirs)
    theirs.sendall(_answer(1))
    theirs.close()  # the process died after answering one
    assert calls[0].result() == 1
    for call in calls[1:]:
        with pytest.raises(EOFError, match="ended before answering"):
            call.result()
