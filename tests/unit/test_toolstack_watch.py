"""A xenstore-watch whose client went away stops costing dom0 anything.

The CLI unwatches when it ends, but one that is killed never does; every write a
guest made under the watched path then became one more line in dom0's log, for
ever. After ``WATCH_UNDELIVERED_MAX`` undelivered events the watch is removed.
The toolstack here is the real one, over an in-process xenstored, with an API
socket whose client is gone.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import zmq

from dom0.toolstack.ops_xenstore import WATCH_UNDELIVERED_MAX
from dom0.toolstack.request import Request
from dom0.toolstack.server import Toolstack
from dom0.xenstore_service import XenstoreService
from dom0.xenstored import LocalXenstore, Xenstored
from xenlike.kernel.events import EventLoop

HOME = "/local/domain/1"


class _GoneClient:
    """A ROUTER_MANDATORY socket whose one client went away."""

    def send_multipart(self, frames, flags=0):
        raise zmq.ZMQError(zmq.EHOSTUNREACH)


def test_a_watch_nobody_reads_is_removed_and_logged_once(caplog):
    daemon = Xenstored()
    xs = LocalXenstore(daemon)
    loop = EventLoop("d0 (test)")
    service = XenstoreService(loop)
    service.daemon = daemon
    ts = Toolstack(
        shut_host_down=lambda: None,
        api=_GoneClient(),
        hypercall=lambda *args, **kwargs: ({}, []),
        builder=SimpleNamespace(),
        xs=xs,
        xenstore_service=service,
        xenconsoled=SimpleNamespace(),
        backends=SimpleNamespace(),
        run_dir=SimpleNamespace(path="/tmp"),
    )
    xs.write(HOME, "", perms=["n0", "r1"])
    xs.write(f"{HOME}/data", "", perms=["n1"])
    guest = LocalXenstore(daemon, 1)
    ts._dispatch(Request(b"client", 7, "xenstore_watch", {"path": HOME}, ts._send))
    assert ts.xenstore_watches
    with caplog.at_level(logging.INFO, logger="dom0.toolstack"):
        for i in range(3 * WATCH_UNDELIVERED_MAX):
            guest.write(f"{HOME}/data/x", str(i))  # the guest's own node, as often as it likes
    assert ts.xenstore_watches == {}
    assert len([r for r in caplog.records if "not delivered" in r.getMessage()]) == 1
    loop.close()
