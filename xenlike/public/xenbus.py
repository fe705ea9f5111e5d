"""XenBus device states (``xen/include/public/io/xenbus.h``) and the device paths of xenstore.

Every split device walks both ends through these states; each protocol module
(``blkif.py``, ...) says what its two ends publish at each step::

      front end (domU)                         back end (dom0)
      ----------------                         ---------------
      Initialising                             Initialising
                                               probe: publish features
                                               InitWait
      read the back end's features
      grant the ring(s), alloc the event
      channel(s), publish them
      Initialised
                                               read ring refs and ports,
                                               map, bind, start the worker
                                               Connected
      read what the back end published
      Connected
      ...
      Closing (unplug, or an error)  ------->  Closing: stop the worker
      Closed                                   Closed: unbind, unmap
      (wait for the back end's Closed)
      end access to the ring pages

Either end that cannot go on reports it once (``xenbus_dev_fatal``): it writes
``"<errno> <message>"`` to :func:`error_path` of the device and moves to Closing,
and the other end follows it down.

Paths, as Linux's ``dev->nodename``: a front end's device directory is
``/local/domain/<fe>/device/<type>/<devid>``, its back end's
``/local/domain/<be>/backend/<type>/<fe>/<devid>``; the front end's ``backend``
and ``backend-id`` nodes and the back end's ``frontend`` and ``frontend-id``
point at each other.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "XenbusState",
    "frontend_path",
    "backend_path",
    "error_path",
    "ERROR_MESSAGE_MAX",
    "BACKEND",
    "BACKEND_ID",
    "FRONTEND",
    "FRONTEND_ID",
    "STATE",
    "ONLINE",
    "NUMBER_MAX",
]

# Keys every split device has (xenbus.h, libxl__device_generic_add).
STATE = "state"  # both ends: a XenbusState, as a decimal string
BACKEND, BACKEND_ID = "backend", "backend-id"  # front end: where its back end is
FRONTEND, FRONTEND_ID = "frontend", "frontend-id"  # back end: where its front end is
ONLINE = "online"  # back end: "0" when the toolstack unplugs the device
ERROR_MESSAGE_MAX = 200  # what an error node keeps of a message
NUMBER_MAX = 0xFFFF_FFFF  # the numbers either end publishes (ports, grant refs, orders, states) are uint32_t


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
    def parse(cls, text: str | bytes | None) -> XenbusState:
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


def error_path(domid: int, nodename: str) -> str:
    """Where ``xenbus_dev_fatal`` reports a device's error: ``/local/domain/<domid>/error/<nodename>/error``.

    ``nodename`` is the device's path relative to its domain's home
    (``device/vbd/51712``, ``backend/vbd/3/51712``), as Linux's ``xenbus_va_dev_error``.
    """
    return f"/local/domain/{domid}/error/{nodename}/error"
