"""Log-dirty mode: which frames of a domain were written, round after round (Xen's
``arch/x86/mm/paging.c`` log-dirty, driven by ``XEN_DOMCTL_shadow_op``).

dom0 turns it on for a domain it migrates (``shadow_op enable_logdirty``); the
hypervisor asks the guest's kernel for the userfaultfd of its process
(``{"event": "logdirty"}``), and the guest answers with ``logdirty_register``
(the fd, and where it maps its memory). The hypervisor opens the process's
pagemap itself and keeps the log (``xenlike.kernel.dirty_log``). Each
``shadow_op clean`` returns the frames written since the last and resets the
log, with the frames written through grants: every frame mapped writable by
another domain, at map, at unmap and while it stays mapped (a back end may write
it at any time), and the frames the hypervisor wrote itself for a ``grant_copy``,
as Xen's ``gnttab_mark_dirty`` does.

Only vCPU 0's process is logged: a domain with secondary vCPUs (processes of
their own, each with its own page tables) is refused, and migrates by stop-and-copy.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from typing import TYPE_CHECKING

from xenlike.hypervisor.domain import Domain
from xenlike.hypervisor.hypercall import Refused, Result
from xenlike.kernel import dirty_log
from xenlike.kernel.dirty_log import DirtyLog, MappingLog

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["shadow_op", "logdirty_register", "mark_dirty", "release"]

log = logging.getLogger("xenlike.hypervisor")


@functools.cache
def _unsupported() -> str | None:
    return dirty_log.probe()


def shadow_op(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """XEN_DOMCTL_shadow_op: ``action`` (Xen's ``op``) is ``enable_logdirty``, ``status``, ``clean`` or ``off``."""
    domain = hv.domain(args["domid"])
    op = args.get("action")
    if domain.domid == 0 or domain.pid is None:
        raise Refused(errno.EINVAL, f"{domain.label} is not a running domU")
    if op == "enable_logdirty":
        return _enable(hv, domain), []
    if op == "off":
        release(domain)
        return {}, []
    if domain.dirty_log is None:
        raise Refused(errno.EINVAL, f"{domain.label} is not in log-dirty mode")
    if op == "status":
        return {"armed": bool(domain.dirty_log.mappings)}, []
    if op == "clean":
        return {"pfns": _clean(hv, domain)}, []
    raise Refused(errno.ENOSYS, f"no shadow_op {op!r}")


def _enable(hv: Hypervisor, domain: Domain) -> dict:
    if domain.vcpus > 1:
        raise Refused(
            errno.EOPNOTSUPP,
            f"{domain.label} has {domain.vcpus} vCPUs (maxvcpus); log-dirty mode follows vCPU 0's process only",
        )
    reason = _unsupported()
    if reason is not None:
        raise Refused(errno.EOPNOTSUPP, f"no dirty log on this kernel: {reason}")
    if domain.dirty_log is None:
        domain.dirty_log = DirtyLog(domain.nr_frames, domain.label)
        hv.send_event(domain.domid, {"event": "logdirty"})
        log.info("%s: log-dirty mode on", domain.label)
    return {"armed": bool(domain.dirty_log.mappings)}


def _clean(hv: Hypervisor, domain: Domain) -> list[int]:
    assert domain.dirty_log is not None
    for _mapper, mapping in hv.grants.mappings_of_granter(domain.domid):
        if not mapping.readonly and mapping.frame < domain.nr_frames:
            domain.dirty_log.mark([mapping.frame])
    try:
        return domain.dirty_log.harvest()
    except ProcessLookupError as exc:
        raise Refused(errno.ESRCH, str(exc)) from None


def logdirty_register(hv: Hypervisor, caller: Domain, args: dict, fds: list[int]) -> Result:
    """The guest's answer to ``{"event": "logdirty"}``: its userfaultfd (``fds[0]``), ``address``, ``nr_frames``."""
    if caller.dirty_log is None:
        raise Refused(errno.EINVAL, f"{caller.label} is not in log-dirty mode")
    if len(fds) != 1 or args.get("nr_frames") != caller.nr_frames or not isinstance(args.get("address"), int):
        raise Refused(errno.EINVAL, f"{caller.label}: logdirty_register takes one fd, its address and all its frames")
    try:
        pagemap = os.open(f"/proc/{caller.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(exc.errno or errno.EACCES, f"{caller.label}: its pagemap: {exc.strerror}") from None
    mapping = MappingLog(os.dup(fds[0]), pagemap, args["address"], caller.nr_frames, f"{caller.label} vCPU 0")
    try:
        caller.dirty_log.add(mapping)
    except (OSError, ValueError) as exc:
        mapping.close()
        raise Refused(getattr(exc, "errno", None) or errno.EINVAL, f"{caller.label}: {exc}") from None
    log.info("%s: log-dirty armed on vCPU 0", caller.label)
    return {}, []


def mark_dirty(domain: Domain | None, frame: int) -> None:
    """A frame of ``domain`` written other than by its own processes (a grant, a grant copy)."""
    if domain is not None and domain.dirty_log is not None and 0 <= frame < domain.nr_frames:
        domain.dirty_log.mark([frame])


def release(domain: Domain) -> None:
    """Log-dirty mode off (the migration ended, or the domain is going)."""
    if domain.dirty_log is not None:
        domain.dirty_log.close()
        domain.dirty_log = None
        log.info("%s: log-dirty mode off", domain.label)
