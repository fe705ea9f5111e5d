"""Fault injection (``xenlike inject``): break one part on purpose, with a documented outcome.

dom0's toolstack keeps the faults it injected; ``--list`` shows them and
``--clear`` undoes them (all, or one by id). What each does, and what is
expected to follow (:data:`OUTCOMES`, also what ``inject`` answers):

* ``backend-kill DOMAIN DEVICE``: the device's back-end worker gets SIGKILL. dom0's
  bus restarts a vbd's back end (a new worker, through the xenbus handshake) and
  blkfront re-issues what was in flight (``blkif_recover``).
* ``backend-freeze DOMAIN DEVICE``: the worker gets SIGSTOP until cleared (SIGCONT).
* ``evtchn-drop DOMAIN PORT`` / ``evtchn-delay DOMAIN PORT MS``: what DOMAIN sends
  on its port PORT is lost / sent MS later (the hypervisor arms it in the header
  page of each of the domain's processes; ``EventLoop.notify`` reads it).
* ``xs-refuse PATH [ERRNO]`` / ``xs-delay PATH MS``: a guest's xenstore requests
  naming PATH or a node below it are answered with ERRNO (default EACCES) / are
  handled MS later, the connection's later requests waiting behind them in order.
  dom0's own requests (the toolstack's, the back ends') are never touched.
* ``vcpu-freeze DOMAIN VCPU``: the scheduler keeps that vCPU's process stopped
  until cleared, the rest of the domain running.
* ``sector-eio DOMAIN DEVICE FIRST[-LAST]``: blkback answers every request touching
  those sectors ``BLKIF_RSP_ERROR`` until cleared (:class:`SectorRanges`; the
  worker is told through its control socket, a restarted one at its start).
* ``ring-corrupt DOMAIN DEVICE slot|index``: blkback's worker scribbles the shared
  ring as the front end might: the next request slot it takes off the ring
  (:func:`scribble_slot`) or ``req_prod`` (:func:`scribble_req_prod`).

Every fault taking effect is a trace record of class ``fault``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xenlike.kernel import trace
from xenlike.public.blkif import REQUEST
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xs_wire import XSD_ERRNO, home_path

__all__ = [
    "OUTCOMES",
    "RING_CORRUPTIONS",
    "Fault",
    "FaultError",
    "HeldRequests",
    "InjectedFaults",
    "SectorRanges",
    "XenstoreFaults",
    "XenstoreRule",
    "check_xs_rule",
    "parse_sector_range",
    "scribble_req_prod",
    "scribble_slot",
    "freeze_worker",
    "kill_worker",
    "now",
    "traced",
]

log = logging.getLogger("dom0.faults")

OUTCOMES = {
    "backend-kill": "the worker dies; dom0 reads its death, closes its hypercall channel (the hypervisor unmaps "
    "what it mapped) and, for a vbd, restarts the back end: InitWait again, a new worker once the front end has "
    "set up a new ring; blkfront re-issues every request in flight that was not answered, in order "
    "(blkif_recover), so the workload sees a pause and no error, and no acknowledged write is lost. A vbd whose "
    "worker died more than 3 times within 60 s, and a vif, is not restarted: "
    "error/backend/<type>/<domid>/<devid>/error ('serving: the back-end worker died') and Closing, the "
    "guest's requests in flight fail and the device closes. Its other devices, dom0 and other domains go on",
    "backend-freeze": "the worker stops: the guest's requests wait in the ring (top shows the last counters); "
    "--clear continues it and it serves every request waiting, none lost",
    "evtchn-drop": "every notification the domain sends on the port is lost: its peer is not woken for what it "
    "puts in the ring or byte channel (a guest's xenstore or console port: its requests wait until something "
    "else wakes dom0, or time out); --clear sends again from then on",
    "evtchn-delay": "every notification the domain sends on the port arrives that many ms later; nothing is lost",
    "xs-refuse": "the guests' requests naming the path or a node below it fail with the errno; others' requests, "
    "and dom0's own, are served",
    "xs-delay": "the guests' requests naming the path or below are handled that many ms later, and that guest's "
    "later requests wait behind them in order; other guests and dom0 are served at once",
    "vcpu-freeze": "the vCPU's process stays stopped: what runs there waits (vCPU 0: the guest's kernel, its "
    "xenstore and console); the domain's other vCPUs, dom0 and other domains run; --clear lets it run again",
    "sector-eio": "blkback answers every read, write or discard touching the sectors BLKIF_RSP_ERROR: the "
    "workload's call raises OSError(EIO) naming the request's first sector; requests elsewhere are served and "
    "the ring goes on; it outlives a restart of the back end; --clear serves the sectors again. A direct disk "
    "(served by the hypervisor) is refused",
    "ring-corrupt": "slot: the next request the back end takes off the ring has op, nr_segments and every gref "
    "overwritten with 0xff (its id kept): blkback answers it BLKIF_RSP_EOPNOTSUPP, the workload's call raises "
    "OSError(EOPNOTSUPP), and the ring goes on. index: req_prod is set more than a ring ahead of the responses: "
    "blkback stops serving the ring, writes error/backend/vbd/<domid>/<devid>/error ('serving: front end "
    "provided bogus ring requests ...') and moves to Closing; the guest's requests in flight fail and the disk "
    "closes. Either way the worker neither crashes nor reads outside the ring, and other devices and domains go "
    "on; once done there is nothing to clear",
}

RING_CORRUPTIONS = ("slot", "index")


class FaultError(Exception):
    """An injection refused: names the thing and the fix."""


@dataclass
class Fault:
    """One injected fault as ``inject --list`` shows it."""

    id: int
    kind: str
    target: str
    undo: Callable[[], None] | None = field(default=None, repr=False)
    done: bool = False  # a one-shot fault that has taken effect (nothing to undo)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "outcome": OUTCOMES[self.kind],
            "active": not self.done,
        }


def traced(kind: str, **fields: Any) -> None:
    """A fault taking effect, as a trace record (class ``fault``)."""
    if trace.on(TraceClass.FAULT):
        trace.emit(Event.FAULT, {"kind": kind, **fields})


def kill_worker(pid: int, label: str) -> None:
    """backend-kill: SIGKILL; dom0's loop learns of the death from the worker's control socket."""
    os.kill(pid, signal.SIGKILL)
    traced("backend-kill", device=label, pid=pid)
    log.warning("%s: back-end worker %d killed (injected fault)", label, pid)


def freeze_worker(pid: int, label: str, frozen: bool) -> None:
    """backend-freeze: SIGSTOP, and SIGCONT when cleared."""
    try:
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)
    except ProcessLookupError:
        return  # it ended meanwhile: nothing to continue
    traced("backend-freeze" if frozen else "backend-thaw", device=label, pid=pid)
    log.warning("%s: back-end worker %d %s (injected fault)", label, pid, "frozen" if frozen else "continued")


# -- xenstore ------------------------------------------------------------------------


@dataclass(frozen=True)
class XenstoreRule:
    """xs-refuse or xs-delay on one path and everything below it."""

    id: int
    kind: str  # xs-refuse, xs-delay
    path: str  # absolute
    errno_name: str = "EACCES"
    delay_ms: int = 0

    def covers(self, path: str) -> bool:
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")


def check_xs_rule(kind: str, path: str, value: str | None) -> XenstoreRule:
    """A rule from the CLI's words (id 0 until added); FaultError naming what is wrong."""
    if not path.startswith("/"):
        raise FaultError(f"{kind} needs an absolute path (e.g. /local/domain/3/data), not {path!r}")
    if kind == "xs-refuse":
        name = (value or "EACCES").upper()
        if name not in XSD_ERRNO:
            raise FaultError(f"{name!r} is not a xenstore error: one of {', '.join(sorted(XSD_ERRNO))}")
        return XenstoreRule(0, kind, path, errno_name=name)
    try:
        delay = int(value or "")
    except ValueError:
        raise FaultError(f"xs-delay PATH MS: MS is a number of milliseconds, not {value!r}") from None
    if not 0 < delay <= 60_000:
        raise FaultError(f"a delay of {delay} ms is not within 1 to 60000")
    return XenstoreRule(0, kind, path, delay_ms=delay)


