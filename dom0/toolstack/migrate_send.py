"""The sending end of a live migration (``xl migrate``; libxc's ``xg_sr_save.c`` with
``simple_precopy_policy``), on a thread of its own.

After the handshake (``xenlike.public.migration_channel``) the stream's static
records go first, and the target says whether it can take the domain before any
page moves. Then pre-copy, as Clark et al. and Xen do it: log-dirty mode on,
round 1 sends every frame that holds data, each later round the frames written
during the one before (``shadow_op clean``), until fewer than ``target_dirty``
(50) were written or ``max_rounds`` (5) rounds have gone; then stop-and-copy: the
guest suspends, the last dirty frames and the rest of its state go, and once the
target answers DONE the domain here is destroyed. Where log-dirty mode is not
available (the kernel lacks it, or the domain has secondary vCPUs) the
migration says so in one line and stops and copies at once.

Every step waits for the target with a deadline: a target that refuses, dies or
falls silent ends the migration, and the guest runs on here (resumed if it was
suspended), unharmed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from xenlike.public import migration_channel as ch
from xenlike.public.migration_stream import DeviceState, StreamWriter
from xenlike.public.xen import PAGE_SIZE
from xenlike.public.xs_wire import XsError

from ..devices import DEVICE_TYPES
from .ops_migrate import (
    SUSPEND_TIMEOUT_S,
    carried_nodes,
    data_frames,
    first_free_pfn,
    resume_domain,
    suspend_domain,
    suspend_record,
    write_domain_records,
)
from .request import Request

if TYPE_CHECKING:
    from ..builder import BuiltDomain
    from .server import Toolstack

__all__ = ["Policy", "Migration", "ANSWER_TIMEOUT_S"]

log = logging.getLogger("dom0.toolstack")

ANSWER_TIMEOUT_S = 10.0  # how long the target may be silent: a step (handshake, a round), or between BUILDINGs
BUILD_TIMEOUT_S = 30.0  # how long the target may build, saying BUILDING
CHUNK = ch.STREAM_CHUNK  # octets of stream per STREAM message
ABORT_LINGER_MS = 2000  # how long a sender that gave up keeps trying to deliver its ABORT


class MigrationFailed(Exception):
    """The migration cannot go on; the message says why, for the user."""


class TargetSilent(MigrationFailed):
    """The target said nothing within the time it had."""


class Stranded(Exception):
    """The target was told GO but did not say it started: the guest is not resumed here."""


@dataclass
class Policy:
    """``simple_precopy_policy`` (``xg_sr_save.c``): stop and copy below ``target_dirty`` dirty frames or after
    ``max_rounds`` rounds; ``live = False`` stops and copies at once."""

    target_dirty: int = 50  # SPP_TARGET_DIRTY_COUNT
    max_rounds: int = 5  # SPP_MAX_ITERATIONS
    live: bool = True


class Migration:
    """One domain on its way to another host; :meth:`start` runs it on a thread and answers ``request``."""

    def __init__(
        self, ts: Toolstack, request: Request, built: BuiltDomain, endpoint: str, key: str, policy: Policy
    ) -> None:
        self.ts = ts
        self.request = request
        self.built = built
        self.endpoint = endpoint
        self.key = key
        self.policy = policy
        self.context: zmq.Context = zmq.Context()
        self.sock: zmq.Socket = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # zmq reconnects behind a socket's back and drops what was queued to a peer that went away: for a
        # stream that is the end of the migration, said at once rather than after a silence.
        self.disconnects: zmq.Socket = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.nonce = b""
        self.seq = 0
        self._pending = bytearray()
        self._credit = 0  # STREAM messages the target has granted and not yet been sent
        self.writer: StreamWriter | None = None
        self.rounds: list[dict[str, Any]] = []
        self.suspended = False
        self.logdirty = False
        self.started = time.monotonic()

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"migrate-{self.built.name}", daemon=True).start()

    # -- what the thread asks of dom0's loop --------------------------------------------------

    def _loop(self, fn: Any, timeout: float | None = 30.0) -> Any:
        return self.ts.calls.call(fn, timeout)

    def _hypercall(self, **args: Any) -> Any:
        return self._loop(lambda: self.ts.hypercall("domctl", **args)[0])

    def _event(self, **event: Any) -> None:
        self.ts.calls.submit(lambda: self.request.event(event))

    # -- the wire ------------------------------------------------------------------------------

    def _send(self, kind: bytes, body: bytes) -> None:
        if kind == ch.STREAM:
            while self._credit <= 0:
                self._wait_for_credit()
            self._credit -= 1
        self.sock.send_multipart(ch.seal(self.key, self.nonce, kind, self.seq, body))
        self.seq += 1

    def _wait_for_credit(self) -> None:
        """Until the target grants more of the stream (CREDIT); MigrationFailed if it refuses or stops taking it."""
        kind, body = self._receive(ANSWER_TIMEOUT_S)
        if kind != ch.CREDIT:
            raise MigrationFailed(f"the target answered {kind!r} where {ch.CREDIT!r} was due")
        self._take_credit(body)

    def _take_credit(self, body: bytes) -> None:
        try:
            chunks = ch.decode(body)["chunks"]
        except (ch.ChannelError, KeyError, TypeError):
            chunks = None
        if type(chunks) is not int or chunks < 1:
            raise MigrationFailed(f"the target sent a CREDIT that grants no chunks: {body[:80]!r}")
        self._credit += chunks

    def _write(self, data: bytes) -> None:
        """The StreamWriter's output: gathered into STREAM messages of CHUNK octets (the last of a round shorter)."""
        self._pending += data
        while len(self._pending) >= CHUNK:  # a record may be longer than a chunk: it is cut, the receiver joins
            self._send(ch.STREAM, bytes(self._pending[:CHUNK]))
            del self._pending[:CHUNK]

    def _flush(self) -> None:
        if self._pending:
            self._send(ch.STREAM, bytes(self._pending))
            self._pending.clear()

    def _answer(self, expect: bytes, timeout: float = ANSWER_TIMEOUT_S) -> bytes:
        """The body of the target's next message, which must be ``expect``; MigrationFailed for a refusal, a
        closed connection or silence."""
        kind, body = self._message(timeout)
        if kind != expect:
            raise MigrationFailed(f"the target answered {kind!r} where {expect!r} was due")
        return body

    def _message(self, timeout: float) -> tuple[bytes, bytes]:
        """The target's next answer as (kind, body), CREDITs taken on the way; MigrationFailed for a refusal,
        a closed connection or silence. CREDITs do not extend ``timeout``: the answer itself must come in it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, body = self._receive(max(0.0, deadline - time.monotonic()))
            except TargetSilent:
                raise TargetSilent(f"the target ({self.endpoint}) did not answer within {timeout:g}s") from None
            if kind != ch.CREDIT:
                return kind, body
            self._take_credit(body)

    def _receive(self, timeout: float) -> tuple[bytes, bytes]:
        """The target's next message as (kind, body); MigrationFailed for a refusal, a closed connection or silence."""
        self._wait_for_answer(timeout)
        frames = self.sock.recv_multipart()
        if frames[0] == ch.REFUSED:
            raise MigrationFailed(f"the target refused it: {b''.join(frames[1:]).decode(errors='replace')}")
        return frames[0], frames[1] if len(frames) > 1 else b""

    def _built(self) -> bytes:
        """DONE's body, once the target has built the domain: it may build for :data:`BUILD_TIMEOUT_S`,
        saying BUILDING meanwhile, and fall silent for :data:`ANSWER_TIMEOUT_S` at most."""
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        too_long = f"the target ({self.endpoint}) did not build it within {BUILD_TIMEOUT_S:g}s"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MigrationFailed(too_long)
            try:
                kind, body = self._message(min(ANSWER_TIMEOUT_S, left))
            except TargetSilent:
                if left <= ANSWER_TIMEOUT_S:  # the build's time ran out, not only the target's patience
                    raise MigrationFailed(too_long) from None
                raise
            if kind == ch.DONE:
                return body
            if kind != ch.BUILDING:
                raise MigrationFailed(f"the target answered {kind!r} where {ch.DONE!r} was due")

    def _wait_for_answer(self, timeout: float) -> None:
        """Until the target's next message is there; MigrationFailed if its connection closes first,
        TargetSilent at ``timeout`` (a target that is alive but stuck keeps its connection open)."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.disconnects, zmq.POLLIN)
        ready = dict(poller.poll(int(timeout * 1000)))
        if self.sock in ready:
            return
        if self.disconnects in ready:
            raise MigrationFailed(f"the target ({self.endpoint}) closed the connection")
        raise TargetSilent(f"the target ({self.endpoint}) did not answer within {timeout:g}s")

    def _round(self, number: int) -> None:
        """End a round: everything sent so far is applied at the target once it answers."""
        self._flush()
        self._send(ch.ROUND, ch.encode({"round": number}))
        self._answer(ch.ROUND_OK)

    # -- the migration -------------------------------------------------------------------------

    def _run(self) -> None:
        built = self.built
        try:
            result = self._migrate()
        except MigrationFailed as exc:
            self._give_up(str(exc))
            return
        except Stranded as exc:
            why = f"{built.name}: {exc}"
            log.error("%s: migration to %s: %s", built.label, self.endpoint, exc)
            self.ts.calls.submit(lambda: self.request.fail(why))
            return
        except Exception as exc:
            log.exception("%s: migration failed", built.label)
            self._give_up(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.sock.disable_monitor()
            self.disconnects.close(linger=0)
            self.sock.close()
            self.context.term()
        self.ts.calls.submit(lambda: self.request.reply(result))

    def _give_up(self, why: str) -> None:
        """The guest runs on here: log-dirty off, resumed if it was suspended; the request fails saying why."""
        built = self.built
        if self.nonce:
            # The ABORT goes out with what is queued before it, for a while: a target that only stalled then
            # frees its copy at once rather than when it finds this sender silent.
            self.sock.setsockopt(zmq.LINGER, ABORT_LINGER_MS)
            try:
                self.sock.send_multipart(ch.seal(self.key, self.nonce, ch.ABORT, self.seq, why.encode()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

        def undo() -> None:
            if self.logdirty:
                self._logdirty_off()
            if self.suspended:
                resume_domain(self.ts, built)
            log.warning("%s: migration to %s failed: %s; it runs on here", built.label, self.endpoint, why)
            self.request.fail(f"{built.name} was not migrated: {why}; it runs on here")

        self.ts.calls.submit(undo)

    def _logdirty_off(self) -> None:
        try:
            self.ts.hypercall("domctl", cmd="shadow_op", action="off", domid=self.built.domid)
        except OSError:
            pass
        self.logdirty = False

    def _handshake(self) -> None:
        self.sock.connect(self.endpoint)
        self.sock.send_multipart([ch.HELLO, ch.encode({"domain": self.built.name})])
        if not self.sock.poll(int(ANSWER_TIMEOUT_S * 1000)):
            raise MigrationFailed(f"nothing answers at {self.endpoint} (is the target up with --listen?)")
        frames = self.sock.recv_multipart()
        if frames[0] != ch.CHALLENGE or len(frames) != 2:
            raise MigrationFailed(f"{self.endpoint} does not speak xenlike's migration protocol")
        self.nonce = frames[1]
        self.sock.send_multipart([ch.AUTH, ch.auth_reply(self.key, self.nonce)])
        try:
            window = ch.decode(self._answer(ch.OK))["window"]
        except (ch.ChannelError, KeyError, TypeError):
            window = None
        if type(window) is not int or window < 1:
            raise MigrationFailed(f"{self.endpoint} did not grant a stream window (is it an older xenlike?)")
        self._credit = window

    def _static(self, writer: StreamWriter) -> None:
        built = self.built
        config = built.config
        write_domain_records(built, writer)
        for row in DEVICE_TYPES:
            for spec in config.get(row.config_key, []):
                writer.device_state(DeviceState(row.kind, int(spec["devid"]), spec))
        writer.static_data_end()

    def _enable_logdirty(self) -> bool:
        """Log-dirty mode on and armed; False (said in one line) where it cannot be."""
        domid = self.built.domid
        try:
            self._hypercall(cmd="shadow_op", action="enable_logdirty", domid=domid)
        except OSError as exc:
            self._event(note=f"live migration is not available ({exc.strerror or exc}); stopping and copying")
            return False
        self.logdirty = True
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not self._hypercall(cmd="shadow_op", action="status", domid=domid)["armed"]:
            if time.monotonic() > deadline:
                raise MigrationFailed("the guest did not hand over its dirty log in time")
            time.sleep(0.005)
        return True

    def _send_pages(self, writer: StreamWriter, pfns: list[int]) -> int:
        memory = self.built.memory
        for start in range(0, len(pfns), 1024):
            writer.page_data([(pfn, memory.frame(pfn)) for pfn in pfns[start : start + 1024]])
        return len(pfns)

    def _migrate(self) -> dict[str, Any]:
        built, policy = self.built, self.policy
        self._handshake()
        writer = self.writer = StreamWriter(self._write)
        self._static(writer)
        self._round(0)  # the target can take it: its name is free there, its disks reachable
        live = policy.live and self._enable_logdirty()
        pfns = list(data_frames(built, first_free_pfn(built.config)))
        sent = 0
        number = 1
        while live:
            began = time.monotonic()
            sent += self._send_pages(writer, pfns)
            self._round(number)
            dirty = self._hypercall(cmd="shadow_op", action="clean", domid=built.domid)["pfns"]
            dirty = [pfn for pfn in dirty if pfn >= first_free_pfn(built.config)]
            self._progress(number, len(pfns), sent, time.monotonic() - began, len(dirty))
            pfns = dirty
            number += 1
            if len(dirty) < policy.target_dirty or number > policy.max_rounds:
                break
        # Stop and copy.
        suspend_began = time.monotonic()
        info = self._suspend()
        stopped = time.monotonic()
        if live:
            # The frames the last round left dirty, and those written since, up to the suspend.
            last = self._hypercall(cmd="shadow_op", action="clean", domid=built.domid)["pfns"]
            pfns = sorted(set(pfns).union(pfn for pfn in last if pfn >= first_free_pfn(built.config)))
            self._loop(self._logdirty_off)
        began = time.monotonic()
        sent += self._send_pages(writer, pfns)
        nodes = self._loop(lambda: carried_nodes(self.ts, built))
        writer.xenstore_data(nodes)
        writer.workload_state(suspend_record(built, info))
        writer.console_history(self._loop(lambda: self.ts.xenconsoled.history(built.domid)))
        writer.end()
        self._flush()
        sent_at = time.monotonic()
        done = ch.decode(self._built())
        # The target has it built and paused: from GO on, the copy there is the guest.
        self._send(ch.GO, b"")
        self.suspended = False  # never resumed here from now on: two copies must not run
        try:
            self._answer(ch.STARTED)
        except MigrationFailed as exc:
            raise Stranded(
                f"{exc}; the target may or may not run it, so the copy here stays suspended "
                f"(`xenlike list` on the target tells; `xenlike destroy {built.name}` here once it runs there)"
            ) from None
        downtime = time.monotonic() - stopped
        log.info(
            "%s: stop-and-copy: suspended in %.0f ms, %d pages sent in %.0f ms, built at the target in %.0f ms",
            built.label,
            (stopped - suspend_began) * 1000,
            len(pfns),
            (sent_at - began) * 1000,
            (time.monotonic() - sent_at) * 1000,
        )
        self._progress(number, len(pfns), sent, time.monotonic() - began, 0, final=True)

        def finish() -> None:
            try:
                self.ts.lifecycle.destroy(built)
            except (OSError, XsError) as exc:
                log.warning("%s: destroying it after its migration: %s", built.label, exc)

        self._loop(finish)
        total = time.monotonic() - self.started
        log.info(
            "%s: migrated to %s as d%s: %d round(s), %d pages, downtime %.0f ms",
            built.label,
            self.endpoint,
            done.get("domid"),
            number,
            sent,
            downtime * 1000,
        )
        return {
            "name": built.name,
            "domid": done.get("domid"),
            "rounds": number,
            "pages": sent,
            "bytes": writer.octets,
            "nr_frames": built.memory.nr_frames,
            "total_ms": total * 1000,
            "downtime_ms": downtime * 1000,
            "live": live,
            "round_stats": self.rounds,
        }

    def _suspend(self) -> dict:
        box: dict[str, Any] = {}
        done = threading.Event()

        def suspended(info: dict | None, why: str) -> None:
            box["info"], box["why"] = info, why
            done.set()

        self._loop(lambda: suspend_domain(self.ts, self.built, suspended))
        if not done.wait(SUSPEND_TIMEOUT_S + 5):
            raise MigrationFailed("the guest did not suspend in time")
        if box["info"] is None:
            raise MigrationFailed(f"it did not suspend: {box['why']}")
        self.suspended = True
        return box["info"]

    def _progress(self, number: int, pages: int, sent: int, seconds: float, dirty: int, final: bool = False) -> None:
        mib_s = pages * PAGE_SIZE / (1 << 20) / seconds if seconds > 0 else 0.0
        row = {"round": number, "pages": pages, "sent": sent, "mib_s": mib_s, "dirty": dirty, "final": final}
        self.rounds.append(row)
        self._event(progress=row)
