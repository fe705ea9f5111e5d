"""The receiving end of a migration (``xl migrate-receive``; libxl's ``libxl_domain_create_restore``
fed from a socket), on threads of its own.

``up --listen ADDR:PORT`` starts a :class:`MigrationListener`: a ROUTER socket
on tcp and a key this host made (``xenlike info`` shows both). Each sender that
proves it knows the key (``xenlike.public.migration_channel``) gets a
:class:`Incoming`: its stream is parsed on a thread as it comes, every record
checked, and the sender is granted more of it (CREDIT) as the parser takes it,
so no more than the channel's window waits unapplied; pages go into a staging
memfd, so nothing exists on this host until the stream is whole. Then dom0's
loop builds the domain from the staging memory and the image (``ops_migrate``),
and the sender is told DONE. A session that is refused, aborted or falls silent
leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from xenlike.kernel.memory import GuestMemory
from xenlike.public import migration_channel as ch
from xenlike.public.migration_stream import DomainInfo, PageData, PageType, StreamError, StreamReader
from xenlike.public.xen import PAGE_SIZE

from ..builder import DomainBuilder
from ..devices import DEVICE_TYPES
from .ops_migrate import Image, ImageAssembler, carried_config, domain_quotas, restore_image
from .request import ToolstackError

if TYPE_CHECKING:
    from ..builder import BuiltDomain
    from .server import Toolstack

__all__ = ["MigrationListener", "SESSION_IDLE_S"]

log = logging.getLogger("dom0.toolstack")

SESSION_IDLE_S = 30.0  # a sender silent this long is forgotten
HANDSHAKE_S = 5.0  # a peer that has not proved the key this long after its HELLO is forgotten
GO_TIMEOUT_S = 10.0  # how long a built domain waits for the sender's GO
_POLL_MS = 5
MAX_SESSIONS = 8  # migrations coming in at once, handshakes included: more are refused


class _Round:
    """A ROUND marker in a session's stream: answered once what came before it is applied."""

    def __init__(self, number: int) -> None:
        self.number = number


