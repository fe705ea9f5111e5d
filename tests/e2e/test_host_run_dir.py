"""A host and its run directory: one host per run directory, host memory checked against the machine's,
``info`` as xl prints it, and logs that say what happened at a clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from xenlike.kernel.machine import Machine

from .conftest import Host, wait_for, write_cfg
from .test_lifecycle import write_cluster


def test_a_clean_shutdown_is_logged_as_one(host: Host, tmp_path: Path) -> None:
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker"}])))
    wait_for(lambda: "tick 1" in host.log("t"), what="t's first tick")
    assert "had to be destroyed" not in host.xl("down").stdout
    wait_for(lambda: not host.processes(), what="every process of the host to exit")
    hypervisor, dom0 = host.log("hypervisor"), host.log("dom0")
    assert "SIGKILL" not in hypervisor and "SIGKILL" not in dom0
    assert "d0 (Domain-0): stopped (host shutdown)" in hypervisor
    assert re.search(r"d1 \(t\): shut down \(poweroff\); on_poweroff is destroy", dom0), dom0
    assert not re.search(r"shut down \(\w+: shut down", dom0), dom0  # the reason is said once


def _info(host: Host) -> dict[str, str]:
    pairs = (line.split(" : ", 1) for line in host.xl("info").stdout.splitlines())
    return {key.strip(): value.strip() for key, value in pairs}


def _holders_of_the_lock(host: Host) -> set[str]:
    """The names of the host's processes that have hypervisor.lock open."""
    lock = os.stat(host.run_dir.lock_path)
    names = set()
    for proc in host.processes():
        try:
            for name in os.listdir(f"/proc/{proc.pid}/fd"):
                st = os.stat(f"/proc/{proc.pid}/fd/{name}")
                if (st.st_dev, st.st_ino) == (lock.st_dev, lock.st_ino):
                    names.add(proc.name())
        except (OSError, psutil.Error):
            continue
    return names


def _already_runs(host: Host, pid: int) -> str:
    return (f"xenlike up: a host already runs in {host.path} (pid {pid}); `xenlike down` stops it, "
            "or --run-dir picks another\n")


def test_two_ups_at_once_on_a_new_run_directory_start_one_host(host: Host, tmp_path: Path) -> None:
    cluster = str(write_cluster(tmp_path, []))
    command = [sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "up", "-d", "--memory", "256", cluster]
    ups = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [(up.wait(timeout=60), *up.communicate()) for up in ups]
    finally:
        for up in ups:
            up.kill()
            up.wait()
    host.hypervisor_pid = pid = host.run_dir.running_pid()
    assert pid is not None
    [(ok, out, _)] = [r for r in results if r[0] == 0]
    [(failed, _, err)] = [r for r in results if r[0] != 0]
    assert f"hypervisor pid {pid}" in out
    assert failed == 1 and err == _already_runs(host, pid)
    assert [p.pid for p in host.processes() if p.name() == "xl-hypervisor"] == [pid]
    assert _holders_of_the_lock(host) == {"xl-hypervisor"}  # the zygote and the domains never hold it
    assert host.xl("up", "-d", cluster, check=False).stderr == _already_runs(host, pid)  # and later, the same
    host.xl("down")
    wait_for(lambda: not host.processes(), what="every process of the host to exit")


def test_the_hypervisor_s_own_refusal_is_one_line_on_its_status_pipe(host: Host) -> None:
    """What ``up`` reads when another host took the run directory after its own check: the pipe's one line."""
    from xenlike.kernel.rundir import HostLock

    lock = HostLock.take(host.run_dir)  # the other host
    read_end, write_end = os.pipe()
    try:
        hypervisor = subprocess.run(
            [sys.executable, "-m", "xenlike.hypervisor", "--run-dir", str(host.path), "--memory", "256",
             "--status-fd", str(write_end)], pass_fds=(write_end,), capture_output=True, text=True, timeout=60)
        os.close(write_end)
        with os.fdopen(read_end) as status:
            line = status.read()
    finally:
        lock.release()
    assert hypervisor.returncode == 1
    assert line == _already_runs(host, os.getpid())[len("xenlike up: "):]
    assert hypervisor.stderr == f"xenlike.hypervisor: {line}"
    assert not host.processes()


def test_a_host_killed_outright_leaves_its_run_directory_free(host: Host, tmp_path: Path) -> None:
    cluster = str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker"}]))
    host.up(cluster)
    assert host.hypervisor_pid is not None
    os.kill(host.hypervisor_pid, signal.SIGKILL)  # its zygote and domains die after it, by PR_SET_PDEATHSIG
    wait_for(lambda: not host.processes(), timeout=15, what="every process of the host to be gone")
    host.up(cluster)  # nothing of the old host kept the lock
    assert host.hypervisor_pid is not None and "t" in host.domains()


