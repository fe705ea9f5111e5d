"""Schedulers: the plugin interface, the vCPU-process mechanism, and the loader.

Xen keeps scheduling policy behind ``struct scheduler`` (``xen/common/sched/private.h``):
the core calls ``insert_unit``, ``sleep``, ``wake``, ``do_schedule``, ``adjust``
(``csched_dom_cntl``), ``adjust_affinity`` and friends, and each policy
(credit, credit2, null, rtds) fills them in. xenlike does the same with
:class:`Scheduler`: the hypervisor tells it which domains and vCPU processes
exist, when a domain is paused, and calls :meth:`Scheduler.tick` from its main
loop whenever :meth:`Scheduler.next_tick` comes due.

A vCPU is a Linux process. A policy acts on it only through :class:`VcpuProcess`:

* its run state (R: running or runnable) and the CPU it last ran on come from
  ``/proc/PID/stat``, opened for each sample rather than held (a host of 2,000
  guests cannot spare the fd each), and believed only while its start time is
  the one read at open, so a recycled pid is never taken for the vCPU; a tick
  samples only the vCPUs that may have run, so the path lookup is paid for few;
* its CPU time is the kernel's own accounting, in nanoseconds: the process's CPU
  clock (``clock_gettime`` on the clock id ``MAKE_PROCESS_CPUCLOCK(pid,
  CPUCLOCK_SCHED)``), the ``sum_exec_runtime`` of all its threads, living and
  exited. ``/proc/PID/stat`` reports the same sum in 10 ms clock ticks, too
  coarse for a 10 ms tick;
* a vCPU is kept off the CPUs with ``SIGSTOP`` and let back with ``SIGCONT``,
  sent through a pidfd so a recycled pid can never be signalled;
* placement is ``sched_setaffinity`` of every thread of the process.

A process that dies between two ticks makes these calls fail; they report it
(``sample()`` returns None) instead of raising, so a vCPU killed in the middle of
a tick never takes the hypervisor down.

Policies are found in the entry-point group ``xenlike.schedulers``
(``[project.entry-points."xenlike.schedulers"] credit = "xenlike.hypervisor.sched.credit:CreditScheduler"``)
and chosen with ``xenlike up --sched NAME``.
"""

from __future__ import annotations

import abc
import errno
import importlib.metadata
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "ENTRY_POINT_GROUP",
    "DEFAULT_WEIGHT",
    "MAX_WEIGHT",
    "SchedError",
    "Sample",
    "VcpuProcess",
    "SchedDomain",
    "Scheduler",
    "available_schedulers",
    "load_scheduler",
    "cpu_ranges",
    "process_cpu_clock",
]

ENTRY_POINT_GROUP = "xenlike.schedulers"
DEFAULT_WEIGHT = 256  # CSCHED_DEFAULT_WEIGHT
MAX_WEIGHT = 65535
NS_PER_CLOCK_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
# proc(5)'s /proc/PID/stat fields, counted from the state (field 3) as 0.
_STARTTIME = 22 - 3
_PROCESSOR = 39 - 3

log = logging.getLogger("xenlike.hypervisor.sched")


class SchedError(Exception):
    """A scheduling request refused: an errno and a sentence naming the value."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


# ------------------------------------------------------------------------------------
# The mechanism: one vCPU process.


def process_cpu_clock(pid: int) -> int:
    """The clock id of a process's CPU time (``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``)."""
    return ((~pid) << 3) | 2


@dataclass(frozen=True)
class Sample:
    """What the kernel says about a vCPU process at one instant."""

    cpu_ns: int  # CPU time used so far by every thread of the process
    runnable: bool  # running or waiting for a CPU (state R), as opposed to blocked or stopped
    cpu: int  # the CPU it last ran on