class Incoming:
    """One migration coming in: its handshake state, and once authenticated, its parser thread."""

    def __init__(self, listener: MigrationListener, identity: bytes) -> None:
        self.listener = listener
        self.identity = identity
        self.nonce = secrets.token_bytes(32)
        self.authed = False
        self.seq = 0
        self.last_heard = time.monotonic()
        self.name = "?"
        self._chunks: queue.SimpleQueue[bytes | _Round | None] = queue.SimpleQueue()
        self._buffer = bytearray()
        # The stream's window (migration_channel.STREAM_WINDOW): the listener counts the STREAM
        # messages that came, the parser grants more as it takes them (CREDIT).
        self.stream_messages = 0
        self.granted = ch.STREAM_WINDOW
        self._taken = 0  # chunks taken since the last CREDIT
        self.staging: GuestMemory | None = None  # the new domain's memory, as dom0 maps it
        self.precreated: tuple[dict[str, Any], int] | None = None  # its createdomain result and memfd
        self.built = False
        self.go = threading.Event()  # GO, or ABORT, came
        self.aborted = False
        self.received: set[int] = set()
        self.finished = False
        self._thread: threading.Thread | None = None

    # -- the listener thread's side ---------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._parse, name=f"migrate-in-{self.name}", daemon=True)
        self._thread.start()

    def feed(self, item: bytes | _Round | None) -> None:
        self._chunks.put(item)

    # -- the parser thread --------------------------------------------------------------------

    def _read(self, size: int) -> bytes:
        """The stream's next ``size`` octets, answering ROUND markers met between records."""
        while len(self._buffer) < size:
            if self._taken and self._chunks.empty():
                self._grant()  # about to wait: the sender may be waiting for credit
            item = self._chunks.get()
            if item is None:
                break  # aborted or gone: the reader sees a truncated stream
            if isinstance(item, _Round):
                if self._buffer:
                    raise StreamError(f"ROUND {item.number} came in the middle of a record")
                self._answer_round(item.number)
                continue
            self._buffer += item
            self._taken += 1
            if self._taken >= ch.STREAM_WINDOW // 4:
                self._grant()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _grant(self) -> None:
        """CREDIT for the chunks taken since the last one: the sender may send as many more."""
        taken, self._taken = self._taken, 0
        self.granted += taken  # before the CREDIT leaves, so the listener never refuses what it allows
        self.listener.send(self, ch.CREDIT, ch.encode({"chunks": taken}))

    def _answer_round(self, number: int) -> None:
        if number == 0:
            self._check_target()
        self.listener.send(self, ch.ROUND_OK, ch.encode({"round": number}))

    def _parse(self) -> None:
        try:
            reader = StreamReader(self._read)
            quotas = self.listener.calls(lambda: domain_quotas(self.listener.ts))
            self.assembler = ImageAssembler(f"the migration of {self.name}", self._put_pages, self._on_info, quotas)
            for item in reader:
                self.assembler.take(item)
            image = self.assembler.finish(reader.skipped)
            began = time.monotonic()
            built = self._build_saying_so(image)
            log.info("%s: built from its stream in %.0f ms", self.name, (time.monotonic() - began) * 1000)
            self.listener.send(self, ch.DONE, ch.encode({"domid": built.domid, "name": built.name}))
            self._start_on_go(built)
        except (StreamError, ToolstackError, OSError, ch.ChannelError) as exc:
            if not self.finished:
                log.warning("migration of %s refused: %s", self.name, exc)
                self.listener.send(self, ch.REFUSED, str(exc).encode())
        except Exception as exc:
            log.exception("migration of %s failed", self.name)
            self.listener.send(self, ch.REFUSED, f"{type(exc).__name__}: {exc}".encode())
        finally:
            self.finished = True
            if self.staging is not None:
                self.staging.close()
                self.staging = None
            self._discard()
            if self.precreated is not None:
                os.close(self.precreated[1])
            self.listener.forget(self)

    def _build_saying_so(self, image: Image) -> BuiltDomain:
        """Build the domain on dom0's loop, telling the sender BUILDING at once and every
        :data:`~xenlike.public.migration_channel.BUILDING_INTERVAL_S` until it is built."""
        built = threading.Event()

        def say_building() -> None:
            while not built.wait(ch.BUILDING_INTERVAL_S):
                self.listener.send(self, ch.BUILDING, b"")

        self.listener.send(self, ch.BUILDING, b"")
        heartbeat = threading.Thread(target=say_building, name=f"building-{self.name}", daemon=True)
        heartbeat.start()
        try:
            return self.listener.calls(lambda: self._build(image))
        finally:
            built.set()
            heartbeat.join()

    def _start_on_go(self, built: BuiltDomain) -> None:
        """Run the domain once the sender says GO; without it in time (the sender gave up), destroy it."""
        ts = self.listener.ts
        if self.go.wait(GO_TIMEOUT_S) and not self.aborted:
            self.listener.calls(lambda: ts.hypercall("domctl", cmd="unpausedomain", domid=built.domid))
            self.listener.send(self, ch.STARTED, ch.encode({"domid": built.domid}))
            log.info("%s: migrated in as d%d (%d pages)", self.name, built.domid, self.assembler.pages)
            return
        log.warning("%s: no GO from the sender; the copy made here is destroyed", self.name)
        self.listener.calls(lambda: ts.lifecycle.destroy(built))

    def _on_info(self, info: DomainInfo) -> None:
        """The domain is made now, not started, as libxl creates a domain before libxc restores into it:
        each page is written into its memory as it comes, and nothing is copied once the guest stops."""
        self.name = info.name
        self.info = info
        ts = self.listener.ts
        if self.listener.calls(lambda: any(d.name == info.name for d in ts.domains.values())):
            raise ToolstackError(f"this host already has a domain named {info.name!r}")
        args = DomainBuilder.createdomain_args({**info.config, "name": f"{info.name}--incoming"}, info.uuid)
        result, fds = self.listener.calls(lambda: ts.hypercall("domctl", **args))
        self.precreated = (result, fds[0])
        if result["nr_frames"] != info.nr_frames:
            raise ToolstackError(
                f"the stream's domain has {info.nr_frames} frames; its config gives {result['nr_frames']}"
            )
        self.staging = GuestMemory.from_fd(os.dup(fds[0]), result["nr_frames"])

    def _check_target(self) -> None:
        """ROUND 0: can this host take the domain? Its name free, its disks reachable here."""
        info = getattr(self, "info", None)
        if info is None:
            raise StreamError("ROUND 0 came before DOMAIN_INFO")
        config = carried_config(info.config)
        for row in DEVICE_TYPES:
            for spec in config.get(row.config_key, []):
                row.prepare(dict(spec))  # a disk image this host cannot open is refused before any page moves

    def _put_pages(self, page_data: PageData) -> None:
        staging = self.staging
        assert staging is not None  # made at DOMAIN_INFO, which comes first
        for pfn, kind, data in page_data.pages():
            if kind == PageType.XTAB:
                continue
            staging.frame(pfn)[:] = data if data is not None else bytes(PAGE_SIZE)
            self.received.add(pfn)

    def _build(self, image: Image) -> BuiltDomain:
        """dom0's loop: the domain made at DOMAIN_INFO, its pages in place, built and started."""
        assert self.precreated is not None

        def fill(built: BuiltDomain) -> dict[str, Any]:
            pfn, length = image.place
            built.memory.view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length] = image.record
            return {"resume": list(image.place)}

        result, fd = self.precreated
        built = restore_image(self.listener.ts, image, paused=True, fill=fill, precreated=(result, os.dup(fd)))
        self.built = True
        return built

    def _discard(self) -> None:
        """A session that did not end in a domain: the one made for it goes."""
        if self.precreated is None or self.built:
            return
        result, fd = self.precreated
        ts = self.listener.ts
        try:
            self.listener.calls(lambda: ts.hypercall("domctl", cmd="destroydomain", domid=result["domid"]))
        except OSError as exc:
            log.warning("migration of %s: the domain made for it: %s", self.name, exc)


