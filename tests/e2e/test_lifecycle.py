"""The domain lifecycle through the CLI, with a real hypervisor, dom0 and domUs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import wait_for, write_cfg


def test_up_with_the_default_cluster_and_down_leaves_nothing(host):
    out = host.up().stdout
    assert "created hello" in out and "created ticker" in out and "created echo" in out
    domains = host.domains()
    assert set(domains) == {"Domain-0", "hello", "ticker", "echo", "journal"}
    listing = host.xl("list").stdout.splitlines()
    assert listing[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    assert re.match(r"Domain-0\s+0\s+\d+\s+1\s+[r-][b-]----\s+\d+\.\d", listing[1])
    wait_for(lambda: "Hello from hello" in host.log("hello"), what="hello's greeting in its log")
    wait_for(lambda: "tick 2" in host.log("ticker"), what="ticker's ticks")
    wait_for(lambda: "journal: wrote boot 1" in host.log("journal"), what="the journal's first entry on its disk")
    assert (host.path / "journal.img").exists()  # the default cluster's images live in the run directory
    pids = [p.pid for p in host.processes()]
    assert len(pids) >= 6  # hypervisor, zygote, dom0 and four domUs

    assert "had to be destroyed" not in host.xl("down").stdout  # every guest shut down cooperatively
    wait_for(lambda: not host.processes(), what="every process of the host to exit")
    assert not (host.path / "toolstack.sock").exists() and not (host.path / "console.sock").exists()
    assert not (host.path / "hypervisor.pid").exists()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # Guest memory is memfds: with their holders gone nothing of it remains anywhere.
    assert not any("xenlike-d" in os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))


def test_create_from_an_xl_cfg_file_with_overrides(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    cfg = write_cfg(tmp_path, "web", 'name = "web"\nmemory = 24\nworkload = "ticker"\nworkload_args = ["--interval", "0.1"]\n')
    out = host.xl("create", str(cfg), "memory=40").stdout
    assert "created web" in out
    web = host.domains()["web"]
    assert web["mem"] == 40 and web["vcpus"] == 1
    wait_for(lambda: host.xs_read(f"/local/domain/{web['domid']}/data/ticks"), what="web's ticks in xenstore")
    assert host.xs_read(f"/local/domain/{web['domid']}/memory/target") == str(40 * 1024)


def test_create_from_a_cluster_file(host, tmp_path):
    cluster = write_cluster(tmp_path, [
        {"name": "a", "workload": "idle"},
        {"name": "b", "workload": "ticker", "memory": 20},
    ])
    host.up(str(cluster))
    domains = host.domains()
    assert {"a", "b"} <= set(domains) and domains["b"]["mem"] == 20


def test_paused_domain_is_p_and_makes_no_progress(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "ticker", "workload_args": ["--interval", "0.05"]},
                                         {"name": "i", "workload": "idle"}])))
    t = host.domains()["t"]["domid"]
    wait_for(lambda: int(host.xs_read(f"/local/domain/{t}/data/ticks") or 0) >= 2, what="ticks")
    assert re.fullmatch(r"-b----", host.domains()["i"]["state"])  # idle waits in its event loop: blocked
    host.xl("pause", "t")
    assert host.domains()["t"]["state"] == "--p---"
    before = host.xs_read(f"/local/domain/{t}/data/ticks")
    time.sleep(0.5)
    assert host.xs_read(f"/local/domain/{t}/data/ticks") == before
    host.xl("unpause", "t")
    wait_for(lambda: int(host.xs_read(f"/local/domain/{t}/data/ticks")) > int(before), what="ticks after unpause")
    assert "p" not in host.domains()["t"]["state"]

    # A paused domain cannot see a shutdown request: down does not wait its timeout out for it.
    host.xl("pause", "t")
    out = host.xl("down", "--timeout", "300", timeout=60).stdout
    assert "had to be destroyed" in out
    assert f"d{t} (t): paused, so it cannot answer the shutdown" in host.log("dom0")
    assert "(i): still running" not in host.log("dom0")  # the idle one shut down as asked


def test_shutdown_reboot_destroy(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "s", "workload": "hello"}, {"name": "r", "workload": "hello"},
                                         {"name": "d", "workload": "idle"}])))
    old_r = host.domains()["r"]["domid"]
    host.xl("shutdown", "-w", "s")
    assert "s" not in host.domains()
    assert "poweroff requested, goodbye" in host.log("s")

    host.xl("reboot", "r")
    wait_for(lambda: host.domains().get("r", {}).get("domid", old_r) != old_r, what="r to come back with a new id")
    wait_for(lambda: host.log("r").count("Hello from r") == 2, what="r's second boot")

    host.xl("destroy", "d")
    assert "d" not in host.domains()
    assert "destroyed" in "\n".join(host.call("dmesg"))


@pytest.mark.parametrize("action", ["restart", "destroy", "preserve"])
def test_a_crashing_workload_triggers_on_crash(host, tmp_path, action):
    host.up(str(write_cluster(tmp_path, [{"name": "c", "workload": "crash", "workload_args": ["--after", "0.2"],
                                          "on_crash": action}])))
    if action == "restart":
        wait_for(lambda: host.log("c").count("will crash") >= 2, what="a second boot after the crash")
        assert "RuntimeError: c crashed on purpose" in host.log("c")
        assert "c" in host.domains()
    elif action == "destroy":
        wait_for(lambda: "c" not in host.domains(), what="the crashed domain to be destroyed")
    else:
        wait_for(lambda: host.domains().get("c", {}).get("state") == "---sc-", what="the crashed domain preserved")
        host.xl("destroy", "c")
        assert "c" not in host.domains()


def test_sigkill_of_a_domu_is_noticed_reported_and_cleaned_up(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "victim", "workload": "idle", "on_crash": "destroy"},
                                         {"name": "bystander", "workload": "ticker", "workload_args": ["--interval", "0.1"]}])))
    free_before = host.call("info")["free_frames"]
    info = host.call("list", long=True)
    pid = next(r["info"]["pid"] for r in info if r["name"] == "victim")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "victim" not in host.domains(), what="the killed domain to be cleaned up")
    assert any("victim" in line and "killed by signal 9" in line for line in host.call("dmesg"))
    assert host.call("info")["free_frames"] > free_before  # its memory went back to the pool
    b = host.domains()["bystander"]["domid"]
    ticks = int(wait_for(lambda: host.xs_read(f"/local/domain/{b}/data/ticks"), what="the bystander's first tick"))
    wait_for(lambda: int(host.xs_read(f"/local/domain/{b}/data/ticks")) > ticks, what="the bystander to keep running")


def test_the_short_list_says_what_each_domains_info_says(host, tmp_path):
    """`list` (from getdomaininfolist's columns) and `list -l` (every domain's getdomaininfo) agree on each
    domain, running, paused or shut down, and `list DOMAIN` finds one by name or id."""
    host.up(str(write_cluster(tmp_path, [
        {"name": "idle", "workload": "idle"},
        {"name": "held", "workload": "idle"},
        {"name": "c", "workload": "crash", "workload_args": ["--after", "0.2"], "on_crash": "preserve"},
    ])))
    wait_for(lambda: host.domains().get("c", {}).get("state") == "---sc-", what="the crashed domain preserved")
    host.xl("pause", "held")
    short = host.call("list")
    long = {row["domid"]: row for row in host.call("list", long=True)}
    assert [row["domid"] for row in short] == sorted(long)
    for row in short:
        full = long[row["domid"]]
        assert {key: row[key] for key in ("name", "mem", "vcpus")} == {key: full[key] for key in ("name", "mem", "vcpus")}
        # Running or blocked may change between the two samples (dom0 runs to answer them); the rest may not.
        assert row["state"][2:] == full["state"][2:] and _runnable(row["state"]) == _runnable(full["state"])
        assert row["mem"] == full["info"]["memory_kb"] // 1024
        assert 0 <= full["cpu_time"] - row["cpu_time"] < 1.0  # asked a moment later
    states = {row["name"]: row["state"] for row in short}
    assert states["held"] == "--p---" and states["c"] == "---sc-" and states["idle"] in ("-b----", "r-----")
    held = next(row for row in short if row["name"] == "held")
    assert [row["name"] for row in host.call("list", domain="held")] == ["held"]
    assert [row["name"] for row in host.call("list", domain=str(held["domid"]))] == ["held"]
    missing = host.xl("list", "nosuch", check=False)
    assert missing.returncode != 0 and "no domain 'nosuch'" in missing.stderr


def _runnable(state: str) -> bool:
    """Whether xl's state letters say running or blocked (a domain that is neither is paused, down or dying)."""
    return state[0] == "r" or state[1] == "b"


