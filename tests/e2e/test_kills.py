"""Killing the host's own processes: each death is noticed, said in one log line, and cleaned up.

(A killed domU is in test_lifecycle.py, a killed back-end worker in test_blk.py.)
"""

from __future__ import annotations

import os
import signal

import psutil

from .conftest import wait_for
from .test_lifecycle import write_cluster


def _host_stopped_cleanly(host) -> None:
    wait_for(lambda: host.run_dir.running_pid() is None, timeout=15, what="the host to stop")
    wait_for(lambda: not host.processes(), timeout=15, what="every process of the host to be gone")
    assert not (host.path / "toolstack.sock").exists() and not (host.path / "console.sock").exists()
    assert "Traceback" not in (host.path / "logs" / "hypervisor-stderr.log").read_text()


def _process_named(host, name: str, parent: int) -> int:
    [pid] = {p.pid for p in host.processes() if p.name() == name and p.ppid() == parent}
    return pid


def test_killing_the_zygote_stops_the_host_and_says_why(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker"}])))
    os.kill(_process_named(host, "xl-zygote", host.hypervisor_pid), signal.SIGKILL)
    _host_stopped_cleanly(host)
    assert "the zygote exited: every domain died with it" in (host.path / "logs" / "hypervisor.log").read_text()


def test_killing_dom0_stops_the_host_as_xen_does(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker"}])))
    zygote = _process_named(host, "xl-zygote", host.hypervisor_pid)
    os.kill(_process_named(host, "xl-d0-Domain-0", zygote), signal.SIGKILL)
    _host_stopped_cleanly(host)
    log = (host.path / "logs" / "hypervisor.log").read_text()
    assert "d0 (Domain-0): crashed: killed by signal 9" in log and "host shutting down: dom0 ended" in log
    assert not psutil.pid_exists(zygote) or psutil.Process(zygote).status() == psutil.STATUS_ZOMBIE
