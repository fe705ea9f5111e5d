"""vcpu-set: a domain's vCPUs beyond ``vcpus`` start offline and ``vcpu-set`` brings them up and down.

The toolstack writes ``cpu/N/availability``; the guest kernel follows it (a
process forked and reported with ``VCPUOP_up``, or taken away with
``VCPUOP_down`` and ended), and ``list``, ``vcpu-list`` and the workload's
``ctx.vcpus`` show the result.
"""

from __future__ import annotations

import json

import psutil

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster
from .test_sched import vcpu_rows


def hotplug_reports(host, name: str) -> list[dict]:
    prefix = "HOTPLUG "
    return [json.loads(line[len(prefix) :]) for line in host.log(name).splitlines() if line.startswith(prefix)]


def online_rows(host, name: str) -> list[str]:
    """vcpu-list's VCPU numbers that are online (a State other than ``--p``)."""
    return [row[2] for row in vcpu_rows(host, name) if row[4] != "--p"]


def listed_vcpus(host, name: str) -> int:
    lines = host.xl("list", name).stdout.splitlines()
    assert lines[0].split()[:5] == ["Name", "ID", "Mem", "VCPUs", "State"]
    return int(lines[1].split()[3])


def test_vcpu_set_brings_vcpus_down_and_up(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "hot", "vcpus": 2, "maxvcpus": 4, "workload": workload("hotplug")}])))
    first = wait_for(lambda: hotplug_reports(host, "hot"), 20, "the first HOTPLUG line")[-1]
    assert first["online"] == [1]
    refused = console_json(host, "hot", "REFUSED")
    assert "no secondary vCPU 0" in refused["vcpu0"] and "no secondary vCPU 99" in refused["beyond"]
    assert "vCPU 3 is not up" in refused["offline"] and "no secondary vCPU '1'" in refused["bogus"]
    domid = host.domains()["hot"]["domid"]
    assert [host.xs_read(f"/local/domain/{domid}/cpu/{n}/availability") for n in range(4)] == [
        "online", "online", "offline", "offline"
    ]
    assert listed_vcpus(host, "hot") == 2
    assert [row[2] for row in vcpu_rows(host, "hot")] == ["0", "1", "2", "3"]
    assert online_rows(host, "hot") == ["0", "1"]

    host.xl("vcpu-set", "hot", "4")
    up = wait_for(lambda: next((r for r in hotplug_reports(host, "hot") if r["online"] == [1, 2, 3]), None), 20,
                  "vCPUs 2 and 3 in ctx.vcpus")
    assert len(set(up["pids"])) == 3 and up["vcpu0"] not in up["pids"]
    wait_for(lambda: online_rows(host, "hot") == ["0", "1", "2", "3"], 10, "vcpu-list to show four online")
    assert listed_vcpus(host, "hot") == 4
    processes = {p.pid for p in psutil.Process(up["vcpu0"]).children()}
    assert set(up["pids"]) <= processes

    host.xl("vcpu-set", "hot", "1")
    wait_for(lambda: hotplug_reports(host, "hot")[-1]["online"] == [], 20, "ctx.vcpus to empty")
    wait_for(lambda: online_rows(host, "hot") == ["0"], 10, "vcpu-list to show one online")
    assert listed_vcpus(host, "hot") == 1
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in up["pids"]), 10, "the offline vCPUs' processes to end")

    host.xl("vcpu-set", "hot", "3")
    again = wait_for(lambda: next((r for r in hotplug_reports(host, "hot")[2:] if r["online"] == [1, 2]), None), 20,
                     "vCPUs 1 and 2 back in ctx.vcpus")
    assert not set(again["pids"]) & set(up["pids"])  # new processes
    wait_for(lambda: online_rows(host, "hot") == ["0", "1", "2"], 10, "vcpu-list to show three online")


def test_vcpu_set_beyond_maxvcpus_is_refused_in_one_line(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "two", "vcpus": 1, "maxvcpus": 2, "workload": "idle"}])))
    result = host.xl("vcpu-set", "two", "3", check=False)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1
    assert "cannot set 3 vCPUs, its maxvcpus is 2" in result.stderr
    zero = host.xl("vcpu-set", "two", "0", check=False)
    assert zero.returncode != 0 and "a whole number from 1 to 2" in zero.stderr
    assert online_rows(host, "two") == ["0"]
    host.xl("vcpu-set", "two", "2")
    wait_for(lambda: online_rows(host, "two") == ["0", "1"], 10, "vCPU 1 online")
