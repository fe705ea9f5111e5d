"""Scheduling through the CLI: xl's sched-credit, vcpu-list and vcpu-pin on a real host.

No test here depends on tight timing: shares are the unit tests' and the
benchmark's business; these check what is reported, what is refused, and that
pausing and killing vCPUs keep the host sound.
"""

from __future__ import annotations

import os
import re
import signal
import time

import psutil

from .conftest import console_json, wait_for, workload, write_cfg
from .test_lifecycle import write_cluster


def cpu_times(host) -> dict[str, float]:
    """Each domain's CPU seconds as the scheduler accounted them."""
    return {row["name"]: row["info"]["cpu_time"] for row in host.call("list", long=True)}


def vcpu_rows(host, *domains: str) -> list[list[str]]:
    lines = host.xl("vcpu-list", *domains).stdout.splitlines()
    assert lines[0].split() == ["Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity", "(Hard", "/", "Soft)"]
    return [line.split() for line in lines[1:]]


def sched_rows(host, *args: str) -> dict[str, tuple[int, int]]:
    lines = host.xl("sched-credit", *args).stdout.splitlines()
    if lines[0].startswith("Cpupool"):
        assert lines[0] == "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us"
        lines = lines[1:]
    assert lines[0].split() == ["Name", "ID", "Weight", "Cap"]
    return {fields[0]: (int(fields[2]), int(fields[3])) for fields in (line.split() for line in lines[1:])}


def test_weights_caps_and_pins_from_the_config_and_the_cli_are_what_is_reported(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        {"name": "heavy", "workload": "idle", "weight": 1024, "cap": 50, "cpus": "1"},
        {"name": "plain", "workload": "idle"},
    ])))
    rows = sched_rows(host)
    assert rows["heavy"] == (1024, 50) and rows["plain"] == (256, 0) and rows["Domain-0"] == (256, 0)
    assert sched_rows(host, "-d", "heavy") == {"heavy": (1024, 50)}
    listing = {row[0]: row for row in vcpu_rows(host)}
    assert listing["heavy"][1:3] == [str(host.domains()["heavy"]["domid"]), "0"]
    assert listing["heavy"][-3:] == ["1", "/", "all"] and listing["plain"][-3:] == ["all", "/", "all"]

    assert host.xl("sched-credit", "-d", "plain", "-w", "512", "-c", "20").stdout == ""  # xl prints nothing
    host.xl("sched-credit", "-d", "heavy", "-c", "0")
    host.xl("vcpu-pin", "plain", "0", "0")
    host.xl("vcpu-pin", "heavy", "all", "all")
    rows = sched_rows(host)
    assert rows["plain"] == (512, 20) and rows["heavy"] == (1024, 0)
    listing = {row[0]: row for row in vcpu_rows(host, "plain", "heavy")}
    assert listing["plain"][-3:] == ["0", "/", "all"] and listing["heavy"][-3:] == ["all", "/", "all"]
    assert listing["plain"][3] == "0"  # it sits on the one pCPU it may use

    cfg = write_cfg(tmp_path, "late", 'name = "late"\nworkload = "idle"\ncpu_weight = 300\ncpus = "0-1"\n')
    host.xl("create", str(cfg))
    assert sched_rows(host, "-d", "late") == {"late": (300, 0)}
    host.xl("sched-credit", "-d", "Domain-0", "-w", "512")  # dom0 is scheduled like the others
    assert sched_rows(host)["Domain-0"] == (512, 0)


