"""Suite-wide guards: every test leaves no child process behind."""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil
import pytest

_PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config):
    """Adopt orphaned descendants (a detached hypervisor, a domain whose parent died).

    They are then this process's to reap, so the suite leaves no zombie even
    where PID 1 reaps nothing (as in some containers).
    """
    ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


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
    _reap_zombies()
    deadline = time.monotonic() + 5
    left = [p for p in _children() if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap_zombies()
        left = [p for p in _children() if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left:
        names = [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in left]
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"test left processes running: {names}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
