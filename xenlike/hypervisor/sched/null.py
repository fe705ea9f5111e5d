"""The null scheduler: placement is left to Linux (Xen's ``xen/common/sched/null.c`` in spirit).

Xen's null scheduler gives each vCPU a pCPU of its own and never preempts it.
Here that job is already done by Linux: every vCPU process may run on the pCPUs
of its hard affinity (``cpus=``, ``vcpu-pin``) and Linux's scheduler does the
rest. Nothing is stopped or continued; weight and cap are kept (``sched-credit``
shows them) but have no effect. CPU time is read from the kernel when asked.

Useful as a baseline against which to measure the credit scheduler, and as the
smallest example of a :class:`~xenlike.hypervisor.sched.Scheduler`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from xenlike.hypervisor.sched import SchedDomain, Scheduler, VcpuProcess

__all__ = ["NullScheduler"]


class _Vcpu:
    __slots__ = ("proc", "hard", "time_ns", "cpu_ns", "cpu", "runnable")

    def __init__(self, proc: VcpuProcess, hard: frozenset[int]) -> None:
        self.proc = proc
        self.hard = hard
        self.time_ns = 0
        self.cpu_ns = 0
        self.cpu: int | None = None
        self.runnable = False

    def refresh(self) -> None:
        sample = self.proc.sample()
        if sample is None:
            return
        self.time_ns += max(0, sample.cpu_ns - self.cpu_ns)
        self.cpu_ns = max(self.cpu_ns, sample.cpu_ns)
        self.cpu = sample.cpu
        self.runnable = sample.runnable


class NullScheduler(Scheduler):
    """Affinity only; Linux decides who runs."""

    name = "null"
    description = "leaves placement to Linux: hard affinity only, nothing stopped"

    def __init__(self, pcpus: Sequence[int], clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(pcpus, clock)
        self._vcpus: dict[tuple[int, int], _Vcpu] = {}

    def vcpu_up(self, domid: int, vcpu: int, pid: int) -> None:
        domain = self._domain(domid)
        old = self._vcpus.pop((domid, vcpu), None)
        if old is not None:
            old.refresh()
            domain.time_ns_gone += old.time_ns
            old.proc.close()
        proc = self._open(domain, vcpu, pid)
        if proc is None:
            return
        entry = _Vcpu(proc, self._hard_affinity(domain, vcpu))
        entry.proc.set_affinity(entry.hard)
        self._vcpus[(domid, vcpu)] = entry

    def vcpu_down(self, domid: int, vcpu: int) -> None:
        domain = self._domain(domid)
        entry = self._vcpus.pop((domid, vcpu), None)
        if entry is not None:
            entry.refresh()
            domain.time_ns_gone += entry.time_ns
            entry.proc.close()

    def _domain_removed(self, domain: SchedDomain) -> None:
        for key in [k for k in self._vcpus if k[0] == domain.domid]:
            self._vcpus.pop(key).proc.close()

    def _affinity_changed(self, domain: SchedDomain, vcpu: int, cpus: frozenset[int]) -> None:
        entry = self._vcpus.get((domain.domid, vcpu))
        if entry is not None:
            entry.hard = cpus
            entry.proc.set_affinity(cpus)

    def vcpu_list(self, domid: int) -> list[dict]:
        domain = self._domain(domid)
        rows = []
        for index in range(domain.nr_vcpus):
            entry = self._vcpus.get((domid, index))
            if entry is not None:
                entry.refresh()
            live = entry if entry is not None and not entry.proc.gone else None
            rows.append(
                {
                    "vcpu": index,
                    "online": live is not None,
                    "cpu": live.cpu if live is not None else None,
                    "running": live is not None and live.runnable and not domain.paused,
                    "blocked": live is not None and not live.runnable and not domain.paused,
                    "time": entry.time_ns / 1e9 if entry is not None else 0.0,
                    "hard": sorted(entry.hard if entry is not None else self._hard_affinity(domain, index)),
                    "soft": list(range(self.host_cpus)),
                }
            )
        return rows

    def online_vcpus(self, domid: int) -> int:
        domain = self.domains.get(domid)
        if domain is None:
            return 0
        online = 0
        for index in range(domain.nr_vcpus):  # the domain's own vCPUs, not every one on the host
            entry = self._vcpus.get((domid, index))
            if entry is not None:
                entry.refresh()
                online += not entry.proc.gone
        return online

    def domain_time(self, domid: int) -> float:
        domain = self.domains.get(domid)
        if domain is None:
            return 0.0
        total = domain.time_ns_gone
        for (owner, _), entry in self._vcpus.items():
            if owner == domid:
                entry.refresh()
                total += entry.time_ns
        return total / 1e9