def test_bad_values_are_refused_with_one_line_naming_the_value(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "d", "workload": "idle"}])))
    cases = [
        (["sched-credit", "-d", "d", "-w", "-5"], "weight -5"),
        (["sched-credit", "-d", "d", "-w", "70000"], "weight 70000"),
        (["sched-credit", "-d", "d", "-c", "150"], "cap 150"),
        (["sched-credit", "-d", "d", "-c", "-1"], "cap -1"),
        (["vcpu-pin", "d", "0", "7"], "pCPU 7 does not exist"),
        (["vcpu-pin", "d", "3", "0"], "vCPU 3 does not exist"),
        (["vcpu-pin", "d", "0", "zero"], "'zero'"),
        (["sched-credit", "-d", "nosuch"], "'nosuch'"),
    ]
    for args, named in cases:
        result = host.xl(*args, check=False)
        assert result.returncode != 0, args
        assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    cfg = write_cfg(tmp_path, "far", 'name = "far"\nworkload = "idle"\ncpus = "5"\n')
    result = host.xl("create", str(cfg), check=False)
    assert result.returncode != 0 and "pCPU 5 does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    cfg = write_cfg(tmp_path, "greedy", 'name = "greedy"\nworkload = "idle"\nvcpus = 2\ncap = 300\n')
    result = host.xl("create", str(cfg), check=False)
    assert result.returncode != 0 and "cap = 300" in result.stderr and "at most 200" in result.stderr
    assert set(host.domains()) == {"Domain-0", "d"}  # nothing half-made
    assert sched_rows(host, "-d", "d") == {"d": (256, 0)}  # nothing changed


def test_a_paused_domain_accumulates_no_cpu_time_while_two_others_compete(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        {"name": name, "workload": "burn", "cpus": "0"} for name in ("a", "b", "c")
    ])))
    wait_for(lambda: all(cpu_times(host)[n] > 0.05 for n in "abc"), what="the three burners to run")
    host.xl("pause", "c")
    before = cpu_times(host)
    time.sleep(1.0)
    after = cpu_times(host)
    assert after["c"] == before["c"]
    assert (after["a"] - before["a"]) + (after["b"] - before["b"]) > 0.5  # the two others had pCPU 0
    assert after["a"] - before["a"] > 0.1 and after["b"] - before["b"] > 0.1
    vcpu = {row[0]: row for row in vcpu_rows(host, "c")}["c"]
    assert vcpu[4] == "---"  # neither running nor blocked: paused
    assert host.domains()["c"]["state"] == "--p---"
    host.xl("unpause", "c")
    wait_for(lambda: cpu_times(host)["c"] > after["c"] + 0.05, what="c to run again")


def test_list_and_vcpu_list_show_the_same_accounted_time(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "w", "workload": "burn"}])))
    wait_for(lambda: cpu_times(host)["w"] > 0.3, what="w to burn")
    host.xl("pause", "w")  # frozen, so the two commands see the same figure
    listed = float(host.xl("list", "w").stdout.splitlines()[1].split()[-1])
    vcpu_time = float(vcpu_rows(host, "w")[0][5])
    assert listed == vcpu_time and listed >= 0.3
    pid = host.call("list", long=True)[1]["info"]["pid"]
    kernel = sum(psutil.Process(pid).cpu_times()[:2])
    assert abs(cpu_times(host)["w"] - kernel) < 0.05  # the kernel's figure, not an estimate
    host.xl("unpause", "w")  # a paused guest could not shut down with the host


def test_killing_scheduled_vcpus_mid_tick_does_not_crash_the_hypervisor(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        {"name": f"k{i}", "workload": "burn", "cpus": "0", "on_crash": "preserve"} for i in range(4)
    ])))
    wait_for(lambda: all(t > 0.02 for n, t in cpu_times(host).items() if n.startswith("k")), what="burners to run")
    pids = [row["info"]["pid"] for row in host.call("list", long=True) if row["name"].startswith("k")]
    for pid in pids:  # some running, some stopped by the scheduler when they die
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.013)
    wait_for(lambda: all(host.domains()[f"k{i}"]["state"] == "---sc-" for i in range(4)), what="the crashes to show")
    assert psutil.pid_exists(host.hypervisor_pid)
    assert "tick failed" not in host.log("hypervisor")
    host.xl("vcpu-list")  # the host keeps answering
    host.xl("sched-credit")
    cfg = write_cfg(tmp_path, "after", 'name = "after"\nworkload = "burn"\ncpus = "0"\n')
    host.xl("create", str(cfg))
    wait_for(lambda: cpu_times(host)["after"] > 0.1, what="a new domain to be scheduled")


