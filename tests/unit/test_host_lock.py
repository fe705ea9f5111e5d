"""One host per run directory: the hypervisor's flock on hypervisor.lock (xenlike.kernel.rundir.HostLock)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from xenlike.kernel import rundir
from xenlike.kernel.rundir import HostLock, HostRunning, RunDir


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    target = os.stat(path)
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def test_a_second_lock_is_refused_in_one_line_naming_the_holder(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    lock = run_dir.take_lock()
    try:
        with pytest.raises(HostRunning) as refused:
            HostLock.take(run_dir, grace_s=0)
        assert str(refused.value) == (f"a host already runs in {tmp_path} (pid {os.getpid()}); "
                                      "`xenlike down` stops it, or --run-dir picks another")
        with pytest.raises(HostRunning):
            run_dir.check_unlocked()
    finally:
        lock.release()
    run_dir.check_unlocked()  # released: nothing holds it
    HostLock.take(run_dir, grace_s=0).release()


def test_the_check_does_not_keep_the_lock(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.check_unlocked()
    run_dir.check_unlocked()
    HostLock.take(run_dir, grace_s=0).release()


def test_a_stale_pid_is_not_taken_for_a_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.ensure()
    run_dir.lock_path.write_text("1\n")  # a previous host's pid, left in the file; pid 1 does not hold it
    lock = run_dir.take_lock()
    try:
        assert run_dir.lock_path.read_text() == f"{os.getpid()}\n"
        monkeypatch.setattr(rundir, "HOLDER_PID_WAIT_S", 0.05)
        lock_fd = os.open(run_dir.lock_path, os.O_RDWR)
        os.pwrite(lock_fd, b"1\n", 0)  # as if the holder had not written its pid yet
        os.close(lock_fd)
        with pytest.raises(HostRunning) as refused:
            run_dir.check_unlocked()
        assert refused.value.pid is None and "(pid" not in str(refused.value)
    finally:
        lock.release()


def test_forked_children_do_not_hold_the_lock_and_their_exit_releases_nothing(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    lock = run_dir.take_lock()
    try:
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # as the zygote is forked, then forks a domain
            os.close(read_end)
            grandchild = os.fork()
            if grandchild == 0:
                os._exit(0 if not _holds(os.getpid(), run_dir.lock_path) else 1)
            _, status = os.waitpid(grandchild, 0)
            os.write(write_end, b"%d %d" % (int(not _holds(os.getpid(), run_dir.lock_path)),
                                            int(os.waitstatus_to_exitcode(status) == 0)))
            os._exit(0)
        os.close(write_end)
        os.waitpid(child, 0)
        answer = os.read(read_end, 16).split()
        os.close(read_end)
        assert answer == [b"1", b"1"]  # neither the child nor its child had the lock's fd
        with pytest.raises(HostRunning):
            run_dir.check_unlocked()  # and their exits left the hypervisor's lock in place
    finally:
        lock.release()


def test_the_lock_goes_with_its_holder_however_it_dies(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    read_end, write_end = os.pipe()
    holder = os.fork()
    if holder == 0:
        os.close(read_end)
        HostLock.take(run_dir, grace_s=0)
        os.write(write_end, b"locked")
        signal.pause()
        os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 16) == b"locked"
        with pytest.raises(HostRunning) as refused:
            run_dir.check_unlocked()
        assert refused.value.pid == holder
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        os.close(read_end)
    run_dir.check_unlocked()  # SIGKILLed: the kernel released it
