"""vCPU hotplug: the guest follows ``cpu/N/availability`` (Linux's ``drivers/xen/cpu_hotplug.c``).

Linux watches ``cpu`` in its home (``setup_cpu_watcher``); on each event it
reads every vCPU's ``availability`` and brings a vCPU up or down to match
(``vcpu_hotplug``, ``device_online``/``device_offline``). Here a vCPU is a
process: bringing one up forks it (``domu/vcpu.py``) and reports it with
``VCPUOP_up``; taking one down tells the hypervisor (``VCPUOP_down``, so the
scheduler lets go of it), then ends its process. vCPU 0 is never taken down.

A domain whose ``maxvcpus`` is 1 sets no watch and has no hotplug thread. The
work runs on a thread of its own, as Linux's runs on a workqueue, started by the
kernel's main thread: the event loop's thread is confined further (Landlock's
signal scope), and a thread it made could not end a vCPU forked at boot.
``ctx.vcpus`` is updated in place, in vCPU order.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from xenlike.public.vcpu import CPU_DIR, availability_path, parse_availability
from xenlike.public.xs_wire import XsError

from .vcpu import Vcpu, fork_vcpu
from .workqueue import Work

if TYPE_CHECKING:
    from .kernel import Kernel

__all__ = ["CpuHotplug"]

log = logging.getLogger("domu.cpu_hotplug")


class CpuHotplug:
    """One guest's vCPU hotplug: which of vCPUs 1..maxvcpus-1 run, and the thread that follows xenstore."""

    def __init__(self, kernel: Kernel, max_vcpus: int) -> None:
        self.kernel = kernel
        self.max_vcpus = max_vcpus
        self._work = Work(self.follow, "cpu-hotplug", "vCPU hotplug failed", kernel.label, log)
        self._lock = threading.Lock()

    def start(self) -> None:
        """From the kernel's main thread: the hotplug thread, and a watch on ``cpu`` (its first event, at
        registration, also catches a vcpu-set made during boot)."""
        if self.max_vcpus > 1:
            self._work.start()
            self.kernel.xenbus.watch_async(CPU_DIR, "cpu-hotplug", self._on_event)

    def _on_event(self, path: str, token: str) -> None:
        """The watch (loop thread): hand the work to the hotplug thread, which may block on xenstore."""
        self._work.schedule()

    def follow(self) -> None:
        """Bring each secondary vCPU up or down as its ``availability`` node says; others are left alone."""
        with self._lock:
            for index in range(1, self.max_vcpus):
                try:
                    wanted = parse_availability(self.kernel.xenbus.read_str(availability_path(index)))
                except XsError:
                    wanted = None
                online = self._find(index) is not None
                if wanted is True and not online:
                    self._up(index)
                elif wanted is False and online:
                    self._down(index)

    def _find(self, index: int) -> Vcpu | None:
        return next((vcpu for vcpu in self.kernel.vcpus if vcpu.index == index), None)

    def _up(self, index: int) -> None:
        kernel = self.kernel
        vcpu = fork_vcpu(index, kernel.vcpu_process_name, kernel.vcpus_globals)
        try:
            kernel.hypercall.call("vcpu_op", cmd="up", vcpu=index, pid=vcpu.pid)
        except OSError as exc:
            print(f"[{kernel.label}] vCPU {index} cannot come up: {exc}", file=sys.stderr)
            _end(vcpu)
            return
        # In place, with one insert: the workload reads this list (ctx.vcpus) from its own threads,
        # and an in-place sort empties a list while it runs (Python code, the key, runs meanwhile).
        position = next((i for i, other in enumerate(kernel.vcpus) if other.index > index), len(kernel.vcpus))
        kernel.vcpus.insert(position, vcpu)
        print(f"[{kernel.label}] vCPU {index} is online")

    def _down(self, index: int) -> None:
        kernel = self.kernel
        vcpu = self._find(index)
        if vcpu is None:
            return
        try:
            kernel.hypercall.call("vcpu_op", cmd="down", vcpu=index)
        except OSError as exc:  # not scheduled (it never came up): its process goes all the same
            log.warning("%s: VCPUOP_down of vCPU %d: %s", kernel.label, index, exc)
        kernel.vcpus.remove(vcpu)
        _end(vcpu)
        print(f"[{kernel.label}] vCPU {index} is offline")


def _end(vcpu: Vcpu) -> None:
    """Close its channel (calls still pending raise EOFError), end its process and reap it."""
    vcpu.close()
    try:
        os.kill(vcpu.pid, signal.SIGKILL)
        os.waitpid(vcpu.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
