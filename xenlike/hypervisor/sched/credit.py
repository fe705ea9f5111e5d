"""The credit scheduler, after Xen's ``xen/common/sched/credit.c`` (credit1).

Two layers:

:class:`CreditCore` is the policy and nothing else: runqueues, credits,
priorities, parking. It makes no system call and reads no clock; it is fed the
time and what the kernel said about each vCPU process (:class:`Sample`), and it
answers what each vCPU should be doing (:meth:`CreditCore.desired`). Tests drive
it step by step with a fake clock.

:class:`CreditScheduler` is the plugin the hypervisor loads: every tick it
samples the vCPU processes that may have run, feeds the core, and carries out
the core's decisions with ``SIGSTOP``/``SIGCONT`` and ``sched_setaffinity``.

How the policy maps onto Linux processes:

* Each pCPU has a runqueue ordered BOOST, UNDER, OVER (``__runq_insert``) and one
  current vCPU, the only one of its runqueue let run (pinned to that CPU). The
  others wait, stopped. A current vCPU keeps its pCPU for a 30 ms timeslice, or
  until a vCPU of higher priority waits there (``__runq_tickle``).
* A 10 ms tick (``csched_tick``) debits every vCPU the CPU time it really used,
  10 credits per millisecond (``burn_credits``), resets a BOOSTed vCPU found
  running to UNDER (``csched_unit_acct``), and notices vCPUs that blocked.
* Every 30 ms the accounting (``csched_acct``) shares ``300 x pCPUs`` credits
  among active domains by weight, bounded by the cap, and sets each vCPU UNDER
  or OVER; a capped vCPU deep in debt is parked (stopped) until its credit is
  positive again.
* A vCPU blocked in its event loop is idle: it is not stopped, and may run on
  any CPU of its hard affinity, so when an event wakes it Linux runs it at once.
  If it is still runnable at the next tick it is woken in the scheduler's sense
  (``csched_unit_wake``): BOOSTed if it was UNDER, so it pre-empts CPU hogs.
* A pCPU whose best local vCPU is OVER, or that has none, steals a better one
  from another pCPU's runqueue (``csched_load_balance``).

Known differences from Xen:

* blocking is seen at the next tick rather than at once, so a pCPU can idle up
  to 10 ms after its vCPU blocks; an idle vCPU that wakes shares its CPU with the
  current one under Linux's own scheduler until a tick samples it. A vCPU that
  stays idle is sampled every 1, 2, 4... ticks, at most every 320 ms (longer
  when more than 640 are idle, so a tick looks at about 20 of them), and a tick
  does not even look at it in between; when it is due, its CPU clock is read
  first and only one whose clock moved is sampled in full (``/proc/PID/stat``),
  so that thousands of idle guests cost the hypervisor little; one that used
  CPU since its last sample is sampled every tick again. Idle vCPUs looked at
  every 16 ticks or less often are looked at together, on every 16th tick;
* a host with nothing to schedule (no vCPU current, waiting or possibly
  running: every one dozing, stopped or gone) takes every vCPU off the active
  lists at once, its debt forgiven, where Xen's accounting would do it over the
  periods it sleeps through (``CreditCore.rest``; not a capped domain's, nor
  while one is parked), and
  suspends its tick until the next look at idle vCPUs, as Xen's
  ``csched_tick_suspend`` stops an idle pCPU's ticker;
* the accounting runs once per *affinity group* (the pCPUs that active domains'
  hard affinities connect), as Xen runs it once per cpupool; with default
  affinities there is one group and it is Xen's accounting exactly;
* a vCPU with more than one timeslice of credit is taken off the active list and
  its credit halved only if it is idle. Xen does it to any vCPU; for a CPU hog
  that runs or waits its turn that throws away credit it is owed (three hogs
  weighted 1:2:4 on one pCPU then get shares off by about 3 %). A running or
  waiting vCPU's credit is bounded at two timeslices instead.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from xenlike.hypervisor.sched import Sample, SchedDomain, SchedError, Scheduler, VcpuProcess
from xenlike.kernel import trace
from xenlike.public.trace import Event, TraceClass

__all__ = ["CreditCore", "CreditVcpu", "CreditScheduler", "BOOST", "UNDER", "OVER", "IDLE"]

# Priorities (credit.c CSCHED_PRI_*).
BOOST, UNDER, OVER, IDLE = 0, -1, -2, -64
PRIORITY_NAMES = {BOOST: "BOOST", UNDER: "UNDER", OVER: "OVER", IDLE: "IDLE"}

CREDITS_PER_MSEC = 10  # CSCHED_CREDITS_PER_MSEC
DEFAULT_TSLICE_MS = 30  # CSCHED_DEFAULT_TSLICE_MS
TICKS_PER_TSLICE = 3  # CSCHED_TICKS_PER_TSLICE
DEFAULT_RATELIMIT_US = 1000  # SCHED_DEFAULT_RATELIMIT_US
NS_PER_MS = 1_000_000
IDLE_SAMPLE_MAX_TICKS = 32  # an idle vCPU is sampled at least every 32 ticks ...
IDLE_LOOKS_PER_TICK = 20  # ... unless more than 32 x 20 are idle: then a tick looks at about 20 of them
DOZE_BATCH_TICKS = 16  # idle vCPUs looked at every 16 ticks or less seldom are looked at together, on multiples of 16
QUIET_MAX_TICKS = 50  # a quiet host with no idle vCPU to look at still ticks every 50 ticks (0.5 s)


@dataclass(eq=False)
class CreditVcpu:
    """``struct csched_unit``: one vCPU's credit, priority and place."""

    domain: CreditDomain
    vcpu: int
    hard: frozenset[int]  # hard affinity
    processor: int  # the pCPU whose runqueue it belongs to (``sched_unit_master``)
    credit: int = 0
    residual: int = 0  # ns*credits not yet whole credits (``svc->residual``)
    pri: int = UNDER
    active: bool = False  # on its domain's active list (earns credit)
    parked: bool = False  # CSCHED_FLAG_UNIT_PARKED: over its cap, kept stopped
    paused: bool = False  # its domain is paused
    blocked: bool = True  # idle in its event loop: not on a runqueue, free to wake
    running_on: int | None = None  # the pCPU it is current on
    on_runq: bool = False
    boost_ok: bool = False  # set once seen blocked: credit.c boosts wake-ups, not insertions
    dead: bool = False  # its process is gone
    cpu_ns: int = 0  # CPU time of the process at the last sample
    time_ns: int = 0  # CPU time accounted to it
    last_cpu: int | None = None  # the CPU the kernel last ran it on

    @property
    def key(self) -> tuple[int, int]:
        return (self.domain.domid, self.vcpu)

    def __repr__(self) -> str:
        return (
            f"<d{self.domain.domid}v{self.vcpu} {PRIORITY_NAMES.get(self.pri, self.pri)} credit={self.credit}"
            f"{' running' if self.running_on is not None else ''}{' runq' if self.on_runq else ''}"
            f"{' blocked' if self.blocked else ''}{' parked' if self.parked else ''}{' paused' if self.paused else ''}>"
        )


