"""XenBus device states (``xen/include/public/io/xenbus.h``) and the device paths of xenstore.

Every split device walks both ends through these states: the back end publishes
its features and goes to InitWait; the front end publishes its ring and event
channel and goes to Initialised; the back end connects (Connected), then the
front end does. Closing/Closed tear it down.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["XenbusState", "frontend_path", "backend_path"]


class XenbusState(IntEnum):
    Unknown = 0
    Initialising = 1
    InitWait = 2  # back end: features published, waiting for the front end
    Initialised = 3  # front end: ring and event channel published, waiting to be connected
    Connected = 4
    Closing = 5  # being closed, on an error or an unplug
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8

    @classmethod
    def parse(cls, text: str | bytes | None) -> "XenbusState":
        """A state node's value; anything unreadable is Unknown."""
        try:
            return cls(int(text or 0))
        except ValueError:
            return cls.Unknown


def frontend_path(domid: int, kind: str, devid: int) -> str:
    """``/local/domain/<domid>/device/<kind>/<devid>``."""
    return f"/local/domain/{domid}/device/{kind}/{devid}"


def backend_path(backend_domid: int, kind: str, frontend_domid: int, devid: int) -> str:
    """``/local/domain/<backend>/backend/<kind>/<frontend>/<devid>``."""
    return f"/local/domain/{backend_domid}/backend/{kind}/{frontend_domid}/{devid}"