def test_up_refuses_more_memory_than_the_machine_has_unless_overcommitted(host: Host, tmp_path: Path) -> None:
    cluster = str(write_cluster(tmp_path, []))
    machine = Machine.read().memory_mib
    ask = machine + 4096
    result = host.xl("up", "-d", "--memory", str(ask), cluster, check=False)
    assert result.returncode == 1 and result.stderr == (
        f"xenlike up: --memory {ask} MiB is more than this machine's {machine} MiB (MemTotal); ask for at most "
        f"{machine} MiB, or add --overcommit to allow it\n")
    assert host.run_dir.running_pid() is None and not host.processes()
    direct = subprocess.run([sys.executable, "-m", "xenlike.hypervisor", "--run-dir", str(host.path),
                             "--memory", str(ask)], capture_output=True, text=True, timeout=60)
    assert direct.returncode == 1 and direct.stderr == f"xenlike.hypervisor: {result.stderr[len('xenlike up: '):]}"

    host.xl("up", "-d", "--memory", str(ask), "--overcommit", cluster)
    host.hypervisor_pid = host.run_dir.running_pid()
    info = _info(host)
    assert info["total_memory"] == str(ask) and "--overcommit" in info["xen_commandline"]
    big = write_cfg(tmp_path, "big", f'name = "big"\nmemory = {machine + 1024}\n')
    host.xl("create", str(big))  # sparse: it costs the machine only what it touches
    assert host.domains()["big"]["mem"] == machine + 1024


def test_a_domain_bigger_than_the_machine_is_refused_naming_both_figures(host: Host, tmp_path: Path) -> None:
    host.xl("up", "-d", str(write_cluster(tmp_path, [])))  # the default host memory
    host.hypervisor_pid = host.run_dir.running_pid()
    machine = Machine.read().memory_mib
    size = machine + 1024
    pool = int(_info(host)["total_memory"])
    big = write_cfg(tmp_path, "big", f'name = "big"\nmemory = {size}\n')
    result = host.xl("create", str(big), check=False)
    assert result.returncode == 1
    assert re.fullmatch(rf"xenlike create: domain 'big' needs {size} MiB but only \d+ MiB of the host's {pool} MiB "
                        rf"are free \(that is more than this machine's {machine} MiB: only a host started with "
                        r"--overcommit and a larger --memory can hold it\)\n", result.stderr), result.stderr
    assert "big" not in host.domains()


XL_INFO_KEYS = ["host", "release", "version", "machine", "nr_cpus", "nr_nodes", "cores_per_socket",
                "threads_per_core", "cpu_mhz", "total_memory", "free_memory", "xen_major", "xen_minor", "xen_extra",
                "xen_version", "xen_caps", "xen_scheduler", "xen_pagesize", "xen_commandline"]


def test_info_has_xl_s_fields_in_xl_s_order_from_the_machine(host: Host, tmp_path: Path) -> None:
    host.up(str(write_cluster(tmp_path, [])))
    lines = host.xl("info").stdout.splitlines()
    assert all(re.fullmatch(r"[a-z_]+ +: .*", line) and line.index(":") == 23 for line in lines), lines
    info = _info(host)
    assert [key for key in info if key in XL_INFO_KEYS] == XL_INFO_KEYS
    machine = Machine.read()
    assert int(info["nr_cpus"]) == os.cpu_count()
    assert int(info["nr_nodes"]) >= 1
    assert int(info["cores_per_socket"]) >= 1 and int(info["threads_per_core"]) >= 1
    assert int(info["cores_per_socket"]) * int(info["threads_per_core"]) <= (os.cpu_count() or 1)
    assert (int(info["threads_per_core"]), int(info["cores_per_socket"])) == (machine.threads_per_core,
                                                                             machine.cores_per_socket)
    assert re.fullmatch(r"\d+\.\d{3}", info["cpu_mhz"])
    assert (float(info["cpu_mhz"]) > 0) == (machine.cpu_khz > 0)
    assert info["xen_version"] == f"{info['xen_major']}.{info['xen_minor']}{info['xen_extra']}" == "4.19-xenlike"
    assert info["xen_commandline"].startswith(f"--run-dir {host.path} --memory 1024 ")
    assert info["version"] == os.uname().version and info["total_memory"] == "1024"
