"""``getdomaininfo``'s state word (``xen/include/public/domctl.h``, ``XEN_DOMINF_*``) and the domain list.

``struct xen_domctl_getdomaininfo`` carries a domain's run state as one ``flags``
word: a bit each for dying, shut down, paused, blocked and running, and the
shutdown reason (``SHUTDOWN_*``) in bits 16-23. The hypervisor's
``getdomaininfolist`` (``XEN_SYSCTL_getdomaininfolist``, what ``xc_domain_getinfolist``
and so ``xl list`` and xentop use) answers with that word for every domain, in columns: one
list per field of :data:`DOMAININFOLIST_COLUMNS`, the i-th entry of each being
the i-th domain by domid. :func:`dominf_state` turns a word back into the named
flags ``getdomaininfo`` spells out, which xl's state letters are made from.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "XEN_DOMINF_DYING",
    "XEN_DOMINF_SHUTDOWN",
    "XEN_DOMINF_PAUSED",
    "XEN_DOMINF_BLOCKED",
    "XEN_DOMINF_RUNNING",
    "XEN_DOMINF_SHUTDOWNSHIFT",
    "XEN_DOMINF_SHUTDOWNMASK",
    "DOMAININFOLIST_COLUMNS",
    "dominf_flags",
    "dominf_state",
]

XEN_DOMINF_DYING = 1 << 0  # scheduled to die
XEN_DOMINF_SHUTDOWN = 1 << 2  # the guest has shut down (its reason in the shutdown bits)
XEN_DOMINF_PAUSED = 1 << 3  # paused by the toolstack
XEN_DOMINF_BLOCKED = 1 << 4  # blocked waiting for an event
XEN_DOMINF_RUNNING = 1 << 5  # running, or runnable
XEN_DOMINF_SHUTDOWNSHIFT = 16
XEN_DOMINF_SHUTDOWNMASK = 255

# What getdomaininfolist answers for each domain, one list per name (maxmem_kb: Xen's max_pages).
DOMAININFOLIST_COLUMNS = ("domid", "name", "memory_kb", "maxmem_kb", "vcpus", "cpu_time", "flags")

_BITS = (
    ("dying", XEN_DOMINF_DYING),
    ("shutdown", XEN_DOMINF_SHUTDOWN),
    ("paused", XEN_DOMINF_PAUSED),
    ("blocked", XEN_DOMINF_BLOCKED),
    ("running", XEN_DOMINF_RUNNING),
)


def dominf_flags(state: Mapping[str, object]) -> int:
    """The ``flags`` word of a domain whose state ``getdomaininfo`` spells out (``running``, ``blocked``,
    ``paused``, ``shutdown``, ``dying``, ``shutdown_reason``), as ``getdomaininfo()`` in ``domctl.c`` builds it."""
    flags = 0
    for name, bit in _BITS:
        if state.get(name):
            flags |= bit
    reason = state.get("shutdown_reason")
    if state.get("shutdown") and isinstance(reason, int):
        flags |= (reason & XEN_DOMINF_SHUTDOWNMASK) << XEN_DOMINF_SHUTDOWNSHIFT
    return flags


def dominf_state(flags: int) -> dict[str, object]:
    """The named state of a ``flags`` word: each flag as a bool, and ``shutdown_reason`` (None unless shut down)."""
    state: dict[str, object] = {name: bool(flags & bit) for name, bit in _BITS}
    shut_down = bool(flags & XEN_DOMINF_SHUTDOWN)
    state["shutdown_reason"] = (flags >> XEN_DOMINF_SHUTDOWNSHIFT) & XEN_DOMINF_SHUTDOWNMASK if shut_down else None
    return state
