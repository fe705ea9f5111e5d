"""``xenlike inject``: each fault gives its documented outcome and harms nothing else."""

from __future__ import annotations

import re

from .conftest import wait_for, workload
from .test_lifecycle import write_cluster


def counter(host, name: str, node: str):
    """A function reading the integer in ``name``'s ``data/<node>`` (0 while absent)."""
    domid = host.domains()[name]["domid"]
    return lambda: int(host.xs_read(f"/local/domain/{domid}/data/{node}") or 0)


def grows(read, by: int = 3, timeout: float = 20.0, what: str = "progress") -> None:
    start = read()
    wait_for(lambda: read() >= start + by, timeout=timeout, what=what)


def stays(read, seconds: float = 1.5) -> None:
    import time

    start = read()
    time.sleep(seconds)
    assert read() <= start + 1, "it kept going through the fault"  # one in flight may finish


def probes(host, name: str) -> list[tuple[int, str]]:
    return [(int(n), what) for n, what in re.findall(r"^PROBE (\d+) (\S+)$", host.log(name), re.M)]


def disk_guest(name: str, tmp_path) -> dict:
    return {"name": name, "memory": 32, "workload": workload("disk"), "workload_args": ["io", "xvda"],
            "disk": [f"vdev=xvda, size=8M, target={tmp_path / name}.img"]}


def test_a_frozen_back_end_stalls_only_its_disk_and_a_killed_one_comes_back(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [disk_guest("a", tmp_path), disk_guest("b", tmp_path)])))
    a, b = counter(host, "a", "rounds"), counter(host, "b", "rounds")
    grows(a, what="a's I/O")
    grows(b, what="b's I/O")
    out = host.xl("inject", "backend-freeze", "a", "xvda").stdout
    assert out.startswith("#1 backend-freeze a xvda (worker pid ") and "none lost" in out
    assert "#1 backend-freeze" in host.xl("inject", "--list").stdout
    stays(a)
    grows(b, what="b's I/O while a's back end is frozen")
    assert host.xl("inject", "--clear", "1").stdout == "cleared #1\n"
    grows(a, what="a's I/O once its back end continues")
    assert host.xl("inject", "--list").stdout == ""

    out = host.xl("inject", "backend-kill", "a", "xvda").stdout
    assert "backend-kill a xvda" in out and "(done)" in out
    grows(a, what="a's I/O once dom0 restarted its back end")  # test_inject_blk.py checks what it wrote
    grows(b, what="b's I/O after a's back end was killed")
    assert host.run_dir.running_pid() == host.hypervisor_pid
    refused = host.xl("inject", "backend-kill", "b", "xvdz", check=False)
    assert refused.returncode != 0 and "b has no device 'xvdz'" in refused.stderr


def test_event_channel_xenstore_and_vcpu_faults_hit_their_target_alone(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        {"name": "p", "workload": workload("xs_prober")},
        {"name": "t", "workload": "ticker", "workload_args": ["--interval", "0.1"]},
    ])))
    ticks = counter(host, "t", "ticks")
    pdomid = host.domains()["p"]["domid"]
    wait_for(lambda: len(probes(host, "p")) > 3, what="probes")
    grows(ticks, what="ticks")

    # xs-refuse: p's requests under its data/ fail with the errno; t and dom0 are served.
    out = host.xl("inject", "xs-refuse", f"/local/domain/{pdomid}/data", "EPERM").stdout
    assert "xs-refuse" in out and "dom0's own, are served" in out
    seen = len(probes(host, "p"))
    wait_for(lambda: any(what == "EPERM" for _n, what in probes(host, "p")[seen:]), what="refused probes")
    grows(ticks, what="t's ticks while p is refused")
    host.xl("xenstore-write", f"/local/domain/{pdomid}/data/by-dom0", "yes")
    assert host.xs_read(f"/local/domain/{pdomid}/data/by-dom0") == "yes"
    host.xl("inject", "--clear")
    seen = len(probes(host, "p"))
    wait_for(lambda: any(what == "ok" for _n, what in probes(host, "p")[seen:]), what="probes served again")

    # xs-delay: p's probes go on, slower, every one answered, in order.
    host.xl("inject", "xs-delay", f"/local/domain/{pdomid}/data", "200")
    seen = len(probes(host, "p"))
    wait_for(lambda: len(probes(host, "p")) > seen + 3, what="delayed probes")
    delayed = probes(host, "p")[seen:]
    assert all(what == "ok" for _n, what in delayed)
    assert [n for n, _ in delayed] == list(range(delayed[0][0], delayed[0][0] + len(delayed)))
    grows(ticks, what="t's ticks while p is delayed")
    host.xl("inject", "--clear")

    # vcpu-freeze: t's vCPU 0 stops; p goes on; --clear lets t run again.
    host.xl("inject", "vcpu-freeze", "t", "0")
    stays(ticks)
    seen = len(probes(host, "p"))
    wait_for(lambda: len(probes(host, "p")) > seen + 3, what="p's probes while t is frozen")
    host.xl("inject", "--clear")
    grows(ticks, what="t's ticks once thawed")

    # evtchn-drop on t's xenstore port: its requests are not signalled, so its ticks stop; p goes on.
    host.xl("inject", "evtchn-drop", "t", "1")
    stays(ticks, 2.0)
    seen = len(probes(host, "p"))
    wait_for(lambda: len(probes(host, "p")) > seen + 3, what="p's probes while t's port drops")
    host.xl("inject", "--clear")
    host.xl("sysrq", "t", "h")  # a watch event wakes t's kernel, whose next send is delivered
    grows(ticks, what="t's ticks after the drop is cleared")

    # evtchn-delay: nothing lost, t goes on.
    host.xl("inject", "evtchn-delay", "t", "1", "50")
    grows(ticks, what="t's ticks with its notifications delayed")
    host.xl("inject", "--clear")

    refused = host.xl("inject", "evtchn-drop", "t", "999", check=False)
    assert refused.returncode != 0 and "has no port 999 open" in refused.stderr
    assert "no fault 'bogus'" in host.xl("inject", "bogus", check=False).stderr
    assert {"p", "t"} <= set(host.domains()) and host.run_dir.running_pid() == host.hypervisor_pid
