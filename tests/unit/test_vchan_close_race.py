"""A vchan closed by one thread while another is inside one of its calls.

``close()`` unmaps the shared page and closes the event channel. A thread inside
``data_ready``, ``buffer_space`` or ``is_open`` at that moment would touch an
unmapped page (in a guest: SIGSEGV) or a closed port; a ``recv`` that passed its
closed check just before the close would read a released ring. Each test holds
the using thread inside the call, lets the closing thread run, then lets go: the
close must wait, or the call must see the close and say so with EBADF.
"""

from __future__ import annotations

import errno
import os
import threading
from types import SimpleNamespace

import pytest

from domu import vchan as vchan_module
from domu.vchan import Vchan, _Mapped
from tests.unit.test_vchan import _Page
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.public.vchan import VCHAN_CONNECTED, VCHAN_INTERFACE

from .race_support import Held, close_while_held, run


class _End:
    """A client end over an in-process page; records whether its page was let go while in use."""

    def __init__(self) -> None:
        self.page = _Page(10, 11)
        ours, theirs = new_port_fd(), new_port_fd()
        self.loop = EventLoop("d2 (race)")
        self.loop.bind(1, ours, os.dup(theirs), masked=True)
        self._theirs = theirs
        driver = SimpleNamespace(
            _events=self.loop,
            _hypercall=SimpleNamespace(call=lambda *args, **kwargs: None),
            label="d2 (race)",
            domid=2,
        )
        self.end = Vchan(driver, False, 1, 5000, 1, self.page.interface(), _Mapped())
        self.page.view[VCHAN_INTERFACE.offsetof("srv_live")] = VCHAN_CONNECTED
        self.released = False
        release = self.end._shared.release

        def mark_released() -> None:
            self.released = True
            release()

        self.end._shared.release = mark_released

    def close(self) -> None:
        self.end.close()
        self.loop.close()
        os.close(self._theirs)
        self.page.view.release()


@pytest.fixture
def end():
    end = _End()
    yield end
    end.close()


def _close_while_held(end: _End, held: Held, use) -> tuple[bool, list[BaseException], list[BaseException]]:
    """Run ``use`` until it is inside ``held``, close in a second thread, let go; (close waited, errors)."""
    return close_while_held(held, use, end.end.close)


@pytest.mark.parametrize("call", ["data_ready", "buffer_space"])
def test_a_look_at_the_page_in_flight_finishes_before_close_unmaps_it(end, monkeypatch, call):
    seen_released: list[bool] = []
    real = vchan_module.fetch_or8

    def fetch_or8(address: int, bits: int) -> int:
        seen_released.append(end.released)
        return real(address, bits)

    held = Held(fetch_or8)
    monkeypatch.setattr(vchan_module, "fetch_or8", held)
    waited, use_errors, close_errors = _close_while_held(end, held, getattr(end.end, call))
    assert seen_released == [False], "the page was let go while a thread was reading it"
    assert waited and not use_errors and not close_errors


def test_is_open_in_flight_finishes_before_close_takes_the_port(end, monkeypatch):
    held = Held(end.end._shared.live)
    monkeypatch.setattr(end.end._shared, "live", held)
    waited, use_errors, close_errors = _close_while_held(end, held, end.end.is_open)
    assert waited and not use_errors and not close_errors


def test_a_recv_that_passed_its_check_before_the_close_says_closed(end):
    """The window between recv's closed check and its lock: the check must be inside the lock."""
    end.end.setblocking(False)
    errors: list[BaseException] = []
    lock = end.end._recv_lock
    held = Held(lock.__enter__)

    class HeldLock:
        def __enter__(self):
            if threading.current_thread() is not threading.main_thread():  # the reader, not the closer
                return held()
            return lock.__enter__()

        def __exit__(self, *exc):
            return lock.__exit__(*exc)

    end.end._recv_lock = HeldLock()
    reader = run(lambda: end.end.recv(10), errors)
    assert held.entered.wait(10)
    end.end.close()  # the reader is not inside the lock yet: the close goes ahead
    assert end.released
    held.release.set()
    reader.join(10)
    assert not reader.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], OSError) and errors[0].errno == errno.EBADF, errors


def test_two_threads_closing_close_once(end, monkeypatch):
    closes: list[int] = []
    real_unbind = end.loop.unbind

    def unbind(port: int) -> None:
        closes.append(port)
        real_unbind(port)

    monkeypatch.setattr(end.loop, "unbind", unbind)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def close() -> None:
        barrier.wait(10)
        end.end.close()

    threads = [run(close, errors) for _ in range(4)]
    for thread in threads:
        thread.join(10)
    assert not errors and closes == [1]
