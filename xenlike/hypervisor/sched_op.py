"""What a guest asks about its own vCPUs: ``SCHEDOP_shutdown`` (``do_sched_op``), ``VCPUOP_up``/``_down``."""

from __future__ import annotations

import errno
import logging
import os
import signal
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Deferred, Refused, Result
from xenlike.hypervisor.sched import SchedError
from xenlike.public.start_info import reserved_frames
from xenlike.public.suspend import SuspendRecordError, check_place
from xenlike.public.xen import ShutdownReason

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["sched_shutdown", "vcpu_op"]

log = logging.getLogger("xenlike.hypervisor")


def sched_shutdown(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """SCHEDOP_shutdown: the guest is done, for ``reason``; answered, then its vCPUs never run again."""
    reason = ShutdownReason(args["reason"])
    if reason == ShutdownReason.SUSPEND:
        _suspend(hv, caller, args)
    if caller.shutdown_reason is None:
        caller.shutdown_reason = reason
        log.info("%s: shutdown requested by the guest (%s)", caller.label, reason.name.lower())
    hv.reply_now({})
    hv.kill(caller)
    raise Deferred()


def _suspend(hv: Hypervisor, caller: Domain, args: dict) -> None:
    """SCHEDOP_shutdown(SHUTDOWN_suspend): stop the domain where it is and hold the reply.

    ``record`` is ``[pfn, length]``, where the guest left its suspend record
    (``xenlike.public.suspend``). The domain stays, shut down for suspend, until
    dom0 destroys it or resumes it (``resumedomain``: the reply is then
    ``{"cancelled": 1}``).
    """
    if caller.domid == 0 or caller.pid is None:
        raise Refused(errno.EINVAL, f"{caller.label} cannot suspend: only a running domU can")
    if caller.shutdown_reason is not None:
        raise Refused(errno.EINVAL, f"{caller.label} has already shut down")
    try:
        caller.suspend_record = check_place(args.get("record"), reserved_frames(caller.gnttab_frames), caller.nr_frames)
    except SuspendRecordError as exc:
        raise Refused(errno.EINVAL, f"{caller.label}: {exc}") from None
    caller.shutdown_reason = ShutdownReason.SUSPEND
    caller.suspend_reply = hv.hold_reply()
    try:
        os.killpg(caller.pid, signal.SIGSTOP)  # every vCPU stops here, as Xen's vCPUs are paused
    except ProcessLookupError:
        pass
    hv.scheduler.pause(caller.domid)
    log.info("%s: suspended (record at frame %d, %d bytes)", caller.label, *caller.suspend_record)
    hv.state_changed(caller.domid)
    raise Deferred()


def vcpu_op(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """VCPUOP_up and VCPUOP_down for the caller's secondary vCPU ``vcpu``.

    ``up``: the guest's process ``pid`` is that vCPU from now on; it must be a
    child of the caller's vCPU 0 in the caller's process group, so a guest can
    only hand the scheduler its own processes. ``down``: the scheduler takes the
    vCPU away (``vcpu-set`` took it offline); the guest ends its process.
    """
    cmd, vcpu = args.get("cmd"), args.get("vcpu")
    if cmd not in ("up", "down"):
        raise Refused(errno.ENOSYS, f"no vcpu_op {cmd!r}")
    if isinstance(vcpu, bool) or not isinstance(vcpu, int) or not 1 <= vcpu < caller.vcpus:
        raise Refused(errno.EINVAL, f"{caller.label} has no secondary vCPU {vcpu!r} (maxvcpus = {caller.vcpus})")
    if cmd == "down":
        return _vcpu_down(hv, caller, vcpu)
    pid = args.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise Refused(errno.EINVAL, f"{caller.label}: vcpu_op up needs the pid of vCPU {vcpu}, not {pid!r}")
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        parent, group = int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        raise Refused(errno.ESRCH, f"{caller.label}: no process {pid!r} to bring up as vCPU {vcpu}") from None
    if parent != caller.pid or group != caller.pid:
        log.warning("%s: refused vCPU %d as pid %s: not its own child", caller.label, vcpu, pid)
        raise Refused(errno.EPERM, f"{caller.label}: pid {pid} is not a child of its vCPU 0")
    if any(row["vcpu"] == vcpu and row["online"] for row in hv.scheduler.vcpu_list(caller.domid)):
        raise Refused(errno.EEXIST, f"{caller.label}: vCPU {vcpu} is already up")
    try:
        hv.scheduler.vcpu_up(caller.domid, vcpu, pid)
    except (SchedError, OSError) as exc:
        raise Refused(getattr(exc, "errno", None) or errno.EINVAL, str(exc)) from None
    log.info("%s: vCPU %d up, pid %d", caller.label, vcpu, pid)
    return {}, []


def _vcpu_down(hv: Hypervisor, caller: Domain, vcpu: int) -> Result:
    """VCPUOP_down: the scheduler forgets the vCPU (its time stays the domain's)."""
    if not any(row["vcpu"] == vcpu and row["online"] for row in hv.scheduler.vcpu_list(caller.domid)):
        raise Refused(errno.EALREADY, f"{caller.label}: vCPU {vcpu} is not up")
    try:
        hv.scheduler.vcpu_down(caller.domid, vcpu)
    except SchedError as exc:
        raise Refused(exc.errno, str(exc)) from None
    log.info("%s: vCPU %d down", caller.label, vcpu)
    return {}, []
