"""The hypervisor's domain table and host frame pool (Xen's ``struct domain``)."""

from __future__ import annotations

import os
import socket
import time
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenlike.kernel.memory import GuestMemory
from xenlike.public.domctl import XEN_DOMINF_BLOCKED, XEN_DOMINF_DYING, XEN_DOMINF_PAUSED, XEN_DOMINF_RUNNING
from xenlike.public.xen import PAGE_SIZE, ShutdownReason

if TYPE_CHECKING:
    from xenlike.hypervisor.vdisk import VirtualDisk

__all__ = ["Domain", "FramePool", "OutOfMemory", "mib_to_frames", "read_proc_stat", "CLOCK_TICKS"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def mib_to_frames(mib: int) -> int:
    """How many frames ``mib`` MiB of memory is (``xenlike up --memory``, ``memory`` in xl.cfg)."""
    return mib * (1 << 20) // PAGE_SIZE


class OutOfMemory(MemoryError):
    """The host pool cannot give a domain the memory it asks for."""


class FramePool:
    """The host's 4 KiB frames (``xenlike up --memory``): reservations, never overcommit.

    ``machine_mib`` is the machine's memory (0: unknown), for the advice a refusal gives.
    """

    def __init__(self, total_frames: int, machine_mib: int = 0) -> None:
        self.total = total_frames
        self.free = total_frames
        self.machine_mib = machine_mib

    def reserve(self, frames: int, who: str) -> None:
        """Take ``frames`` for ``who``, or OutOfMemory naming what it needs, what is free and what would help."""
        if frames > self.free:
            needed = frames * PAGE_SIZE >> 20
            if self.machine_mib and needed > self.machine_mib:
                advice = (
                    f"that is more than this machine's {self.machine_mib} MiB: only a host started with "
                    "--overcommit and a larger --memory can hold it"
                )
            else:
                advice = "start the host with a larger --memory, or destroy a domain"
            raise OutOfMemory(
                f"{who} needs {needed} MiB but only {self.free * PAGE_SIZE >> 20} MiB "
                f"of the host's {self.total * PAGE_SIZE >> 20} MiB are free ({advice})"
            )
        self.free -= frames

    def release(self, frames: int) -> None:
        self.free = min(self.total, self.free + frames)


@dataclass
class Domain:
    """One domain as the hypervisor knows it."""

    domid: int
    name: str
    nr_frames: int
    max_frames: int
    vcpus: int
    gnttab_frames: int
    memory: GuestMemory
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    sock: socket.socket | None = None  # the hypercall channel, once spawned
    pid: int | None = None
    paused: bool = False
    shutdown_reason: int | None = None  # set once the guest shut down (or crashed)
    dying: bool = False
    exit_note: str = ""  # how the process ended, for logs and `xl list -l`
    created_wall: float = field(default_factory=time.time)
    vdisks: dict[int, VirtualDisk] = field(default_factory=dict)  # direct and passthrough disks, by devid
    started_mono: float | None = None
    cpu_time_final: float = 0.0  # CPU seconds when the process ended
    suspend_record: tuple[int, int] | None = None  # (pfn, length) while suspended
    suspend_reply: Any = None  # the held reply to its SCHEDOP_shutdown(suspend)
    dirty_log: Any = None  # a xenlike.kernel.dirty_log.DirtyLog in log-dirty mode
    ballooned: set[int] = field(default_factory=set)  # frames given back (decrease_reservation)

    trace_buffer: int | None = None  # its process's trace buffer (the hypervisor's TraceHost id)
    console_lines: Any = None  # its console_io rate limit (xenlike.hypervisor.console.GuestLines), made on first use

    @property
    def tot_frames(self) -> int:
        """Frames it holds of the host's pool (Xen's ``tot_pages``): its memory less what it ballooned out."""
        return self.nr_frames - len(self.ballooned)

    @property
    def privileged(self) -> bool:
        return self.domid == 0

    @property
    def label(self) -> str:
        """How logs name a domain: ``d3 (web)``."""
        return f"d{self.domid} ({self.name})"

    def state_flags(self, accounted: Mapping[str, Any] | None = None) -> dict[str, bool]:
        """xl's state letters: running, blocked, paused, shutdown, crashed, dying.

        Running and blocked come from ``accounted`` (the scheduler's view) when it
        has them, else from the process's run state in ``/proc``.
        """
        shutdown = self.shutdown_reason is not None
        alive = self.pid is not None and not shutdown and not self.dying
        if accounted is not None and "running" in accounted and "blocked" in accounted:
            running, blocked = bool(accounted["running"]), bool(accounted["blocked"])
        else:
            proc_state = read_proc_stat(self.pid)[0] if alive else ""
            running, blocked = proc_state == "R", proc_state not in ("R", "")
        return {
            "running": alive and not self.paused and running,
            "blocked": alive and not self.paused and blocked,
            "paused": self.paused and not shutdown,
            "shutdown": shutdown,
            "crashed": self.shutdown_reason == ShutdownReason.CRASH,
            "dying": self.dying,
        }

    def scheduled_flags(self, running: bool, blocked: bool) -> int:
        """``getdomaininfo``'s ``XEN_DOMINF_*`` word of a domain that runs (started, not shut down), ``running``
        and ``blocked`` being the scheduler's: ``dominf_flags(self.state_flags(...))`` with no dict built."""
        if self.paused:
            flags = XEN_DOMINF_PAUSED
        elif self.dying:
            flags = 0
        else:
            flags = (XEN_DOMINF_RUNNING if running else 0) | (XEN_DOMINF_BLOCKED if blocked else 0)
        return (flags | XEN_DOMINF_DYING) if self.dying else flags

    def cpu_time(self) -> float:
        """CPU seconds the domain's process has used (kernel's accounting)."""
        if self.pid is None or self.shutdown_reason is not None:
            return self.cpu_time_final
        return read_proc_stat(self.pid)[1] or self.cpu_time_final

    def info(self, accounted: Mapping[str, Any] | None = None) -> dict:
        """``getdomaininfo`` (``struct xen_domctl_getdomaininfo``): what ``xl list`` and ``xl list -l`` show.

        ``accounted`` is what the scheduler accounted for a running domain
        (``cpu_time``, and ``running``/``blocked`` if it tracks them); what it
        lacks is read from ``/proc``, so a scheduler that tracks everything
        makes listing a host cost no system call per domain.
        """
        accounted = accounted or {}
        flags = self.state_flags(accounted)
        return {
            "domid": self.domid,
            "name": self.name,
            "uuid": self.uuid,
            "memory_kb": self.tot_frames * PAGE_SIZE // 1024,
            "maxmem_kb": self.max_frames * PAGE_SIZE // 1024,
            "vcpus": self.vcpus,  # getdomaininfo puts the number online in place of maxvcpus
            "max_vcpus": self.vcpus,
            "cpu_time": accounted["cpu_time"] if "cpu_time" in accounted else self.cpu_time(),
            "pid": self.pid,
            "shutdown_reason": self.shutdown_reason,
            "suspend_record": list(self.suspend_record) if self.suspend_record else None,
            "exit": self.exit_note,
            "created": self.created_wall,
            "uptime": (time.monotonic() - self.started_mono) if self.started_mono else 0.0,
            **flags,
        }


def read_proc_stat(pid: int | None) -> tuple[str, float]:
    """(state letter, utime+stime seconds) of a process from ``/proc/PID/stat``; ("", 0) if gone."""
    if pid is None:
        return "", 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "", 0.0
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    state = fields[0].decode()
    if state == "Z":
        return "", 0.0
    return state, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