@dataclass(eq=False)
class CreditDomain:
    """``struct csched_dom``."""

    domid: int
    weight: int
    cap: int
    vcpus: list[CreditVcpu] = field(default_factory=list)
    active: list[CreditVcpu] = field(default_factory=list)  # ``active_unit``


@dataclass(eq=False)
class Pcpu:
    """``struct csched_pcpu``: a runqueue and the vCPU current on it."""

    cpu: int
    runq: list[CreditVcpu] = field(default_factory=list)
    curr: CreditVcpu | None = None
    slice_start: int = 0  # when ``curr`` was (re)scheduled


class CreditCore:
    """The credit policy, clock-injected and free of system calls.

    Feed it with :meth:`tick`: the time, and a :class:`Sample` of every vCPU whose
    process may have run since the last tick (those :meth:`desired` lets run, and
    those stopped since). Read back :meth:`desired` for the vCPUs that
    :meth:`take_changed` returns.
    """

    def __init__(
        self,
        pcpus: Sequence[int],
        now: int = 0,
        tslice_ms: int = DEFAULT_TSLICE_MS,
        ratelimit_us: int = DEFAULT_RATELIMIT_US,
    ) -> None:
        self.pcpus: dict[int, Pcpu] = {cpu: Pcpu(cpu) for cpu in sorted(pcpus)}
        # __csched_set_tslice
        self.tslice_ms = tslice_ms
        self.tslice = tslice_ms * NS_PER_MS
        self.tick_period = self.tslice // TICKS_PER_TSLICE
        self.credits_per_tslice = CREDITS_PER_MSEC * tslice_ms
        self.credit = self.credits_per_tslice * len(self.pcpus)
        self.ratelimit_us = ratelimit_us
        self.ratelimit = ratelimit_us * 1000
        self.weight = 0  # sum of the weights of active vCPUs
        self.credit_balance = 0
        self._balances: dict[frozenset[int], int] = {}  # each affinity group's credit balance
        self.domains: dict[int, CreditDomain] = {}
        self.active_domains: list[CreditDomain] = []  # ``active_sdom``
        self.next_acct = now + self.tslice
        self.balance_bias = 0
        self._changed: set[CreditVcpu] = set()

    # -- domains and vCPUs ----------------------------------------------------------

    def add_domain(self, domid: int, weight: int, cap: int = 0) -> CreditDomain:
        domain = CreditDomain(domid, weight, cap)
        self.domains[domid] = domain
        return domain

    def remove_domain(self, domid: int) -> None:
        domain = self.domains.pop(domid, None)
        if domain is None:
            return
        for vcpu in list(domain.vcpus):
            self.remove_vcpu(vcpu)

    def add_vcpu(self, domid: int, vcpu: int, hard: Iterable[int], paused: bool = False) -> CreditVcpu:
        """``csched_unit_insert``: a new vCPU, running free until the next tick sees it."""
        domain = self.domains[domid]
        affinity = frozenset(hard) & frozenset(self.pcpus)
        v = CreditVcpu(domain, vcpu, affinity, min(affinity), paused=paused)
        v.processor = self._pick_cpu(v)
        domain.vcpus.append(v)
        self._changed.add(v)
        return v

    def remove_vcpu(self, v: CreditVcpu) -> None:
        self.gone(v)
        if v in v.domain.vcpus:
            v.domain.vcpus.remove(v)

    def gone(self, v: CreditVcpu) -> None:
        """Its process ended: it leaves runqueues and accounting for good."""
        if v.dead:
            return
        self._unqueue(v)
        if v.active:
            self._acct_stop(v)
        v.dead = True
        v.blocked = False
        self._changed.add(v)

    def set_weight(self, domid: int, weight: int) -> None:
        """``csched_dom_cntl`` putinfo (weight)."""
        domain = self.domains[domid]
        self.weight += (weight - domain.weight) * len(domain.active)
        domain.weight = weight

    def set_cap(self, domid: int, cap: int) -> None:
        self.domains[domid].cap = cap

    def set_affinity(self, v: CreditVcpu, hard: Iterable[int]) -> None:
        """A new hard affinity; a vCPU on a pCPU outside it moves (``vcpu_set_hard_affinity``)."""
        v.hard = frozenset(hard) & frozenset(self.pcpus)
        if v.processor not in v.hard:
            requeue = v.running_on is not None or v.on_runq
            self._unqueue(v)
            v.processor = self._pick_cpu(v)
            if requeue:
                self._runq_insert(v)
        self._changed.add(v)

    def pause(self, domid: int) -> None:
        """The domain's processes were stopped by the hypervisor."""
        for v in self.domains[domid].vcpus:
            self._unqueue(v)
            v.paused = True
            self._changed.add(v)

    def freeze(self, v: CreditVcpu) -> None:
        """One vCPU stopped by the hypervisor (an injected fault) while its domain runs."""
        self._unqueue(v)
        v.paused = True
        self._changed.add(v)

    def thaw(self, v: CreditVcpu) -> None:
        """A frozen vCPU is free again: it runs as one just woken."""
        v.paused = False
        if not v.dead and not v.parked:
            v.blocked = True
            v.boost_ok = True
        self._changed.add(v)

    def unpause(self, domid: int) -> None:
        """The domain's processes were continued: they run free until the next tick."""
        for v in self.domains[domid].vcpus:
            v.paused = False
            if not v.dead and not v.parked:
                v.blocked = True
                v.boost_ok = True
            self._changed.add(v)

    # -- what the mechanism asks ----------------------------------------------------

    def desired(self, v: CreditVcpu) -> tuple[bool, frozenset[int] | None]:
        """(let it run, the CPUs it may run on); None for CPUs means leave them as they are."""
        if v.dead or v.paused or v.parked:
            return False, None
        if v.running_on is not None:
            return True, frozenset((v.running_on,))
        if v.blocked:
            return True, v.hard
        return False, None

    def pending_changes(self) -> set[CreditVcpu]:
        """The vCPUs :meth:`take_changed` would return now (a look; they stay for it)."""
        return self._changed

    def take_changed(self) -> set[CreditVcpu]:
        """The vCPUs whose :meth:`desired` may have changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    # -- the tick ---------------------------------------------------------------------

    def tick(self, now: int, samples: dict[CreditVcpu, Sample | None]) -> None:
        """One 10 ms tick at ``now`` (ns), with the samples of the vCPUs that could have run.

        A sample of None means the process is gone.
        """
        for v, sample in samples.items():
            if not self.charge(v, sample) or sample is None:  # charge() is False for a vCPU with no sample
                continue
            if v.paused or v.parked:
                continue
            if v.running_on is not None:
                if sample.runnable:
                    self._unit_acct(v)
                else:
                    self._sleep(v)
            elif v.blocked:
                if sample.runnable:
                    self.wake(v, sample.cpu)
                else:
                    v.boost_ok = True  # seen blocked: its next wake is a real wake-up
        if now >= self.next_acct:
            self.acct()
            self.next_acct += self.tslice
            if self.next_acct <= now:
                self.next_acct = now + self.tslice
        for pcpu in self.pcpus.values():
            self._schedule(pcpu, now)

    def charge(self, v: CreditVcpu, sample: Sample | None) -> bool:
        """Account the CPU time a sample shows since the last one; False if the vCPU is gone."""
        if v.dead:
            return False
        if sample is None:
            self.gone(v)
            return False
        used = max(0, sample.cpu_ns - v.cpu_ns)
        v.cpu_ns = max(v.cpu_ns, sample.cpu_ns)
        v.time_ns += used
        v.last_cpu = sample.cpu
        self._burn(v, used)
        return True

    def wake(self, v: CreditVcpu, cpu: int | None = None) -> None:
        """``csched_unit_wake``: a blocked vCPU wants to run; BOOST it if it is UNDER."""
        if v.dead or v.paused or v.parked or v.on_runq or v.running_on is not None:
            return
        v.blocked = False
        if v.pri == UNDER and v.boost_ok:
            v.pri = BOOST
        v.boost_ok = True
        if cpu is not None and cpu in v.hard:
            v.processor = cpu  # where Linux chose to wake it
        elif v.processor not in v.hard:
            v.processor = self._pick_cpu(v)
        self._runq_insert(v)
        self._changed.add(v)

    def _unit_acct(self, v: CreditVcpu) -> None:
        """``csched_unit_acct``: the current vCPU was found running at a tick."""
        if v.pri == BOOST:
            v.pri = UNDER  # it consumes a non-negligible amount of CPU: no longer boosted
        if not v.active:
            self._acct_start(v)

    def _sleep(self, v: CreditVcpu) -> None:
        """``csched_unit_sleep``: the current vCPU blocked; its pCPU reschedules."""
        self._unqueue(v)
        v.blocked = True
        self._changed.add(v)

    def _burn(self, v: CreditVcpu, used_ns: int) -> None:
        """``burn_credits``: 10 credits per millisecond of CPU, the remainder carried."""
        if used_ns <= 0:
            return
        value = used_ns * CREDITS_PER_MSEC + v.residual
        credits, v.residual = divmod(value, NS_PER_MS)
        v.credit -= credits

    # -- accounting (csched_acct) ------------------------------------------------------

    def acct(self) -> None:
        """``csched_acct`` for every affinity group: share each period's credits by weight.

        Xen runs the accounting once per cpupool, over ``300 x pCPUs`` credits.
        Here the pCPUs that active domains' hard affinities connect form a group
        that is accounted as a pool of its own: three domains pinned to pCPU 0
        share pCPU 0's 300 credits by weight, instead of being handed pCPU 1's
        credits too, which they cannot spend and which would leave them all UNDER.
        With default affinities there is one group: Xen's accounting exactly.
        """
        balances: dict[frozenset[int], int] = {}
        for cpus, domains in self._affinity_groups():
            balances[cpus] = self._acct_group(domains, len(cpus) * self.credits_per_tslice, self._balances.get(cpus, 0))
        self._balances = balances
        self.credit_balance = sum(balances.values())
        for pcpu in self.pcpus.values():
            pcpu.runq.sort(key=lambda v: -v.pri)  # csched_runq_sort: UNDER before OVER, order kept

    def _affinity_groups(self) -> list[tuple[frozenset[int], list[CreditDomain]]]:
        """Active domains grouped by connected hard affinities, each with its pCPUs."""
        parent = {cpu: cpu for cpu in self.pcpus}

        def find(cpu: int) -> int:
            while parent[cpu] != cpu:
                parent[cpu] = parent[parent[cpu]]
                cpu = parent[cpu]
            return cpu

        spans: dict[CreditDomain, frozenset[int]] = {}
        for domain in self.active_domains:
            span = frozenset().union(*(v.hard for v in domain.active)) or frozenset(self.pcpus)
            spans[domain] = span
            first = find(min(span))
            for cpu in span:
                parent[find(cpu)] = first
        groups: dict[int, list[CreditDomain]] = {}
        for domain in self.active_domains:
            groups.setdefault(find(min(spans[domain])), []).append(domain)
        return [(frozenset(c for c in self.pcpus if find(c) == root), domains) for root, domains in groups.items()]

    def _acct_group(self, domains: list[CreditDomain], credit: int, balance: int) -> int:
        """The body of ``csched_acct`` over one group; returns the group's new credit balance."""
        weight_total = sum(domain.weight * len(domain.active) for domain in domains)
        credit_total = credit
        if balance < 0:  # converge the balance towards 0
            credit_total -= balance
        if weight_total == 0:
            return 0
        weight_left = weight_total
        credit_balance = 0
        credit_xtra = False
        credit_cap = 0
        for domain in domains:
            active = len(domain.active)
            weight_left -= domain.weight * active
            # At most, a domain can use credits to run all its active vCPUs for one
            # period; it may earn more only while the balance is negative.
            credit_peak = active * self.credits_per_tslice
            if balance < 0:
                credit_peak += _ceil_div(-balance * domain.weight * active, weight_total)
            if domain.cap:
                credit_cap = _ceil_div(domain.cap * self.credits_per_tslice, 100)
                credit_peak = min(credit_peak, credit_cap)
                credit_cap = _ceil_div(credit_cap, active)
            credit_fair = _ceil_div(credit_total * domain.weight * active, weight_total)
            if credit_fair < credit_peak:
                credit_xtra = True
            else:
                if weight_left:
                    # Give other domains a chance at the credits this one cannot use.
                    credit_total += _ceil_div((credit_fair - credit_peak) * weight_total, weight_left)
                if credit_xtra:
                    # Keep domains with extra credits at the head, to offer them more next time.
                    self.active_domains.remove(domain)
                    self.active_domains.insert(0, domain)
                credit_fair = credit_peak
            credit_fair = _ceil_div(credit_fair, active)
            for v in list(domain.active):
                v.credit += credit_fair
                if v.credit < 0:
                    v.pri = OVER
                    if domain.cap and v.credit < -credit_cap and not v.parked:
                        self._park(v)
                    if v.credit < -self.credits_per_tslice:
                        v.credit = -self.credits_per_tslice
                else:
                    v.pri = UNDER
                    if v.parked:
                        self._unpark(v)
                    if v.credit > self.credits_per_tslice:
                        if v.on_runq or v.running_on is not None:
                            # Running or waiting for a pCPU is not idling: it keeps what it
                            # is owed, up to two timeslices (Xen halves it; see the module doc).
                            v.credit = min(v.credit, 2 * self.credits_per_tslice)
                        else:
                            # Upper bound: it stops earning, and starts again a little ahead.
                            self._acct_stop(v)
                            v.credit //= 2
                credit_balance += v.credit
        return credit_balance

    def _acct_start(self, v: CreditVcpu) -> None:
        if v.active:
            return
        v.active = True
        domain = v.domain
        domain.active.append(v)
        self.weight += domain.weight
        if len(domain.active) == 1:
            self.active_domains.insert(0, domain)

    def _acct_stop(self, v: CreditVcpu) -> None:
        if not v.active:
            return
        v.active = False
        domain = v.domain
        domain.active.remove(v)
        self.weight -= domain.weight
        if not domain.active and domain in self.active_domains:
            self.active_domains.remove(domain)

    def rest(self) -> bool:
        """Nothing runs or waits: take every vCPU off the active lists, as ``csched_acct`` would once each
        had slept until its credit passed a timeslice's; its debt is forgiven (what the periods it sleeps
        through would pay back), so a vCPU that wakes is UNDER. Otherwise thousands of idle vCPUs would
        stay active, each a share of every period's credits, while the tick is suspended. A capped domain's
        vCPUs stay (their debt is what enforces the cap) and so does every vCPU while one is parked (it
        waits for credit, which only the accounting gives); returns whether every vCPU left."""
        if any(v.parked for domain in self.active_domains for v in domain.active):
            return False
        for domain in [domain for domain in self.active_domains if not domain.cap]:
            for v in list(domain.active):
                v.credit = max(v.credit, 0)
                v.pri = UNDER
                self._acct_stop(v)
        return not self.active_domains

    def _park(self, v: CreditVcpu) -> None:
        """Over its cap: kept off every CPU until its credit is positive (``sched_unit_pause_nosync``)."""
        self._unqueue(v)
        v.parked = True
        self._changed.add(v)

    def _unpark(self, v: CreditVcpu) -> None:
        v.parked = False
        if not v.dead and not v.paused and not v.blocked:
            self._runq_insert(v)  # not a wake: no BOOST
        self._changed.add(v)

    # -- runqueues (csched_schedule, __runq_insert, csched_load_balance) ---------------

    def _schedule(self, pcpu: Pcpu, now: int) -> None:
        """``csched_schedule`` for one pCPU, at a tick."""
        cur = pcpu.curr
        if cur is not None:
            ran = now - pcpu.slice_start
            if ran < self.ratelimit:
                return
            if ran < self.tslice and not (pcpu.runq and pcpu.runq[0].pri > cur.pri):
                return  # within its timeslice, and nobody of higher priority waits
            pcpu.curr = None
            cur.running_on = None
            self._runq_insert(cur)
        snext = pcpu.runq[0] if pcpu.runq else None
        if snext is None or snext.pri <= OVER:
            stolen = self._load_balance(pcpu, snext.pri if snext is not None else IDLE)
            if stolen is not None:
                snext = stolen
            elif snext is not None:
                pcpu.runq.pop(0)
                snext.on_runq = False
        else:
            pcpu.runq.pop(0)
            snext.on_runq = False
        if snext is None:
            return
        pcpu.curr = snext
        snext.running_on = pcpu.cpu
        snext.processor = pcpu.cpu
        pcpu.slice_start = now
        if snext is not cur:
            self._changed.add(snext)
            if cur is not None:
                self._changed.add(cur)

    def _load_balance(self, pcpu: Pcpu, pri: int) -> CreditVcpu | None:
        """``csched_load_balance``: steal a waiting vCPU of higher priority than ``pri``."""
        peers = [p for p in self.pcpus.values() if p is not pcpu]
        if not peers:
            return None
        self.balance_bias = (self.balance_bias + 1) % len(peers)
        for peer in peers[self.balance_bias :] + peers[: self.balance_bias]:
            for candidate in peer.runq:
                if candidate.pri <= pri:
                    break  # nothing better further down this runqueue
                if pcpu.cpu in candidate.hard:
                    peer.runq.remove(candidate)
                    candidate.on_runq = False
                    candidate.processor = pcpu.cpu
                    return candidate
        return None

    def _runq_insert(self, v: CreditVcpu) -> None:
        """``__runq_insert``: after every vCPU of the same or higher priority."""
        runq = self.pcpus[v.processor].runq
        index = len(runq)
        for i, other in enumerate(runq):
            if v.pri > other.pri:
                index = i
                break
        runq.insert(index, v)
        v.on_runq = True
        v.blocked = False

    def _unqueue(self, v: CreditVcpu) -> None:
        """Take a vCPU off its pCPU and its runqueue, wherever it is."""
        if v.running_on is not None:
            pcpu = self.pcpus[v.running_on]
            if pcpu.curr is v:
                pcpu.curr = None
            v.running_on = None
        if v.on_runq:
            runq = self.pcpus[v.processor].runq
            if v in runq:
                runq.remove(v)
            v.on_runq = False

    def _pick_cpu(self, v: CreditVcpu) -> int:
        """``csched_res_pick``: an idle pCPU of its hard affinity if any, else the least loaded."""
        choices = sorted(v.hard) or sorted(self.pcpus)

        def load(cpu: int) -> tuple[int, int]:
            pcpu = self.pcpus[cpu]
            return (len(pcpu.runq) + (pcpu.curr is not None), cpu != v.processor)

        return min(choices, key=load)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------------