def test_rename_and_uptime(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "old", "workload": "idle"}])))
    host.xl("rename", "old", "new")
    domid = host.domains()["new"]["domid"]
    assert host.xs_read(f"/local/domain/{domid}/name") == "new"
    lines = host.xl("uptime").stdout.splitlines()
    assert lines[0].split() == ["Name", "ID", "Uptime"]
    assert any(line.startswith("new ") for line in lines)


def write_cluster(directory, domains):
    """A TOML cluster file with these domains (memory 16 MiB unless given)."""
    lines = []
    for domain in domains:
        lines.append("[[domain]]")
        for key, value in {"memory": 16, **domain}.items():
            if isinstance(value, list):
                rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
            elif isinstance(value, int):
                rendered = str(value)
            else:
                rendered = f'"{value}"'
            lines.append(f"{key} = {rendered}")
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_up_in_the_foreground_streams_consoles_and_ctrl_c_stops_everything(host, tmp_path):
    cluster = write_cluster(tmp_path, [{"name": "t", "workload": "ticker", "workload_args": ["--interval", "0.1"]}])
    up = subprocess.Popen([sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "up", "--memory", "256", str(cluster)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 20
        while not any(line.startswith("t ") and "| tick 2" in line for line in seen):
            assert time.monotonic() < deadline, f"no prefixed console lines: {seen[-5:]}"
            seen.append(up.stdout.readline())
        ticks = [line.split("|")[1].strip() for line in seen if line.startswith("t ") and "| tick" in line]
        assert ticks == ["tick 1", "tick 2"], "the stream must begin with the guest's first line"
        pids = [p.pid for p in host.processes()]
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert not host.processes()
    left = [open(f"/proc/{pid}/stat").read().split()[:3] for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert all(state == "Z" for _, _, state in left), left
    assert not (host.path / "toolstack.sock").exists()


def test_a_reader_that_stops_early_gets_no_traceback(host, tmp_path):
    """``xenlike xenstore-ls | head -1``: the pipe is gone before xenlike writes; it stops quietly."""
    host.up(str(write_cluster(tmp_path, [{"name": "t", "workload": "idle"}])))
    ls = subprocess.Popen([sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "xenstore-ls", "/"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ls.stdout.close()  # the only reader: every write xenlike makes now fails with EPIPE
    assert ls.wait(10) == 141
    assert ls.stderr.read() == b""
