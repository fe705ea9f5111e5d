"""The credit scheduler's policy (CreditCore), driven step by step with a simulated clock.

A small simulated host stands in for Linux: in each 10 ms tick, the vCPU current
on a pCPU gets that pCPU's time if it wants it; vCPUs the core leaves free (idle
in their event loop) get time only when their workload has some to do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from xenlike.hypervisor.sched import Sample
from xenlike.hypervisor.sched.credit import BOOST, OVER, UNDER, CreditCore, CreditVcpu

TICK = 10_000_000  # ns
MS = 1_000_000


@dataclass
class Guest:
    """A simulated vCPU process: a CPU hog, or an I/O guest with bursts of work."""

    v: CreditVcpu
    hog: bool = True
    work_ns: int = 0  # work left to do (I/O guest)
    cpu_ns: int = 0


class SimHost:
    def __init__(self, pcpus=(0,)) -> None:
        self.core = CreditCore(pcpus, now=0)
        self.now = 0
        self.guests: list[Guest] = []

    def add(self, domid: int, weight: int = 256, cap: int = 0, cpus=None, hog: bool = True) -> Guest:
        self.core.add_domain(domid, weight, cap)
        v = self.core.add_vcpu(domid, 0, cpus if cpus is not None else self.core.pcpus)
        guest = Guest(v, hog=hog)
        self.guests.append(guest)
        return guest

    def wants(self, guest: Guest) -> bool:
        return guest.hog or guest.work_ns > 0

    def step(self) -> None:
        """One tick: hand out CPU time as Linux would, then let the core decide."""
        users: dict[int, list[Guest]] = {}
        for guest in self.guests:
            run, cpus = self.core.desired(guest.v)
            if run and self.wants(guest):
                cpu = guest.v.running_on if guest.v.running_on is not None else min(cpus)
                users.setdefault(cpu, []).append(guest)
        for sharing in users.values():
            for guest in sharing:
                used = TICK // len(sharing) if guest.hog else min(guest.work_ns, TICK // len(sharing))
                guest.cpu_ns += used
                if not guest.hog:
                    guest.work_ns -= used
        self.now += TICK
        samples = {}
        for guest in self.guests:
            run, _ = self.core.desired(guest.v)
            samples[guest.v] = Sample(guest.cpu_ns, run and self.wants(guest), 0)
        self.core.tick(self.now, samples)
        self.core.take_changed()

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds * 1e9) // TICK):
            self.step()

    def shares(self, guests: list[Guest], since: dict[Guest, int] | None = None) -> list[float]:
        used = [g.cpu_ns - (since or {}).get(id(g), 0) for g in guests]
        return [u / sum(used) for u in used]


def relative_error(actual: list[float], expected: list[float]) -> float:
    return max(abs(a - e) / e for a, e in zip(actual, expected))


def marks(guests: list[Guest]) -> dict[int, int]:
    return {id(g): g.cpu_ns for g in guests}


def test_cpu_hogs_on_one_pcpu_share_it_by_weight():
    host = SimHost()
    guests = [host.add(1, 256), host.add(2, 512), host.add(3, 1024)]
    host.run(3)  # from equal credits, shares take a second or two to settle
    mark = marks(guests)
    host.run(10)
    assert relative_error(host.shares(guests, mark), [1 / 7, 2 / 7, 4 / 7]) < 0.02
    assert sum(g.cpu_ns for g in guests) == pytest.approx(13e9, rel=0.01)  # the pCPU never idles


def test_pinned_hogs_share_their_pcpu_by_weight_while_another_pcpu_is_free():
    host = SimHost(pcpus=(0, 1))
    pinned = [host.add(1, 256, cpus={0}), host.add(2, 512, cpus={0}), host.add(3, 1024, cpus={0})]
    alone = host.add(4, 256, cpus={1})
    host.run(3)
    mark = marks(pinned)
    host.run(10)
    assert relative_error(host.shares(pinned, mark), [1 / 7, 2 / 7, 4 / 7]) < 0.02
    assert alone.cpu_ns == pytest.approx(13e9, rel=0.01)


def test_equal_weights_get_equal_shares_across_two_pcpus():
    host = SimHost(pcpus=(0, 1))
    guests = [host.add(domid) for domid in range(1, 6)]
    host.run(10)
    assert relative_error(host.shares(guests), [0.2] * 5) < 0.03
    assert sum(g.cpu_ns for g in guests) == pytest.approx(20e9, rel=0.01)  # both pCPUs busy


def test_a_capped_hog_is_parked_once_it_spent_its_cap():
    host = SimHost()
    capped = host.add(1, cap=25)
    parked_seen = False
    for _ in range(300):
        host.step()
        if capped.v.parked:
            parked_seen = True
            assert host.core.desired(capped.v) == (False, None)  # kept stopped
    assert parked_seen
    assert capped.cpu_ns / host.now == pytest.approx(0.25, abs=0.02)


def test_a_cap_holds_next_to_a_competitor_and_the_rest_goes_to_it():
    host = SimHost()
    capped, other = host.add(1, cap=25), host.add(2)
    host.run(10)
    assert capped.cpu_ns / host.now == pytest.approx(0.25, abs=0.02)
    assert (capped.cpu_ns + other.cpu_ns) / host.now == pytest.approx(1.0, abs=0.01)


def test_a_waking_vcpu_is_boosted_and_preempts_a_hog():
    host = SimHost()
    hog = host.add(1)
    io = host.add(2, hog=False)
    host.run(0.2)
    assert hog.v.running_on == 0 and io.v.blocked
    assert host.core.desired(io.v) == (True, frozenset({0}))  # idle: left free to wake at once

    io.work_ns = 25 * MS  # an event arrives: work for more than a tick
    host.step()  # Linux ran it next to the hog; the tick sees it still runnable
    assert io.v.pri == BOOST
    assert io.v.running_on == 0 and hog.v.on_runq  # it preempted the UNDER hog
    assert host.core.desired(hog.v) == (False, None)

    host.step()  # found running at a tick: it uses real CPU, so no longer boosted
    assert io.v.pri in (UNDER, OVER)


def test_an_io_guest_stays_boosted_when_it_wakes_often_and_works_little():
    host = SimHost()
    host.add(1)
    host.add(2)
    io = host.add(3, hog=False)
    boosted = 0
    for i in range(300):
        if i % 5 == 0:
            io.work_ns = 2 * MS
        host.step()
        boosted += io.v.pri == BOOST or io.v.blocked
    assert boosted > 250  # never demoted for long: it never holds a pCPU at a tick


def test_under_vcpus_run_before_over_ones():
    host = SimHost()
    host.add(1), host.add(2), host.add(3)
    host.run(1)  # each has run and earns credit
    waiting = [v for v in host.core.pcpus[0].runq]
    assert len(waiting) == 2 and all(v.active for v in waiting)
    over, under = waiting
    over.credit, under.credit = -250, 100
    host.core.acct()  # csched_acct recomputes priorities and re-sorts the runqueue
    assert over.pri == OVER and under.pri == UNDER
    assert host.core.pcpus[0].runq[0] is under  # UNDER moved ahead of OVER, though queued later


def test_runqueue_is_boost_under_over_and_first_come_first_served_within_each():
    core = CreditCore([0])
    vcpus = []
    for domid, pri in enumerate([OVER, UNDER, BOOST, UNDER, OVER, BOOST], start=1):
        core.add_domain(domid, 256)
        v = core.add_vcpu(domid, 0, [0])
        v.pri = pri
        core._runq_insert(v)  # __runq_insert
        vcpus.append(v)
    assert [v.key[0] for v in core.pcpus[0].runq] == [3, 6, 2, 4, 1, 5]


def test_a_paused_domain_never_runs_and_comes_back_on_unpause():
    host = SimHost()
    busy = host.add(1)
    paused = host.add(2)
    host.core.pause(2)
    before = paused.cpu_ns
    for _ in range(50):
        host.step()
        assert host.core.desired(paused.v) == (False, None)
        assert host.core.pcpus[0].curr is not paused.v
    assert paused.cpu_ns == before
    host.core.unpause(2)
    assert host.core.desired(paused.v)[0]  # continued, free until the next tick sees it
    host.run(1)
    assert paused.cpu_ns > before
    assert busy.cpu_ns > 0


def test_a_vcpu_whose_process_is_gone_leaves_its_pcpu_to_others():
    host = SimHost()
    a, b = host.add(1), host.add(2)
    host.run(0.1)
    victim = a if a.v.running_on == 0 else b
    survivor = b if victim is a else a
    host.core.tick(host.now + TICK, {victim.v: None, survivor.v: Sample(survivor.cpu_ns, True, 0)})
    assert victim.v.dead and not victim.v.on_runq and victim.v.running_on is None
    assert host.core.pcpus[0].curr is survivor.v
    assert host.core.desired(victim.v) == (False, None)


def test_an_idle_pcpu_steals_waiting_work():
    host = SimHost(pcpus=(0, 1))
    a, b = host.add(1, cpus={0, 1}), host.add(2, cpus={0, 1})
    host.run(0.5)
    assert {a.v.running_on, b.v.running_on} == {0, 1}
    assert a.cpu_ns == pytest.approx(b.cpu_ns, rel=0.05)


def test_pinning_moves_a_vcpu_to_its_new_pcpu():
    host = SimHost(pcpus=(0, 1))
    a = host.add(1, cpus={0})
    host.run(0.1)
    assert a.v.running_on == 0
    host.core.set_affinity(a.v, {1})
    assert host.core.desired(a.v) == (False, None) or a.v.processor == 1
    host.run(0.1)
    assert a.v.running_on == 1 and host.core.desired(a.v) == (True, frozenset({1}))


def test_weight_changes_take_effect():
    host = SimHost()
    a, b = host.add(1), host.add(2)
    host.run(2)
    host.core.set_weight(2, 768)
    host.run(2)
    mark = marks([a, b])
    host.run(10)
    assert relative_error(host.shares([a, b], mark), [0.25, 0.75]) < 0.03


def test_credits_burn_at_ten_per_millisecond_with_the_remainder_carried():
    core = CreditCore([0])
    core.add_domain(1, 256)
    v = core.add_vcpu(1, 0, [0])
    core._burn(v, 1_550_000)  # 15.5 credits
    assert (v.credit, v.residual) == (-15, 500_000)
    core._burn(v, 50_000)  # the half credit completes
    assert (v.credit, v.residual) == (-16, 0)


def test_accounting_hands_out_three_hundred_credits_per_pcpu_and_period_by_weight():
    core = CreditCore([0])
    for domid, weight in ((1, 256), (2, 768)):
        core.add_domain(domid, weight)
        core._acct_start(core.add_vcpu(domid, 0, [0]))
    core.acct()
    credits = [core.domains[d].vcpus[0].credit for d in (1, 2)]
    assert credits == [75, 225]


def test_a_host_at_rest_takes_every_uncapped_vcpu_off_the_active_lists_with_its_debt_forgiven():
    host = SimHost()
    free, capped = host.add(1, hog=False), host.add(2, cap=50, hog=False)
    for guest in (free, capped):
        guest.work_ns = 40 * MS  # a burst, then idle
    host.run(0.1)
    assert free.v.active and capped.v.active and free.v.blocked
    free.v.credit = -250  # what thousands of active domains' shares would have left it
    assert not host.core.rest()  # the capped domain keeps its debt, which enforces its cap
    assert not free.v.active and free.v.credit == 0 and free.v.pri == UNDER
    assert capped.v.active and host.core.active_domains == [capped.v.domain]
    free.work_ns = 20 * MS  # it wakes, UNDER: boosted, it runs at once
    host.step()
    assert free.v.pri == BOOST
    host.run(0.05)
    assert free.cpu_ns == 60 * MS


def test_a_host_with_a_parked_vcpu_does_not_rest():
    host = SimHost()
    hog = host.add(1, cap=10)
    host.run(1)
    assert hog.v.parked or hog.v.credit < 0
    hog.hog = False
    while not hog.v.parked:
        host.step()
    assert not host.core.rest() and hog.v.active
