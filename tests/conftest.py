"""Suite-wide guards: every test leaves no child process behind."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fail a test that leaves processes running (and kill them, so the next test is clean)."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 5
    left = [p for p in _children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in _children() if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left:
        names = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in left]
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"test left processes running: {names}")