class MigrationListener:
    """A host's listener for incoming migrations: ``tcp://ADDR:PORT`` and its key, on a thread of its own."""

    def __init__(self, ts: Toolstack, address: str, port: int) -> None:
        self.ts = ts
        self.endpoint = f"tcp://{address}:{port}"
        self.key = ch.new_key()
        self.context: zmq.Context = zmq.Context()
        self._outbox: queue.SimpleQueue[tuple[bytes, list[bytes]]] = queue.SimpleQueue()
        self._forgotten: queue.SimpleQueue[Incoming] = queue.SimpleQueue()  # sessions that ended, to drop
        self._sessions: dict[bytes, Incoming] = {}
        self._running = True
        bound: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, args=(bound,), name="migrate-listen", daemon=True)
        self._thread.start()
        error = bound.get(timeout=10)
        if error is not None:
            self.context.term()
            raise ToolstackError(f"cannot listen for migrations on {self.endpoint}: {error}")

    def calls(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on dom0's loop and wait for it."""
        return self.ts.calls.call(fn)

    def send(self, session: Incoming, kind: bytes, body: bytes) -> None:
        """Queue a message for a sender (any thread); the listener thread sends it."""
        self._outbox.put((session.identity, [kind, body]))

    def forget(self, session: Incoming) -> None:
        self._forgotten.put(session)  # the listener thread drops it, if it is still the one of its identity

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5)
        for session in list(self._sessions.values()):
            session.feed(None)
        self.context.term()

    def info(self) -> dict[str, str]:
        return {"listen": self.endpoint, "key": self.key}

    # -- the listener thread ---------------------------------------------------------------

    def _run(self, bound: queue.SimpleQueue[BaseException | None]) -> None:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, ch.MAX_FRAME)  # a peer announcing more is dropped before it is read
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            bound.put(exc)
            return
        bound.put(None)
        log.info("d0 (Domain-0): accepting migrations on %s", self.endpoint)
        try:
            while self._running:
                if sock.poll(_POLL_MS):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self._on_message(sock, frames[0], frames[1:])
                        except Exception as exc:  # one peer's message must not end the listener
                            log.exception("a migration message could not be handled")
                            self._refuse(sock, frames[0], f"the message could not be handled: {exc}")
                self._flush(sock)
                self._expire()
        finally:
            sock.close()

    def _flush(self, sock: zmq.Socket) -> None:
        while True:
            try:
                session = self._forgotten.get_nowait()
            except queue.Empty:
                break
            if self._sessions.get(session.identity) is session:  # not a newer session of the same peer
                del self._sessions[session.identity]
        while True:
            try:
                identity, frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(sock, identity, frames)

    def _send(self, sock: zmq.Socket, identity: bytes, frames: list[bytes]) -> bool:
        """Send without ever waiting (a peer that reads nothing must not stop the listener); False if not sent."""
        try:
            sock.send_multipart([identity, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            log.info("a migration sender is gone or reads nothing: %s", exc)
            return False

    def _expire(self) -> None:
        now = time.monotonic()
        for identity, session in list(self._sessions.items()):
            idle = now - session.last_heard
            if not session.authed and idle > HANDSHAKE_S:  # a HELLO and nothing more holds a place for no one
                self._sessions.pop(identity, None)
            elif idle > SESSION_IDLE_S and not session.finished:
                log.warning("migration of %s: the sender fell silent; forgotten", session.name)
                session.feed(None)
                self._sessions.pop(identity, None)

    def _refuse(self, sock: zmq.Socket, identity: bytes, why: str) -> None:
        log.warning("a migration was refused: %s", why)
        try:
            sock.send_multipart([identity, ch.REFUSED, why.encode()], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        session = self._sessions.pop(identity, None)
        if session is not None:
            session.feed(None)

    def _on_message(self, sock: zmq.Socket, identity: bytes, frames: list[bytes]) -> None:
        session = self._sessions.get(identity)
        kind = frames[0] if frames else b""
        if session is None:
            if kind != ch.HELLO:
                return self._refuse(sock, identity, "a migration starts with HELLO")
            if len(self._sessions) >= MAX_SESSIONS:
                return self._refuse(sock, identity, f"{MAX_SESSIONS} migrations are coming in already; try later")
            session = Incoming(self, identity)
            if self._send(sock, identity, [ch.CHALLENGE, session.nonce]):
                self._sessions[identity] = session
            return
        session.last_heard = time.monotonic()
        if not session.authed:
            if kind != ch.AUTH or len(frames) != 2 or not ch.check_auth(self.key, session.nonce, frames[1]):
                return self._refuse(sock, identity, "the key is wrong (`xenlike info` on the receiving host shows it)")
            session.authed = True
            if not self._send(sock, identity, [ch.OK, ch.encode({"window": ch.STREAM_WINDOW})]):
                self._sessions.pop(identity, None)
                return
            session.start()
            return
        try:
            kind, body = ch.unseal(self.key, session.nonce, frames, session.seq)
        except ch.ChannelError as exc:
            return self._refuse(sock, identity, str(exc))
        session.seq += 1
        if kind == ch.STREAM:
            session.stream_messages += 1
            if session.stream_messages > session.granted:
                return self._refuse(
                    sock,
                    identity,
                    f"STREAM message {session.stream_messages} goes beyond what the target granted "
                    f"({ch.STREAM_WINDOW} ahead of what it applied; wait for CREDIT)",
                )
            session.feed(body)
        elif kind == ch.ROUND:
            try:
                number = ch.decode(body)["round"]
            except (ch.ChannelError, KeyError, TypeError):
                number = None
            if type(number) is not int or number < 0:
                return self._refuse(sock, identity, "a ROUND message without its number")
            session.feed(_Round(number))
        elif kind == ch.GO:
            session.go.set()
        elif kind == ch.ABORT:
            log.info("migration of %s aborted by the sender: %s", session.name, body.decode(errors="replace"))
            session.aborted = True
            session.go.set()
            session.feed(None)
        else:
            self._refuse(sock, identity, f"unexpected {kind.decode(errors='replace')} message")
