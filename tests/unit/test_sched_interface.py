"""The scheduler plugin interface: loader, checks, the vCPU-process mechanism, both schedulers on real processes."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from xenlike.hypervisor.sched import (
    Sample,
    SchedError,
    Scheduler,
    VcpuProcess,
    available_schedulers,
    cpu_ranges,
    load_scheduler,
)
from xenlike.hypervisor.sched.credit import CreditScheduler
from xenlike.hypervisor.sched.null import NullScheduler


def spinner(cpu: int = 0) -> int:
    """A child process that spins on ``cpu`` until killed."""
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpu})
            while True:
                pass
        finally:
            os._exit(0)
    while os.sched_getaffinity(pid) != {cpu}:  # settled before a scheduler touches it
        time.sleep(0.001)
    return pid


@pytest.fixture
def children():
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_the_loader_finds_the_registered_schedulers():
    assert {"credit", "null"} <= set(available_schedulers())
    assert load_scheduler("credit") is CreditScheduler
    assert load_scheduler("null") is NullScheduler
    with pytest.raises(SchedError, match=r"no scheduler named 'fifo' \(registered: .*credit.*null"):
        load_scheduler("fifo")


@pytest.mark.parametrize("cls", [CreditScheduler, NullScheduler])
def test_bad_values_are_refused_naming_the_value(cls):
    sched: Scheduler = cls([0, 1])
    sched.add_domain(3, "d3 (web)", 2)
    for weight in (0, -5, 65536, "256", True):
        with pytest.raises(SchedError, match=f"weight {weight!r} is out of range: expected 1 to 65535"):
            sched.adjust(3, weight=weight)
    with pytest.raises(SchedError, match=r"cap 201 is out of range for d3 \(web\): expected 0 \(no cap\) to 200"):
        sched.adjust(3, cap=201)
    with pytest.raises(SchedError, match="pCPU 2 does not exist: this host schedules pCPUs 0-1"):
        sched.pin(3, 0, [0, 2])
    with pytest.raises(SchedError, match="vCPU 2 does not exist: d3 \\(web\\) has vCPUs 0-1"):
        sched.pin(3, 2, [0])
    with pytest.raises(SchedError) as missing:
        sched.params(9)
    assert missing.value.errno == errno.ESRCH
    assert sched.adjust(3, weight=512, cap=150) == {"weight": 512, "cap": 150}
    assert sched.adjust(3, cap=0) == {"weight": 512, "cap": 0}  # either may be left out


def test_cpu_ranges_are_written_as_xl_writes_them():
    assert cpu_ranges([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"
    assert cpu_ranges([5]) == "5" and cpu_ranges([]) == "none"


def test_a_vcpu_process_is_sampled_stopped_continued_and_pinned(children):
    pid = spinner()
    children.append(pid)
    proc = VcpuProcess(pid)
    time.sleep(0.1)
    first = proc.sample()
    assert isinstance(first, Sample) and first.runnable and first.cpu == 0 and first.cpu_ns > 20_000_000
    assert proc.stop()
    time.sleep(0.05)
    stopped = proc.sample()
    time.sleep(0.1)
    assert proc.sample().cpu_ns == stopped.cpu_ns and not stopped.runnable  # stopped: no CPU time
    assert proc.set_affinity({1}) and os.sched_getaffinity(pid) == {1}
    assert proc.cont()
    time.sleep(0.1)
    moved = proc.sample()
    assert moved.runnable and moved.cpu == 1 and moved.cpu_ns > stopped.cpu_ns
    proc.close()


def test_a_vanished_process_is_reported_not_raised(children):
    pid = spinner()
    children.append(pid)
    proc = VcpuProcess(pid)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    children.remove(pid)
    assert proc.sample() is None and proc.gone
    assert not proc.stop() and not proc.cont() and not proc.set_affinity({0})
    proc.close()


def test_credit_scheduler_shares_a_pcpu_by_weight_among_real_processes(children):
    sched = CreditScheduler([0, 1])
    for domid, weight in ((1, 256), (2, 768)):
        sched.add_domain(domid, f"d{domid}", 1, weight, 0, [0])
        pid = spinner()
        children.append(pid)
        sched.vcpu_up(domid, 0, pid)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        time.sleep(max(0.0, (sched.next_tick() - time.monotonic_ns()) / 1e9))
        sched.tick()
    light, heavy = sched.domain_time(1), sched.domain_time(2)
    # Both ran on pCPU 0 alone: together never more than one CPU's worth of the window. How
    # much of it they got depends on what else the host runs, so that is not asserted.
    assert all(os.sched_getaffinity(pid) == {0} for pid in children)
    assert 0 < light + heavy <= 1.5 + 0.2
    # Credit is handed out per period of wall time, 1:3: the light domain never runs past its
    # quarter, and the heavy one is never held back for it. Only when the host left pCPU 0 to
    # them is the split 3:1 (equal under Linux alone; loose: a unit test).
    assert light <= 1.5 / 4 + 0.15
    assert heavy + 0.05 >= 0.9 * light  # 0.05: a few ticks of accounting granularity
    if light + heavy >= 1.3:
        assert heavy > 2 * light
    rows = sched.vcpu_list(1) + sched.vcpu_list(2)
    assert sum(row["running"] for row in rows) == 1 and all(row["hard"] == [0] for row in rows)
    sched.close()
    for pid in children:  # nothing is left stopped
        assert open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "T"


def test_credit_scheduler_survives_its_processes_dying_mid_tick(children):
    sched = CreditScheduler([0])
    for domid in (1, 2, 3):
        sched.add_domain(domid, f"d{domid}", 1)
        pid = spinner()
        children.append(pid)
        sched.vcpu_up(domid, 0, pid)
    for round_ in range(20):
        sched.tick()
        if round_ in (3, 7):
            victim = children.pop(0)
            os.kill(victim, signal.SIGKILL)
            os.waitpid(victim, 0)
        time.sleep(0.005)
    alive = [row for domid in (1, 2, 3) for row in sched.vcpu_list(domid) if row["online"]]
    assert len(alive) == 1 and sched.domain_time(3) > 0


def test_null_scheduler_only_sets_affinity_and_reads_time(children):
    sched = NullScheduler([0, 1])
    sched.add_domain(1, "d1", 1, cpus=[1])
    pid = spinner(cpu=0)
    children.append(pid)
    sched.vcpu_up(1, 0, pid)
    assert os.sched_getaffinity(pid) == {1}
    time.sleep(0.2)
    assert sched.next_tick() is None
    assert sched.domain_time(1) > 0.1
    row = sched.vcpu_list(1)[0]
    assert row["online"] and row["running"] and row["cpu"] == 1
    sched.pin(1, 0, [0])
    assert os.sched_getaffinity(pid) == {0}


def sleeper() -> int:
    """A child process that sleeps until killed."""
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                time.sleep(3600)
        finally:
            os._exit(0)
    return pid


def test_an_idle_vcpu_is_sampled_ever_less_often_and_not_looked_at_in_between(children, monkeypatch):
    samples: list[int] = []
    looks: list[int] = []
    real_sample, real_cpu_ns = VcpuProcess.sample, VcpuProcess.cpu_ns

    def counting_sample(self):
        samples.append(self.pid)
        looks.append(self.pid)
        return real_sample(self)

    def counting_cpu_ns(self):
        looks.append(self.pid)
        return real_cpu_ns(self)

    monkeypatch.setattr(VcpuProcess, "sample", counting_sample)
    monkeypatch.setattr(VcpuProcess, "cpu_ns", counting_cpu_ns)
    sched = CreditScheduler([0, 1])
    pids = [sleeper() for _ in range(20)]
    children.extend(pids)
    for domid, pid in enumerate(pids, start=1):
        sched.add_domain(domid, f"d{domid}", 1)
        sched.vcpu_up(domid, 0, pid)
    time.sleep(0.05)  # every child is asleep before the first tick
    for _ in range(64):
        sched.tick()
    # Backing off 1, 2, 4 ... 32 ticks: 7 or 8 looks each in 64 ticks, not 64; once it is known
    # idle, a look is a read of its CPU clock, and a full sample (/proc/PID/stat) only if that moved.
    assert all(6 <= looks.count(pid) <= 9 for pid in pids), [looks.count(pid) for pid in pids]
    assert all(samples.count(pid) <= 3 for pid in pids), [samples.count(pid) for pid in pids]
    # Between samples a dozing vCPU is not even in the set a tick walks.
    assert len(sched._watch) < len(pids)
    sched.pause(1)
    sched.unpause(1)
    before = samples.count(pids[0])
    sched.tick()
    assert samples.count(pids[0]) == before + 1  # unpaused: sampled at the next tick again
    sched.close()


def test_credit_domain_states_are_what_the_vcpus_say_after_every_tick(children):
    """``domain_states`` keeps a dozing domain's answer; after every tick, pause, unpause and death it
    equals what the domain's vCPUs say now (``list``'s State and Time(s) stay true)."""
    sched = CreditScheduler([0, 1])
    pids = [spinner(), sleeper(), sleeper(), spinner(1)]
    children.extend(pids)
    domids = list(range(1, len(pids) + 1))
    for domid, pid in zip(domids, pids):
        sched.add_domain(domid, f"d{domid}", 1)
        sched.vcpu_up(domid, 0, pid)

    def truth() -> list[tuple[float | None, bool | None, bool | None]]:
        return [sched._domain_state(sched.core.domains.get(domid)) for domid in domids]

    for round_ in range(80):
        time.sleep(max(0.0, (sched.next_tick() - time.monotonic_ns()) / 1e9))
        sched.tick()
        if round_ == 20:
            sched.pause(2)
        if round_ == 40:
            sched.unpause(2)
        if round_ == 50:
            os.kill(pids[3], signal.SIGKILL)
            os.waitpid(pids[3], 0)
            children.remove(pids[3])
        assert sched.domain_states(domids) == truth(), round_
        assert sched.domain_info(1)["cpu_time"] == truth()[0][0]
    assert sched.domain_states(domids)[0][0] > 0.3  # the spinner's time kept growing
    assert sched.domain_states([99]) == [(None, None, None)]


@pytest.mark.parametrize("scheduler", [CreditScheduler, NullScheduler])
def test_vcpu_down_takes_a_vcpu_away_and_keeps_its_time(children, scheduler):
    """VCPUOP_down (``vcpu-set``): the vCPU is offline, its time stays the domain's, it is not left stopped."""
    sched = scheduler([0, 1])
    sched.add_domain(1, "d1", 3)  # maxvcpus 3, two brought up
    for vcpu in (0, 1):
        pid = spinner(cpu=vcpu)
        children.append(pid)
        sched.vcpu_up(1, vcpu, pid)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        time.sleep(0.01)
        if sched.next_tick() is not None and time.monotonic_ns() >= sched.next_tick():
            sched.tick()
    assert sched.online_vcpus(1) == 2
    before = sched.domain_time(1)
    sched.vcpu_down(1, 1)
    sched.vcpu_down(1, 2)  # never up: nothing to do
    rows = sched.vcpu_list(1)
    assert [row["online"] for row in rows] == [True, False, False]
    assert sched.online_vcpus(1) == 1
    assert sched.domain_time(1) >= before > 0
    assert open(f"/proc/{children[1]}/stat").read().split(")")[1].split()[0] != "T"
    sched.tick()  # the scheduler goes on without it
    pid = spinner(cpu=1)
    children.append(pid)
    sched.vcpu_up(1, 1, pid)  # and takes it back as a new process
    assert [row["online"] for row in sched.vcpu_list(1)] == [True, True, False]
    sched.close()
