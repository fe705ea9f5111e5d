"""Xen's basic ABI constants (``xen/include/public/xen.h``, ``xen/include/public/sched.h``).

Every domain and the hypervisor agree on these; each is named here once.

* Pages: the 4 KiB frame every address that crosses a process boundary counts in.
* Domain ids: ``domid_t`` is 16 bits; ids from :data:`DOMID_FIRST_RESERVED` up are
  never a real domain but name something special in a hypercall argument
  (``DOMID_SELF``: the caller). Ordinary domains are 0 (dom0) to :data:`DOMID_MAX`.
* :data:`NR_VIRQS`: how many virtual IRQs a domain may bind (``VIRQ_*`` are in
  :mod:`xenlike.public.event_channel`).
* :class:`ShutdownReason`: ``SCHEDOP_shutdown``'s reason codes (sched.h's ``SHUTDOWN_*``).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "DOMID_FIRST_RESERVED",
    "DOMID_SELF",
    "DOMID_IO",
    "DOMID_XEN",
    "DOMID_COW",
    "DOMID_INVALID",
    "DOMID_IDLE",
    "DOMID_MAX",
    "NR_VIRQS",
    "ShutdownReason",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

DOMID_FIRST_RESERVED = 0x7FF0  # ids from here on are not domains
DOMID_SELF = 0x7FF0  # "the calling domain"
DOMID_IO = 0x7FF1  # the owner of I/O memory
DOMID_XEN = 0x7FF2  # the owner of Xen's own heap pages
DOMID_COW = 0x7FF3  # the owner of sharable pages
DOMID_INVALID = 0x7FF4  # no owner known
DOMID_IDLE = 0x7FFF  # the idle domain
DOMID_MAX = DOMID_FIRST_RESERVED - 1  # the largest id an ordinary domain can have

NR_VIRQS = 24


class ShutdownReason(IntEnum):
    """``SHUTDOWN_*`` of ``xen/include/public/sched.h``: why a domain called ``SCHEDOP_shutdown``."""

    POWEROFF = 0
    REBOOT = 1
    SUSPEND = 2
    CRASH = 3
    WATCHDOG = 4
    SOFT_RESET = 5