class XenstoreFaults:
    """The xenstore rules in force, and the requests they hold back per connection."""

    def __init__(self) -> None:
        self.rules: list[XenstoreRule] = []
        self.poll: Callable[[Callable[[], bool], float, Callable[[bool], None]], None] | None = None

    def match(self, domid: int, payload: bytes) -> XenstoreRule | None:
        """The first rule covering the path a guest's request names (its first string), if any."""
        if not self.rules:
            return None
        first = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        path = first if first.startswith("/") else f"{home_path(domid)}/{first}".rstrip("/")
        return next((rule for rule in self.rules if rule.covers(path)), None)


class HeldRequests:
    """One connection's requests held back by xs-delay, released in order when due."""

    def __init__(self) -> None:
        self.queue: deque[tuple[float, Any]] = deque()  # (due, message)

    def hold(self, message: Any, due: float) -> None:
        # A request behind a held one waits for it, whatever its own due time.
        if self.queue:
            due = max(due, self.queue[-1][0])
        self.queue.append((due, message))

    def due(self, now: float) -> list[Any]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(self.queue.popleft()[1])
        return out

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None


# -- block devices (run in blkback's worker) -----------------------------------------------


class SectorRanges:
    """The sector ranges sector-eio fails, inclusive: what a request touching one gets is BLKIF_RSP_ERROR."""

    def __init__(self, ranges: list[tuple[int, int]] | None = None) -> None:
        self.ranges = sorted(ranges or [])

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def hit(self, sector: int, count: int) -> int | None:
        """The first failing sector of the ``count`` sectors from ``sector``, or None if none fails."""
        end = sector + count - 1
        hits = [max(first, sector) for first, last in self.ranges if first <= end and sector <= last]
        return min(hits) if hits else None