class VcpuProcess:
    """A vCPU's process as a scheduler drives it (signals, affinity, CPU time).

    Opening holds a pidfd, bound to this process even after its pid is reused,
    and notes the process's start time, which tells its ``/proc/PID/stat`` from a
    later process's of the same pid. :attr:`stopped` and :attr:`cpus` are what this
    object last asked of the kernel, so callers only make the calls that change
    something.
    """

    __slots__ = ("pid", "label", "_pidfd", "_stat_path", "_start_time", "_clock", "stopped", "cpus", "gone")

    def __init__(self, pid: int, label: str = "") -> None:
        self.pid = pid
        self.label = label or f"pid {pid}"  # how logs name it: "d3 (web) vCPU 0"
        self._clock = process_cpu_clock(pid)
        self._stat_path = f"/proc/{pid}/stat"
        self._pidfd = os.pidfd_open(pid)
        # Read after the pidfd is open: a stat of this start time is this process's, whatever came before.
        fields = self._stat_fields()
        if fields is None:
            os.close(self._pidfd)
            raise ProcessLookupError(errno.ESRCH, f"process {pid} has exited")
        self._start_time = fields[_STARTTIME]
        self.stopped = False
        self.cpus: frozenset[int] | None = None
        self.gone = False

    def _stat_fields(self) -> list[bytes] | None:
        """The fields of ``/proc/PID/stat`` after ``comm`` (state first); None if there is no live process."""
        try:
            fd = os.open(self._stat_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, 1024)
        except OSError:
            return None
        finally:
            os.close(fd)
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        end = data.rfind(b")")
        fields = data[end + 2 :].split() if end > 0 else []
        if len(fields) <= _PROCESSOR or fields[0] in (b"Z", b"X", b"x"):
            return None
        return fields

    def sample(self) -> Sample | None:
        """CPU time (ns), run state and CPU; None once the process is gone."""
        if self.gone:
            return None
        fields = self._stat_fields()
        if fields is None or fields[_STARTTIME] != self._start_time:
            self.gone = True
            return None
        try:
            cpu_ns = time.clock_gettime_ns(self._clock)
        except OSError:  # exited since the read above
            cpu_ns = (int(fields[11]) + int(fields[12])) * NS_PER_CLOCK_TICK
        return Sample(cpu_ns, fields[0] == b"R", int(fields[_PROCESSOR]))

    def cpu_ns(self) -> int | None:
        """CPU time (ns) alone, from the process's CPU clock (no ``/proc`` read); None if it cannot be read."""
        if self.gone:
            return None
        try:
            return time.clock_gettime_ns(self._clock)
        except OSError:
            return None

    def stop(self) -> bool:
        """SIGSTOP: the process leaves the CPUs at once. False if it is gone."""
        self.stopped = True
        return self._signal(signal.SIGSTOP)

    def cont(self) -> bool:
        """SIGCONT. False if it is gone."""
        self.stopped = False
        return self._signal(signal.SIGCONT)

    def set_affinity(self, cpus: Iterable[int]) -> bool:
        """Let every thread of the process run only on ``cpus``. False if it is gone.

        ``sched_setaffinity(pid)`` moves one thread only: a guest's event-loop
        thread left behind would run elsewhere and every event would cross CPUs.
        Threads started later inherit the affinity of the thread that starts them.
        """
        chosen = frozenset(cpus)
        if chosen == self.cpus or self.gone:
            return not self.gone
        try:
            threads = [int(tid) for tid in os.listdir(f"/proc/{self.pid}/task")]
        except OSError:
            threads = [self.pid]
        for tid in threads:
            try:
                os.sched_setaffinity(tid, chosen)
            except ProcessLookupError:
                if tid == self.pid:
                    self.gone = True
                    return False
            except OSError as exc:
                log.warning("%s: cannot set its affinity to %s: %s", self.label, cpu_ranges(chosen), exc.strerror)
                return True
        self.cpus = chosen
        return True

    def close(self) -> None:
        if self._pidfd >= 0:
            try:
                os.close(self._pidfd)
            except OSError:
                pass
        self._pidfd = -1
        self.gone = True

    def _signal(self, sig: int) -> bool:
        if self.gone:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except OSError:
            self.gone = True
            return False
        return True


