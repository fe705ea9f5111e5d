"""Event channels' ABI (``xen/include/public/event_channel.h``, the ``VIRQ_*`` of ``xen.h``).

An event channel is a pair of ports in two domains; a ``send`` on one sets the
other *pending* and, unless it is masked, raises an upcall in its domain. An
event carries one bit: sends coalesce until the receiver clears pending.

In xenlike every port is an ``eventfd``: its counter being non-zero *is* the
pending bit, a read clears it, and a write sets it. The hypervisor's port tables
are :mod:`xenlike.hypervisor.event_channel`; a domain's upcall dispatcher is
:mod:`xenlike.kernel.events`. This module holds what both agree on: the port
states ``EVTCHNOP_status`` reports, the virtual IRQs, the 2-level ABI's port
count and the error an operation is refused with.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["DEFAULT_MAX_EVENT_CHANNELS", "EVTCHN_2L_NR_CHANNELS", "ChannelState", "VIRQ", "EvtchnError"]

EVTCHN_2L_NR_CHANNELS = 4096  # sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64 on 64-bit
# The highest port a domU may use: libxl's default max_event_channels (xl.cfg(5)), which Xen keeps
# as the domain's max_evtchn_port. dom0 has the whole 2-level ABI, as it binds two ports per domU.
DEFAULT_MAX_EVENT_CHANNELS = 1023


class ChannelState(IntEnum):
    """``EVTCHNSTAT_*`` as returned by EVTCHNOP_status."""

    CLOSED = 0
    UNBOUND = 1
    INTERDOMAIN = 2
    PIRQ = 3
    VIRQ = 4
    IPI = 5


class VIRQ(IntEnum):
    """Virtual IRQs (``xen/include/public/xen.h``); there are ``NR_VIRQS`` of them (:mod:`xenlike.public.xen`)."""

    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3  # global: a domain changed state (delivered to dom0)
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13


class EvtchnError(OSError):
    """An event-channel operation refused, with the errno Xen would return."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