# The plugin: the core driven by real processes.


class CreditScheduler(Scheduler):
    """Xen's credit scheduler over vCPU processes (the default)."""

    name = "credit"
    description = "Xen's credit1: weights, caps, BOOST; SIGSTOP/SIGCONT and affinity on vCPU processes"

    def __init__(self, pcpus: Sequence[int], clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(pcpus, clock)
        now = clock()
        self.core = CreditCore(self.pcpus, now)
        self._next_tick = now + self.core.tick_period
        self._vcpus: dict[tuple[int, int], CreditVcpu] = {}
        self._procs: dict[CreditVcpu, VcpuProcess] = {}
        self._watch: set[CreditVcpu] = set()  # processes that may have used CPU since the last tick
        self._ticks = 0
        self._idle_due: dict[CreditVcpu, tuple[int, int]] = {}  # idle vCPUs: (next tick to sample, interval)
        # Idle vCPUs left out of _watch until their next sample, by that tick: a tick then
        # costs the same with 200 idle guests as with none.
        self._dozing: dict[int, set[CreditVcpu]] = {}
        self._frozen: set[CreditVcpu] = set()  # vCPUs an injected fault keeps stopped
        # domain_states' answers, by domid, and the domains whose vCPUs were sampled, charged or changed
        # since: a domain whose vCPUs all doze keeps its answer, so `list` costs no vCPU walk for it.
        self._states: dict[int, tuple[float | None, bool | None, bool | None]] = {}
        self._touched: set[int] = set()

    # -- domains and vCPUs ----------------------------------------------------------

    def _domain_added(self, domain: SchedDomain) -> None:
        self.core.add_domain(domain.domid, domain.weight, domain.cap)

    def _domain_removed(self, domain: SchedDomain) -> None:
        core_domain = self.core.domains.get(domain.domid)
        for v in list(core_domain.vcpus if core_domain else []):
            self._release(v)
            self._vcpus.pop(v.key, None)
        self.core.remove_domain(domain.domid)
        self._states.pop(domain.domid, None)

    def vcpu_up(self, domid: int, vcpu: int, pid: int) -> None:
        domain = self._domain(domid)
        old = self._vcpus.get((domid, vcpu))
        if old is not None:  # a new process for this vCPU: the old one's CPU time stays counted
            self._release(old)
            self.core.gone(old)
        proc = self._open(domain, vcpu, pid)
        if proc is None:
            return
        v = self.core.add_vcpu(domid, vcpu, self._hard_affinity(domain, vcpu), paused=domain.paused)
        self._vcpus[(domid, vcpu)] = v
        self._procs[v] = proc
        proc.stopped = domain.paused
        if not domain.paused:
            self._watch.add(v)
        self._apply()

    def vcpu_down(self, domid: int, vcpu: int) -> None:
        self._domain(domid)
        v = self._vcpus.get((domid, vcpu))
        if v is None or v.dead:
            return
        proc = self._procs.get(v)
        if proc is not None:
            self.core.charge(v, proc.sample())  # its last time counts before it leaves
        self._release(v)
        self.core.gone(v)
        self._apply()

    def pause(self, domid: int) -> None:
        super().pause(domid)
        for v in self.core.domains[domid].vcpus:
            proc = self._procs.get(v)
            if proc is not None:
                proc.stopped = True  # the hypervisor stopped the whole process group
                self.core.charge(v, proc.sample())  # its time is final while it is paused
                self._touched.add(domid)
                self._watch.discard(v)
                self._wake_dozer(v)
        self.core.pause(domid)
        self._apply()

    def unpause(self, domid: int) -> None:
        super().unpause(domid)
        for v in self.core.domains[domid].vcpus:
            proc = self._procs.get(v)
            if proc is not None:
                proc.stopped = False
                self._watch.add(v)
        self.core.unpause(domid)
        for v in self.core.domains[domid].vcpus:
            if v in self._frozen:
                self.core.freeze(v)  # the group's SIGCONT woke it: stopped again below
        self._apply()  # parked vCPUs stay stopped

    def freeze_vcpu(self, domid: int, vcpu: int, frozen: bool) -> None:
        domain = self._domain(domid)
        v = self._vcpus.get((domid, vcpu))
        if v is None or v.dead:
            raise SchedError(errno.ESRCH, f"{domain.label} has no vCPU {vcpu} running")
        if frozen:
            self._frozen.add(v)
            if not domain.paused:
                self.core.freeze(v)
        else:
            self._frozen.discard(v)
            if not domain.paused:
                self.core.thaw(v)
        self._apply()

    # -- time -----------------------------------------------------------------------

    def next_tick(self) -> int:
        """The next 10 ms tick; on a quiet host (:meth:`_quiet`) the tick is suspended, as Xen's
        ``csched_tick_suspend`` stops an idle pCPU's ticker, until the next look at idle vCPUs is due."""
        if not self._quiet():
            return self._next_tick
        due = min(self._dozing, default=self._ticks + QUIET_MAX_TICKS)
        return self._next_tick + max(0, due - self._ticks - 1) * self.core.tick_period

    def _quiet(self) -> bool:
        """Nothing for a tick to do: the host is idle (:meth:`_idle`) and no vCPU is on an active list
        (earning credit, which the accounting hands out)."""
        return not self.core.active_domains and self._idle()

    def _idle(self) -> bool:
        """No vCPU that may have run is watched, none is current on a pCPU or waits on a runqueue, no
        decision is pending and no vCPU is kept frozen."""
        if self._watch or self._frozen or self.core.pending_changes():
            return False
        return all(pcpu.curr is None and not pcpu.runq for pcpu in self.core.pcpus.values())

    def tick(self) -> None:
        now = self.clock()
        # Ticks the host was quiet through (or late for) count as passed: idle vCPUs' intervals are in ticks.
        self._ticks += 1 + max(0, (now - self._next_tick) // self.core.tick_period)
        due: set[CreditVcpu] = set()
        for when in [when for when in self._dozing if when <= self._ticks]:
            due |= self._dozing.pop(when)
        self._check_dozers(due)
        samples: dict[CreditVcpu, Sample | None] = {}
        for v in list(self._watch):
            proc = self._procs.get(v)
            if proc is None:
                self._watch.discard(v)
                continue
            samples[v] = proc.sample()
            if proc.stopped:
                self._watch.discard(v)  # sampled once after it stopped: it cannot run now
        before = {v: v.cpu_ns for v in samples}
        priorities = {v: v.pri for v in samples} if trace.mask[0] & TraceClass.SCHED else None
        self.core.tick(now, samples)
        self._touched.update(v.domain.domid for v in samples)
        if priorities is not None:
            for v, pri in priorities.items():
                if v.pri != pri:
                    _trace_vcpu(Event.SCHED_PRIO, v, was=PRIORITY_NAMES.get(pri, str(pri)))
        for v, sample in samples.items():
            if v.blocked and not v.dead and sample is not None:
                # An idle vCPU that stays idle is sampled every 1, 2, 4... ticks (at most 320 ms):
                # it uses no CPU, and if it wakes Linux runs it at once anyway.
                previous = self._idle_due.get(v)
                interval = (
                    1 if previous is None or sample.cpu_ns > before[v] else min(2 * previous[1], self._idle_max_ticks())
                )
                if interval > 1 and v in self._watch:
                    self._doze(v, interval)
                else:
                    self._idle_due[v] = (self._ticks + interval, interval)
            else:
                self._idle_due.pop(v, None)
        self._apply()
        if self.core.active_domains and self._idle():
            self.core.rest()  # the tick can then be suspended
        self._next_tick += self.core.tick_period
        if self._next_tick <= now:
            self._next_tick = now + self.core.tick_period

    def _apply(self) -> None:
        """Make each changed vCPU's process do what the core decided."""
        changed = self.core.take_changed()
        self._touched.update(v.domain.domid for v in changed)
        for v in changed:
            proc = self._procs.get(v)
            if proc is None:
                continue
            if v.dead:
                self._release(v)
                continue
            run, cpus = self.core.desired(v)
            traced = trace.mask[0] & TraceClass.SCHED
            if run:
                if cpus is not None:
                    proc.set_affinity(cpus)
                    if traced:
                        _trace_vcpu(Event.SCHED_MIGRATE, v, pcpus=sorted(cpus))
                if proc.stopped:
                    proc.cont()
                    if traced:
                        _trace_vcpu(Event.SCHED_CONT, v)
                if not self._is_dozing(v):
                    self._watch.add(v)
            elif not proc.stopped:
                proc.stop()
                if traced:
                    _trace_vcpu(Event.SCHED_STOP, v, parked=v.parked, paused=v.paused)
                self._wake_dozer(v)
                self._watch.add(v)  # for one more sample
            if proc.gone:
                self.core.gone(v)
                self._release(v)

    def _check_dozers(self, due: set[CreditVcpu]) -> None:
        """The idle vCPUs due a look this tick: one whose CPU clock has not moved since its last sample
        is still idle and dozes on (its interval doubling, up to :meth:`_idle_max_ticks`); any other is
        sampled in full this tick. Reading a process's CPU clock is one system call and no ``/proc``
        read, so a tick's cost with thousands of idle guests is a clock read for each one due.

        A vCPU woken but still waiting for a CPU has not moved its clock: Linux runs it soon, and the
        next look finds it.
        """
        most = self._idle_max_ticks()
        procs, idle_due, watch = self._procs, self._idle_due, self._watch
        for v in due:
            proc = procs.get(v)
            cpu_ns = proc.cpu_ns() if proc is not None and not v.dead else None
            if cpu_ns is None or cpu_ns != v.cpu_ns:
                watch.add(v)
                continue
            self._doze(v, min(2 * idle_due.get(v, (0, 1))[1], most))

    def _idle_max_ticks(self) -> int:
        """The longest an idle vCPU goes unlooked at: IDLE_SAMPLE_MAX_TICKS, or longer with so many idle
        that a tick would look at more than IDLE_LOOKS_PER_TICK; so idle guests cost the hypervisor the
        same with 2,000 as with 640, and a guest that wakes is noticed later (1 s at 2,000)."""
        return max(IDLE_SAMPLE_MAX_TICKS, len(self._idle_due) // IDLE_LOOKS_PER_TICK)

    def _doze(self, v: CreditVcpu, interval: int) -> None:
        """Leave an idle vCPU unsampled for ``interval`` ticks; from DOZE_BATCH_TICKS on, until the next
        multiple of it, so that the looks at idle vCPUs come together and a quiet host wakes seldom."""
        due = self._ticks + interval
        if interval >= DOZE_BATCH_TICKS:
            due = -(-due // DOZE_BATCH_TICKS) * DOZE_BATCH_TICKS
        self._idle_due[v] = (due, interval)
        self._watch.discard(v)
        self._dozing.setdefault(due, set()).add(v)

    def _is_dozing(self, v: CreditVcpu) -> bool:
        due, _interval = self._idle_due.get(v, (-1, 0))
        return v in self._dozing.get(due, ())

    def _wake_dozer(self, v: CreditVcpu) -> None:
        """Take a vCPU off the dozing list (it is stopped, paused or gone)."""
        due, _interval = self._idle_due.get(v, (-1, 0))
        sleepers = self._dozing.get(due)
        if sleepers is not None and v in sleepers:
            sleepers.discard(v)
            if not sleepers:
                del self._dozing[due]

    def _release(self, v: CreditVcpu) -> None:
        self._frozen.discard(v)
        self._wake_dozer(v)
        self._idle_due.pop(v, None)
        proc = self._procs.pop(v, None)
        if proc is not None:
            if proc.stopped and not proc.gone and not v.paused:
                proc.cont()  # never leave a process stopped behind
            proc.close()
        self._watch.discard(v)

    # -- parameters -------------------------------------------------------------------

    def _weight_changed(self, domain: SchedDomain, weight: int) -> None:
        self.core.set_weight(domain.domid, weight)

    def adjust(self, domid: int, weight: int | None = None, cap: int | None = None) -> dict:
        result = super().adjust(domid, weight, cap)
        self.core.set_cap(domid, self.domains[domid].cap)
        return result

    def _affinity_changed(self, domain: SchedDomain, vcpu: int, cpus: frozenset[int]) -> None:
        v = self._vcpus.get((domain.domid, vcpu))
        if v is not None and not v.dead:
            self.core.set_affinity(v, cpus)
            self._apply()

    def settings(self) -> dict:
        return {
            "sched": self.name,
            "tslice_ms": self.core.tslice_ms,
            "ratelimit_us": self.core.ratelimit_us,
            "migration_delay_us": 0,
        }

    # -- reports -----------------------------------------------------------------------

    def vcpu_list(self, domid: int) -> list[dict]:
        domain = self._domain(domid)
        rows = []
        for index in range(domain.nr_vcpus):
            v = self._vcpus.get((domid, index))
            live = v if v is not None and not v.dead else None
            rows.append(
                {
                    "vcpu": index,
                    "online": live is not None,
                    "cpu": self._shown_cpu(live) if live is not None else None,
                    "running": live is not None and live.running_on is not None,
                    "blocked": live is not None and live.blocked and not live.paused,
                    "time": (v.time_ns / 1e9) if v is not None else 0.0,
                    "hard": sorted(v.hard if v is not None else self._hard_affinity(domain, index)),
                    "soft": list(range(self.host_cpus)),
                    "credit": v.credit if v is not None else 0,
                    "priority": PRIORITY_NAMES.get(v.pri, str(v.pri)) if v is not None else "",
                    "parked": bool(v and v.parked),
                }
            )
        return rows

    @staticmethod
    def _shown_cpu(v: CreditVcpu) -> int:
        """The pCPU it runs on, or waits for; for an idle vCPU, the one it last ran on."""
        if v.running_on is not None:
            return v.running_on
        if v.blocked and v.last_cpu is not None and v.last_cpu in v.hard:
            return v.last_cpu
        return v.processor

    def domain_time(self, domid: int) -> float:
        core_domain = self.core.domains.get(domid)
        if core_domain is None:
            return 0.0
        return sum(v.time_ns for v in core_domain.vcpus) / 1e9

    def online_vcpus(self, domid: int) -> int:
        core_domain = self.core.domains.get(domid)
        return 0 if core_domain is None else sum(not v.dead for v in core_domain.vcpus)

    def domain_info(self, domid: int) -> dict:
        cpu_time, running, blocked = self.domain_states([domid])[0]
        if cpu_time is None:
            return {}
        return {"cpu_time": cpu_time, "running": running, "blocked": blocked}

    def domain_states(self, domids: Sequence[int]) -> list[tuple[float | None, bool | None, bool | None]]:
        # A vCPU's time and run state change only where it is sampled, charged or changed (the core's
        # take_changed, and what it holds for the next one): any other domain's answer is the last one.
        touched = self._touched
        touched.update(v.domain.domid for v in self.core.pending_changes())
        domains, cached = self.core.domains, self._states
        states: list[tuple[float | None, bool | None, bool | None]] = []
        for domid in domids:
            state = cached.get(domid)
            if state is None or domid in touched:
                state = self._domain_state(domains.get(domid))
                if state[0] is not None:
                    cached[domid] = state
                touched.discard(domid)
            states.append(state)
        return states

    @staticmethod
    def _domain_state(core_domain: CreditDomain | None) -> tuple[float | None, bool | None, bool | None]:
        """(cpu_time, running, blocked) of one domain, from its vCPUs; Nones for a domain not scheduled."""
        if core_domain is None:
            return None, None, None
        time_ns, running, blocked, live = 0, False, True, False
        for v in core_domain.vcpus:
            time_ns += v.time_ns
            if not v.dead:
                live = True
                running = running or v.running_on is not None
                blocked = blocked and v.blocked and not v.paused
        return time_ns / 1e9, running, live and blocked


def _trace_vcpu(event: Event, v: CreditVcpu, **fields: object) -> None:
    """A decision about ``v``, with its priority and credit as the core left them."""
    trace.emit(
        event,
        {"prio": PRIORITY_NAMES.get(v.pri, str(v.pri)), "credit": v.credit, "pcpu": v.processor, **fields},
        domid=v.domain.domid,
        vcpu=v.vcpu,
    )
