"""A block back end's worker process: one device, its own fds, any pCPU of the host.

dom0 forks one per connected device (as crosvm jails each device): the worker
keeps only the fds that device needs (its own hypercall channel, the front end's
memory, the image, the event channel, a control socket to dom0) and closes the
rest, then serves the ring until dom0 says stop or the front end breaks the
protocol. Python's GIL is per process, so devices are served in parallel.

The control socket carries, from dom0, ``{"stop": true}`` and ``{"stats": true}``
(answered with ``{"stats": {...}}``, the ring's live counters, for xentop's VBD_*
columns, as Linux blkback's ``statistics/`` in sysfs); to dom0, ``{"connected":
true}`` once, ``{"fatal": reason}`` when the front end broke the protocol, and
``{"stopped": {...}}`` (the final counters) after a stop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

from xenlike.kernel.events import EventLoop
from xenlike.kernel.hypercall import HypercallClient, recv_message, send_message, socketpair
from xenlike.hypervisor.zygote import die_with_parent, set_process_name
from xenlike.public.ring import RingError

from .blkback import BlkifRing
from .vbd import Vbd

__all__ = ["spawn_worker", "FDS"]

# The order of the fds a worker is given.
FDS = ("channel", "memory", "image", "evtchn_recv", "evtchn_send")
WAIT_BOUND_S = 1.0

log = logging.getLogger("dom0.blkback")


def spawn_worker(params: dict[str, Any], fds: list[int]) -> tuple[int, socket.socket]:
    """Fork a worker for one device; returns its pid and dom0's end of its control socket.

    The fds (in :data:`FDS` order) are the worker's from then on: dom0 closes its copies.
    """
    ours, theirs = socketpair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _close_all_but([theirs.fileno(), *fds])
            code = _worker_main(params, fds, theirs)
        except BaseException:
            log.exception("%s: back-end worker failed", params.get("label"))
        finally:
            os._exit(code)
    theirs.close()
    for fd in fds:
        os.close(fd)
    return pid, ours


def _close_all_but(keep: list[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own fd, already gone


def _worker_main(params: dict[str, Any], fds: list[int], control: socket.socket) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent()
    set_process_name(f"xl-blk-{params['frontend']}-{params['vdev']}")
    # The fork inherited the pCPU the scheduler had put dom0's vCPU on; a back end
    # serves every pCPU of the host, and Linux places it, as dom0's kernel threads.
    os.sched_setaffinity(0, params["pcpus"])
    logging.root.handlers.clear()  # dom0's handlers: their files were closed with the other fds
    logging.basicConfig(filename=params["log"], level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channel, memory, image, recv_fd, send_fd = fds
    hypercall = HypercallClient(socket.socket(fileno=channel), lambda event, extra: [os.close(f) for f in extra])
    vbd = Vbd(image, params["path"], params["sectors"], params["readonly"])
    loop = EventLoop(params["label"])
    loop.bind(params["port"], recv_fd, send_fd)
    try:
        ring = BlkifRing(params["label"], params["frontend"], vbd, hypercall, memory, params["ring_refs"], params["persistent"])
    except Exception as exc:
        send_message(control, {"fatal": f"cannot map the ring: {exc}"})
        return 2
    stop: list[bool] = []
    loop.add_reader(control.fileno(), lambda fd: _answer_control(control, ring, stop))
    send_message(control, {"connected": True})
    log.info("%s: connected (%d sectors%s)", params["label"], vbd.sectors, ", read-only" if vbd.readonly else "")
    code = 0
    try:
        while not stop:
            if ring.process():
                loop.notify(params["port"])
            elif not ring.ring.final_check_for_requests():
                loop.poll(WAIT_BOUND_S)
    except RingError as exc:
        log.error("%s: front end broke the ring protocol, disconnecting: %s", params["label"], exc)
        send_message(control, {"fatal": str(exc)})
        code = 2
    finally:
        ring.close()
        vbd.close()
        loop.close()
    if code == 0:
        try:
            send_message(control, {"stopped": ring.stats})
        except OSError:
            pass  # dom0 did not wait for the figures
    return code


def _answer_control(control: socket.socket, ring: BlkifRing, stop: list[bool]) -> None:
    """One message from dom0: a stats request is answered at once; anything else (or dom0 gone) means stop."""
    try:
        message, _ = recv_message(control)
        if message.get("stats"):
            send_message(control, {"stats": ring.stats})
            return
    except OSError:
        pass  # ChannelClosed included: dom0 closed its end, nobody is left to serve for
    stop.append(True)