def parse_sector_range(text: str, sectors: int) -> tuple[int, int]:
    """``FIRST`` or ``FIRST-LAST`` (inclusive, 512-byte sectors) within a disk of ``sectors``; FaultError if not."""
    first_text, dash, last_text = text.partition("-")
    try:
        first = int(first_text)
        last = int(last_text) if dash else first
    except ValueError:
        raise FaultError(f"a sector range is FIRST or FIRST-LAST (sector numbers), not {text!r}") from None
    if not 0 <= first <= last:
        raise FaultError(f"sector range {text!r}: FIRST must be at least 0 and at most LAST")
    if last >= sectors:
        raise FaultError(f"sector range {text!r} goes past the disk's last sector, {sectors - 1}")
    return first, last


def scribble_slot(slot: memoryview) -> None:
    """ring-corrupt slot: garbage op, nr_segments and grefs in one request slot, its id left as it was."""
    fields = list(REQUEST.unpack_from(slot))  # op, nr_segments, handle, id, sector, then (gref, first, last) each
    fields[0] = fields[1] = 0xFF
    fields[5::3] = [0xFFFF_FFFF] * len(fields[5::3])
    REQUEST.pack_into(slot, 0, *fields)


def scribble_req_prod(header: memoryview, rsp_prod: int, nr_ents: int) -> int:
    """ring-corrupt index: req_prod (the header's first word) more than a ring ahead of ``rsp_prod``; the value."""
    bogus = (rsp_prod + nr_ents + 1) & 0xFFFF_FFFF
    header[0:4] = bogus.to_bytes(4, "little")
    return bogus


def now() -> float:
    return time.monotonic()


class InjectedFaults:
    """The faults the toolstack injected, by id (``inject --list``)."""

    def __init__(self) -> None:
        self.faults: dict[int, Fault] = {}
        self._next_id = 0

    def add(self, kind: str, target: str, undo: Callable[[], None] | None, done: bool = False) -> Fault:
        self._next_id += 1
        fault = Fault(self._next_id, kind, target, undo, done)
        self.faults[fault.id] = fault
        return fault

    def clear(self, fault_id: int | None = None) -> list[int]:
        """Undo one fault (or every one) and forget it; the ids cleared. FaultError for an unknown id."""
        if fault_id is not None and fault_id not in self.faults:
            raise FaultError(f"no injected fault #{fault_id}; `xenlike inject --list` shows them")
        ids = [fault_id] if fault_id is not None else sorted(self.faults)
        for number in ids:
            fault = self.faults.pop(number)
            if fault.undo is not None and not fault.done:
                try:
                    fault.undo()
                except (OSError, FaultError) as exc:  # its target is gone: nothing is left to undo
                    log.info("fault #%d (%s %s): not undone: %s", number, fault.kind, fault.target, exc)
        return ids
