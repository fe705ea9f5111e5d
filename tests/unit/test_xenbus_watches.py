"""The guest's xenstore client routes each watch's events to its own callback, whatever the order of calls.

A second ``watch`` with a token in use replaced the first watch's callback before
xenstored refused it (EEXIST), so the first watch's events went to the caller
that was refused; and an ``unwatch`` dropped the token after its reply, so a
``watch`` with the same token served in between lost its events for ever.
xenstored is played by hand: each reply is handed to the client's dispatch.
"""

from __future__ import annotations

import threading
import time

import pytest

from domu.xenbus import XenbusClient
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.public.xs_wire import XenstoreInterface, XsError, join_strings
from xenlike.public.xs_wire import XsdSockmsgType as XS


@pytest.fixture
def client():
    loop = EventLoop("d9 (test)")
    loop.bind(1, new_port_fd())
    client = XenbusClient(XenstoreInterface(memoryview(bytearray(4096))), loop, 1, "d9 (test)")
    yield client
    loop.close()


def _in_thread(call) -> tuple[threading.Thread, list]:
    out: list = []

    def body() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            out.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def _answer(client: XenbusClient, msg_type: int = XS.WATCH, payload: bytes = b"OK\0") -> None:
    """xenstored answers the one request waiting."""
    deadline = time.monotonic() + 5
    while not client._pending:
        assert time.monotonic() < deadline, "no request was sent"
        time.sleep(0.001)
    (req_id,) = list(client._pending)
    client._dispatch(msg_type, req_id, payload)


def _event(client: XenbusClient, path: str, token: str) -> None:
    client._dispatch(XS.WATCH_EVENT, 0, join_strings([path, token]))


def test_a_token_in_use_is_refused_without_taking_the_first_watch_s_events(client):
    got: list[str] = []
    thread, _ = _in_thread(lambda: client.watch("data/a", "tok", lambda path, token: got.append("first")))
    _answer(client)
    thread.join(5)
    with pytest.raises(XsError) as refused:
        client.watch("data/b", "tok", lambda path, token: got.append("second"))
    assert refused.value.errno_name == "EEXIST"
    _event(client, "data/a", "tok")
    assert got == ["first"]


def test_a_watch_refused_by_xenstored_leaves_no_callback(client):
    thread, out = _in_thread(lambda: client.watch("data/a", "tok", lambda path, token: None))
    _answer(client, XS.ERROR, b"EACCES\0")
    thread.join(5)
    assert isinstance(out[0], XsError) and "tok" not in client._watches


def test_a_token_is_in_use_until_its_unwatch_returns_and_free_after(client):
    got: list[str] = []
    thread, _ = _in_thread(lambda: client.watch("data/a", "tok", lambda path, token: got.append("old")))
    _answer(client)
    thread.join(5)
    unwatching, _ = _in_thread(lambda: client.unwatch("data/a", "tok"))
    while not client._pending:
        time.sleep(0.001)
    with pytest.raises(XsError, match="in use"):  # the unwatch has not returned: the old watch may still fire
        client.watch("data/b", "tok", lambda path, token: got.append("new"))
    _answer(client, XS.UNWATCH)
    unwatching.join(5)
    rewatching, _ = _in_thread(lambda: client.watch("data/b", "tok", lambda path, token: got.append("new")))
    _answer(client)
    rewatching.join(5)
    _event(client, "data/b", "tok")
    assert got == ["new"]