# ------------------------------------------------------------------------------------
# The plugin interface.


@dataclass
class SchedDomain:
    """A domain as every scheduler knows it (Xen's ``struct domain`` + ``sched_priv``)."""

    domid: int
    label: str
    nr_vcpus: int
    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    affinity: frozenset[int] = frozenset()  # hard affinity given to each vCPU that comes up
    paused: bool = False
    time_ns_gone: int = 0  # CPU time of vCPU processes that ended
    pins: dict[int, frozenset[int]] = field(default_factory=dict)  # vcpu-pin of vCPUs not up yet


class Scheduler(abc.ABC):
    """A scheduling policy for the hypervisor's vCPU processes.

    Contract with the hypervisor (``xenlike/hypervisor/core.py``):

    * :meth:`add_domain` when a domain is created (``nr_vcpus`` its ``maxvcpus``),
      :meth:`remove_domain` when it is destroyed; :meth:`vcpu_up` for each of its
      vCPU processes once it exists (vCPU 0 at start, others when the guest brings
      them up), :meth:`vcpu_down` when the guest takes one offline (``vcpu-set``);
    * :meth:`pause` after the hypervisor stopped the domain's processes, and
      :meth:`unpause` after it continued them: a policy never lets a paused
      domain run, and re-stops, on unpause, what it wants stopped;
    * :meth:`tick` whenever ``time.monotonic_ns() >= next_tick()``;
    * :meth:`adjust`, :meth:`pin`, :meth:`vcpu_list`, :meth:`domain_info` answer
      the scheduling domctls; they raise :class:`SchedError` for a bad value.

    Every method is called from the hypervisor's single thread.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, pcpus: Sequence[int], clock: Callable[[], int] = time.monotonic_ns) -> None:
        if not pcpus:
            raise SchedError(errno.EINVAL, "a scheduler needs at least one pCPU")
        self.pcpus: tuple[int, ...] = tuple(sorted(set(pcpus)))
        self.host_cpus = max(os.cpu_count() or 1, max(self.pcpus) + 1)
        self.clock = clock
        self.domains: dict[int, SchedDomain] = {}

    # -- domains --------------------------------------------------------------------

    def add_domain(
        self,
        domid: int,
        label: str,
        nr_vcpus: int,
        weight: int = DEFAULT_WEIGHT,
        cap: int = 0,
        cpus: Iterable[int] | None = None,
    ) -> None:
        """A new domain (``sched_init_domain``); checks weight, cap and cpus first."""
        self.check_weight(weight)
        self.check_cap(label, nr_vcpus, cap)
        affinity = self.check_cpus(cpus) if cpus is not None else frozenset(self.pcpus)
        self.domains[domid] = SchedDomain(domid, label, nr_vcpus, weight, cap, affinity)
        self._domain_added(self.domains[domid])

    def remove_domain(self, domid: int) -> None:
        """The domain is destroyed: forget it and every vCPU it had."""
        domain = self.domains.pop(domid, None)
        if domain is not None:
            self._domain_removed(domain)

    @abc.abstractmethod
    def vcpu_up(self, domid: int, vcpu: int, pid: int) -> None:
        """Schedule vCPU ``vcpu`` of ``domid``, which is process ``pid``."""

    @abc.abstractmethod
    def vcpu_down(self, domid: int, vcpu: int) -> None:
        """vCPU ``vcpu`` of ``domid`` goes offline (``VCPUOP_down``): it is never run again.

        Its process is about to exit; the CPU time it used stays counted to the
        domain. A vCPU that is not up is left as it is.
        """

    def pause(self, domid: int) -> None:
        """The hypervisor has SIGSTOPped the domain's processes (``domain_pause``)."""
        self._domain(domid).paused = True

    def unpause(self, domid: int) -> None:
        """The hypervisor has SIGCONTed the domain's processes (``domain_unpause``)."""
        self._domain(domid).paused = False

    def freeze_vcpu(self, domid: int, vcpu: int, frozen: bool) -> None:
        """Keep one vCPU stopped (an injected fault) until thawed, its domain running; SchedError if this
        scheduler cannot (it must own the vCPUs' stops and continues to keep one stopped)."""
        raise SchedError(
            errno.EOPNOTSUPP, f"the {self.name} scheduler cannot freeze one vCPU: use the credit scheduler"
        )

    # -- time -----------------------------------------------------------------------

    def next_tick(self) -> int | None:
        """When :meth:`tick` is next due (``time.monotonic_ns`` clock), or None: never."""
        return None

    def tick(self) -> None:
        """Periodic work: accounting and scheduling decisions."""

    # -- parameters (domctl scheduler_op, vcpuaffinity) ------------------------------

    def adjust(self, domid: int, weight: int | None = None, cap: int | None = None) -> dict:
        """``XEN_DOMCTL_SCHEDOP_putinfo``: set weight and/or cap; returns the new values."""
        domain = self._domain(domid)
        if weight is not None:
            self.check_weight(weight)
        if cap is not None:
            self.check_cap(domain.label, domain.nr_vcpus, cap)
        if weight is not None and weight != domain.weight:
            self._weight_changed(domain, weight)
            domain.weight = weight
        if cap is not None and cap != domain.cap:
            domain.cap = cap
        return self.params(domid)

    def params(self, domid: int) -> dict:
        """``XEN_DOMCTL_SCHEDOP_getinfo``: weight and cap."""
        domain = self._domain(domid)
        return {"weight": domain.weight, "cap": domain.cap}

    def pin(self, domid: int, vcpu: int | None, cpus: Iterable[int]) -> None:
        """Set the hard affinity of one vCPU, or of all (``vcpu`` None)."""
        domain = self._domain(domid)
        chosen = self.check_cpus(cpus)
        if vcpu is not None and not 0 <= vcpu < domain.nr_vcpus:
            raise SchedError(
                errno.EINVAL, f"vCPU {vcpu} does not exist: {domain.label} has vCPUs 0-{domain.nr_vcpus - 1}"
            )
        targets = range(domain.nr_vcpus) if vcpu is None else [vcpu]
        for index in targets:
            domain.pins[index] = chosen
            self._affinity_changed(domain, index, chosen)

    @abc.abstractmethod
    def vcpu_list(self, domid: int) -> list[dict]:
        """One dict per vCPU: vcpu, online, cpu, running, blocked, time (s), hard, soft."""

    @abc.abstractmethod
    def domain_time(self, domid: int) -> float:
        """CPU seconds the domain's vCPUs have used, as this scheduler accounted them."""

    def domain_info(self, domid: int) -> dict:
        """What ``getdomaininfo`` takes from the scheduler: at least ``cpu_time``."""
        return {"cpu_time": self.domain_time(domid)}

    def online_vcpus(self, domid: int) -> int:
        """How many of the domain's vCPUs are up (``xl list``'s VCPUs); asked only of one with ``maxvcpus`` > 1."""
        return sum(1 for row in self.vcpu_list(domid) if row["online"]) if domid in self.domains else 0

    def domain_states(self, domids: Sequence[int]) -> list[tuple[float | None, bool | None, bool | None]]:
        """For each domain of ``domids``, (``cpu_time``, ``running``, ``blocked``) of its :meth:`domain_info`,
        None for what it lacks: what ``getdomaininfolist`` asks of every domain at once, so a policy that
        tracks them answers in one pass."""
        states: list[tuple[float | None, bool | None, bool | None]] = []
        for domid in domids:
            info = self.domain_info(domid)
            states.append((info.get("cpu_time"), info.get("running"), info.get("blocked")))
        return states

    def settings(self) -> dict:
        """The pool's parameters, as ``xl sched-credit`` prints them."""
        return {"sched": self.name, "tslice_ms": 0, "ratelimit_us": 0, "migration_delay_us": 0}

    def close(self) -> None:
        """The hypervisor is stopping: release every process handle."""
        for domid in list(self.domains):
            self.remove_domain(domid)

    # -- checks -----------------------------------------------------------------------

    @staticmethod
    def check_weight(weight: object) -> int:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise SchedError(errno.EINVAL, f"weight {weight!r} is out of range: expected 1 to {MAX_WEIGHT}")
        return weight

    @staticmethod
    def check_cap(label: str, nr_vcpus: int, cap: object) -> int:
        most = 100 * nr_vcpus
        if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= most:
            raise SchedError(
                errno.EINVAL,
                f"cap {cap!r} is out of range for {label}: expected 0 (no cap) to {most} "
                f"(100 per vCPU, {nr_vcpus} vCPU{'s' if nr_vcpus > 1 else ''})",
            )
        return cap

    def check_cpus(self, cpus: Iterable[int]) -> frozenset[int]:
        chosen = frozenset(cpus)
        for cpu in sorted(chosen):
            if isinstance(cpu, bool) or not isinstance(cpu, int) or cpu not in self.pcpus:
                raise SchedError(
                    errno.EINVAL, f"pCPU {cpu!r} does not exist: this host schedules pCPUs {cpu_ranges(self.pcpus)}"
                )
        if not chosen:
            raise SchedError(errno.EINVAL, "an affinity needs at least one pCPU")
        return chosen

    # -- for policies ---------------------------------------------------------------

    def _domain(self, domid: int) -> SchedDomain:
        domain = self.domains.get(domid)
        if domain is None:
            raise SchedError(errno.ESRCH, f"no domain with id {domid} is scheduled")
        return domain

    def _open(self, domain: SchedDomain, vcpu: int, pid: int) -> VcpuProcess | None:
        """A handle on a vCPU's process, or None (logged) if it has already gone."""
        try:
            return VcpuProcess(pid, f"{domain.label} vCPU {vcpu}")
        except OSError as exc:
            log.warning(
                "%s: vCPU %d (pid %d) is gone before it could be scheduled: %s",
                domain.label,
                vcpu,
                pid,
                exc.strerror or exc,
            )
            return None

    def _hard_affinity(self, domain: SchedDomain, vcpu: int) -> frozenset[int]:
        return domain.pins.get(vcpu, domain.affinity)

    def _domain_added(self, domain: SchedDomain) -> None:
        """Hook: a domain was added."""

    def _domain_removed(self, domain: SchedDomain) -> None:
        """Hook: a domain was removed; drop its vCPUs."""

    def _weight_changed(self, domain: SchedDomain, weight: int) -> None:
        """Hook: called before ``domain.weight`` takes the new value."""

    def _affinity_changed(self, domain: SchedDomain, vcpu: int, cpus: frozenset[int]) -> None:
        """Hook: vCPU ``vcpu`` (maybe not up yet) has a new hard affinity."""


def cpu_ranges(cpus: Iterable[int]) -> str:
    """``0-3,6``: CPU numbers as xl writes ranges."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts) or "none"


# ------------------------------------------------------------------------------------
# The loader.


def available_schedulers() -> dict[str, str]:
    """Registered scheduler names and the ``module:Class`` each stands for."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_scheduler(name: str) -> type[Scheduler]:
    """The :class:`Scheduler` class registered as ``name`` in ``xenlike.schedulers``."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
                raise SchedError(errno.EINVAL, f"scheduler {name!r} ({ep.value}) is not a Scheduler subclass")
            return cls
    known = ", ".join(sorted(available_schedulers())) or "none"
    raise SchedError(errno.ENOENT, f"no scheduler named {name!r} (registered: {known})")