def test_the_null_scheduler_leaves_placement_to_linux(host, tmp_path):
    host.xl("up", "-d", "--memory", "256", "--sched", "null", str(write_cluster(tmp_path, [
        {"name": "n", "workload": "burn", "cpus": "1"},
    ])))
    host.hypervisor_pid = host.run_dir.running_pid()
    info = dict(map(str.strip, line.split(" : ", 1)) for line in host.xl("info").stdout.splitlines())
    assert info["xen_scheduler"] == "null"
    wait_for(lambda: cpu_times(host)["n"] > 0.2, what="n to run")
    row = vcpu_rows(host, "n")[0]
    assert row[3] == "1" and row[-3:] == ["1", "/", "all"]
    pid = host.call("list", long=True)[1]["info"]["pid"]
    assert os.sched_getaffinity(pid) == {1}
    # A policy that tracks no run state: `list` reads it from /proc, as `list -l` does.
    short, long = host.call("list"), host.call("list", long=True)
    assert [(r["name"], r["mem"], r["vcpus"]) for r in short] == [(r["name"], r["mem"], r["vcpus"]) for r in long]
    assert short[1]["state"][0] == "r" and 0 <= long[1]["cpu_time"] - short[1]["cpu_time"] < 1.0


def test_an_unknown_scheduler_is_refused_before_anything_starts(host):
    result = host.xl("up", "-d", "--sched", "fifo", check=False)
    assert result.returncode != 0
    assert re.fullmatch(r"xenlike up: no scheduler named 'fifo'; registered: credit, null.*\n", result.stderr)
    assert host.run_dir.running_pid() is None


def test_secondary_vcpus_are_processes_the_hypervisor_schedules(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "many", "vcpus": 3, "workload": workload("vcpus")}])))
    result = console_json(host, "many", "VCPUS", timeout=20)
    assert result["answers"] == [sum(i * i for i in range(1000))] * 2
    assert len(set(result["pids"])) == 2 and result["vcpu0"] not in result["pids"]
    assert result["in_order"] == [0, 1, 5]
    assert result["remote_error"] == "VcpuError: True" and result["lambda_refused"]
    refusals = result["refusals"]
    assert "not a child of its vCPU 0" in refusals["parent"] and "not a child" in refusals["itself"]
    assert "no secondary vCPU 3" in refusals["out_of_range"]
    rows = vcpu_rows(host, "many")
    assert [row[2] for row in rows] == ["0", "1", "2"]
    assert all(row[4] in ("-b-", "r--", "---") for row in rows)  # all three online
    for pid in result["pids"]:
        assert os.getpgid(pid) == os.getpgid(result["vcpu0"])  # one process group: pause stops them all


def test_a_cpu_bound_guest_burns_on_every_vcpu_and_a_cap_bounds_the_domain(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "duo", "vcpus": 2, "workload": "burn"}])))
    wait_for(lambda: all(float(row[5]) >= 0.3 for row in vcpu_rows(host, "duo")), what="both vCPUs to burn")
    assert host.domains()["duo"]["vcpus"] == 2
    host.xl("sched-credit", "-d", "duo", "-c", "50")  # half of one pCPU for the two vCPUs together
    time.sleep(0.3)
    before, start = cpu_times(host)["duo"], time.monotonic()
    time.sleep(1.5)
    used = (cpu_times(host)["duo"] - before) / (time.monotonic() - start)
    assert used < 0.8  # capped well below the two pCPUs it had (loose: no timing in pass/fail)
    host.xl("pause", "duo")
    frozen = cpu_times(host)["duo"]
    time.sleep(0.3)
    assert cpu_times(host)["duo"] == frozen  # pausing stops every vCPU
    host.xl("unpause", "duo")
