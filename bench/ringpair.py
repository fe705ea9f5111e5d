"""Two processes, one shared ring, one event-channel pair: the split-driver data path.

A front-end process (domain 1) and a back-end process (domain 0) are set up the way
a toolstack and hypervisor set up a split device: the front allocates ring pages in
its own memory, grants them to dom0 and allocates an unbound event-channel port;
the back binds that port and maps the grants after the binder (standing in for the
hypervisor) checked them. Every fd travels over AF_UNIX with SCM_RIGHTS.

Two request modes:

* ``checksum``: every request carries a sequence number, a payload and its CRC-32;
  the back end checks each one and answers with the sequence number and a CRC of
  its own over the payload; the front checks every response, in order.
* ``echo``: the back end answers each batch of requests with the same slots (a
  response per request); the front compares every response batch, byte for byte,
  with what it sent. This is the throughput mode the ring benchmark uses.

Used by ``bench/ring.py`` and by the cross-process ring test.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import struct
import time
import zlib
from dataclasses import dataclass

from xenlike.hypervisor.event_channel import EventChannelHost
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.kernel.events import EventLoop
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import recv_message, send_message, socketpair
from xenlike.kernel.memory import ForeignMapping, GuestMemory, PageAllocator
from xenlike.public.ring import BackRing, FrontRing, RingProtocol

FRONT_DOMID = 1
BACK_DOMID = 0
GNTTAB_PFN = 1
GNTTAB_FRAMES = 1
RING_PFN_FIRST = GNTTAB_PFN + GNTTAB_FRAMES

# 64-byte slots: id, crc, payload (checksum mode) / opaque 64 bytes (echo mode).
PAYLOAD = 52
PAIR_PROTOCOL = RingProtocol(
    "pair",
    request=struct.Struct(f"<QI{PAYLOAD}s"),
    response=struct.Struct(f"<QI{PAYLOAD}s"),
)
SLOT = PAIR_PROTOCOL.entry_size
# A wait on the event channel gives up after this long and looks at the ring anyway,
# so a lost wake-up would cost a delay, never a hang; such waits are counted.
WAIT_BOUND_S = 1.0


@dataclass
class PairResult:
    pairs: int
    elapsed_s: float
    front_notifies: int
    back_notifies: int
    front_lost_wakeups: int
    back_lost_wakeups: int
    errors: list[str]

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.elapsed_s

    @property
    def notify_per_req(self) -> float:
        return (self.front_notifies + self.back_notifies) / max(self.pairs, 1)


def payload_for(seq: int) -> bytes:
    """A payload that differs for every sequence number."""
    return (seq.to_bytes(8, "little") * 7)[:PAYLOAD]


def response_crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, seq & 0xFFFFFFFF)


class _Waiter:
    """Waits for an upcall on one port, counting bounded waits that found work."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.lost_wakeups = 0

    def wait(self, has_work) -> None:
        if self.loop.poll(WAIT_BOUND_S) == 0 and has_work():
            self.lost_wakeups += 1


def _front(sock: socket.socket, pairs: int, ring_pages: int, mode: str, out: socket.socket) -> None:
    (msg, fds) = recv_message(sock)
    memory = GuestMemory.from_fd(fds[0], msg["nr_frames"])
    grants = GrantTable(memory, GNTTAB_PFN, GNTTAB_FRAMES)
    pages = PageAllocator(RING_PFN_FIRST, memory.nr_frames)
    first = pages.alloc(ring_pages)
    ring = FrontRing(memory.frames(first, ring_pages), PAIR_PROTOCOL)
    refs = [grants.grant_access(BACK_DOMID, first + i) for i in range(ring_pages)]
    send_message(sock, {"op": "alloc_unbound", "remote_dom": BACK_DOMID})
    reply, port_fds = recv_message(sock)
    port = reply["port"]
    loop = EventLoop("front")
    loop.bind(port, port_fds[0])
    send_message(sock, {"op": "publish", "ring_refs": refs, "port": port})
    connected, send_fds = recv_message(sock)  # the back bound our port
    loop.connect(port, send_fds[0])
    waiter = _Waiter(loop)
    errors: list[str] = []
    notifies = 0

    start = time.perf_counter()
    if mode == "echo":
        notifies = _front_echo(ring, loop, port, waiter, pairs, errors)
    else:
        notifies = _front_checksum(ring, loop, port, waiter, pairs, errors)
    elapsed = time.perf_counter() - start

    send_message(out, {"elapsed": elapsed, "notifies": notifies, "lost": waiter.lost_wakeups, "errors": errors[:10]})
    ring.release()
    grants.release()
    loop.close()
    memory.close()


def _front_echo(ring: FrontRing, loop: EventLoop, port: int, waiter: _Waiter, pairs: int, errors: list[str]) -> int:
    # The slots of a batch are all different and each batch starts with its own
    # sequence number, so a response slot lost, duplicated or reordered, within a
    # batch or across batches, fails the comparison.
    batch = ring.nr_ents // 2
    template = bytearray(PAIR_PROTOCOL.pack_requests((i, 0, payload_for(i)) for i in range(batch)))
    words = memoryview(template).cast("Q")
    sent_batches: list[bytes] = []
    pending = b""
    sent = received = notifies = 0
    while received < pairs:
        while sent < pairs and ring.free_requests() >= min(batch, pairs - sent):
            count = min(batch, pairs - sent)
            words[0] = sent
            chunk = bytes(template[: count * SLOT])
            ring.put_requests(chunk)
            sent_batches.append(chunk)
            sent += count
            if ring.push_requests():
                loop.notify(port)
                notifies += 1
        data, count = ring.get_responses()
        if count:
            pending += data
            while sent_batches and len(pending) >= len(sent_batches[0]):
                expected = sent_batches.pop(0)
                if pending[: len(expected)] != expected:
                    errors.append(f"response batch at pair {received} differs from its requests")
                pending = pending[len(expected) :]
            received += count
        elif not ring.final_check_for_responses():
            waiter.wait(ring.unconsumed_responses)
    words.release()
    return notifies


def _front_checksum(ring: FrontRing, loop: EventLoop, port: int, waiter: _Waiter, pairs: int, errors: list[str]) -> int:
    sent = received = notifies = 0
    unpack = PAIR_PROTOCOL.unpack_responses
    while received < pairs:
        batch = []
        while sent < pairs and len(batch) < ring.free_requests():
            payload = payload_for(sent)
            batch.append((sent, zlib.crc32(payload), payload))
            sent += 1
        if batch:
            ring.put_requests(PAIR_PROTOCOL.pack_requests(batch))
            if ring.push_requests():
                loop.notify(port)
                notifies += 1
        data, count = ring.get_responses()
        for seq, crc, payload in unpack(data):
            if seq != received:
                errors.append(f"response {received} arrived as {seq}: lost, duplicated or reordered")
            elif crc != response_crc(seq, payload_for(seq)) or payload != payload_for(seq):
                errors.append(f"response {seq} has a bad checksum")
            received += 1
        if not count and not ring.final_check_for_responses():
            waiter.wait(ring.unconsumed_responses)
    return notifies


def _back(sock: socket.socket, mode: str, out: socket.socket) -> None:
    msg, fds = recv_message(sock)  # the front's ring refs and port, plus its memory (dom0 may map it)
    memory_fd = fds[0]
    send_message(sock, {"op": "bind_interdomain", "remote_dom": FRONT_DOMID, "remote_port": msg["port"]})
    bound, port_fds = recv_message(sock)
    send_message(sock, {"op": "map_grant_refs", "granter": FRONT_DOMID, "refs": msg["ring_refs"]})
    mapped, _ = recv_message(sock)
    mapping = ForeignMapping(memory_fd, mapped["frames"])
    os.close(memory_fd)
    ring = BackRing(mapping.view, PAIR_PROTOCOL)
    loop = EventLoop("back")
    port = bound["port"]
    loop.bind(port, port_fds[0], port_fds[1])
    stop = []
    loop.add_reader(sock.fileno(), lambda fd: stop.append(recv_message(sock)))
    waiter = _Waiter(loop)
    errors: list[str] = []
    notifies = 0
    unpack = PAIR_PROTOCOL.unpack_requests
    pack = PAIR_PROTOCOL.response_slot.pack
    try:
        while True:
            data, count = ring.get_requests()
            if count:
                if mode == "echo":
                    ring.put_responses(data)
                else:
                    out_slots = []
                    for seq, crc, payload in unpack(data):
                        if zlib.crc32(payload) != crc:
                            errors.append(f"request {seq} has a bad checksum")
                        out_slots.append(pack(seq, response_crc(seq, payload), payload))
                    ring.put_responses(b"".join(out_slots))
                if ring.push_responses():
                    loop.notify(port)
                    notifies += 1
            elif not ring.final_check_for_requests():
                if stop:
                    break
                waiter.wait(ring.unconsumed_requests)
    finally:
        send_message(out, {"notifies": notifies, "lost": waiter.lost_wakeups, "errors": errors[:10]})
        ring.release()
        mapping.close()
        loop.close()


class _Binder:
    """The hypervisor's part in the set-up: event channels and grant checks."""

    def __init__(self, nr_frames: int) -> None:
        self.host = EventChannelHost()
        self.host.add_domain(BACK_DOMID)
        self.host.add_domain(FRONT_DOMID)
        self.memory = GuestMemory.create(nr_frames, "xenlike-ringpair-d1")
        self.grants = GrantTable(self.memory, GNTTAB_PFN, GNTTAB_FRAMES)
        self.mapper = GrantMapper({FRONT_DOMID: self.grants}.__getitem__)

    def close(self) -> None:
        for mapping in list(self.mapper.mappings_of(BACK_DOMID)):
            self.mapper.unmap_grant_ref(BACK_DOMID, mapping.handle)
        self.host.remove_domain(FRONT_DOMID)
        self.host.remove_domain(BACK_DOMID)
        self.grants.release()
        self.memory.close()


def run_pair(pairs: int, *, ring_pages: int = 4, mode: str = "echo", timeout: float = 120.0) -> PairResult:
    """Exchange ``pairs`` request/response pairs between two fresh processes."""
    if mode not in ("echo", "checksum"):
        raise ValueError(f"mode must be echo or checksum, not {mode!r}")
    nr_frames = RING_PFN_FIRST + ring_pages + 4
    binder = _Binder(nr_frames)
    ctx = multiprocessing.get_context("fork")
    front_sock, front_peer = socketpair()
    back_sock, back_peer = socketpair()
    front_out, front_out_peer = socketpair()
    back_out, back_out_peer = socketpair()
    front = ctx.Process(target=_front, args=(front_peer, pairs, ring_pages, mode, front_out_peer), daemon=True)
    back = ctx.Process(target=_back, args=(back_peer, mode, back_out_peer), daemon=True)
    children = (front, back)
    try:
        front.start()
        back.start()
        for s in (front_peer, back_peer, front_out_peer, back_out_peer):
            s.close()
        front_sock.settimeout(timeout)
        back_sock.settimeout(timeout)
        front_out.settimeout(timeout)
        back_out.settimeout(timeout)

        send_message(front_sock, {"nr_frames": nr_frames}, [binder.memory.fd])
        request, _ = recv_message(front_sock)
        port = binder.host.alloc_unbound(FRONT_DOMID, request["remote_dom"])
        send_message(front_sock, {"port": port.port}, [port.recv_fd])
        published, _ = recv_message(front_sock)

        # The back learns the refs and port as it would from xenstore.
        send_message(back_sock, published, [binder.memory.fd])
        bind, _ = recv_message(back_sock)
        local, peer_update = binder.host.bind_interdomain(BACK_DOMID, bind["remote_dom"], bind["remote_port"])
        send_message(back_sock, {"port": local.port}, [local.recv_fd, local.send_fd])
        send_message(front_sock, {"port": peer_update.port}, [peer_update.send_fd])
        map_request, _ = recv_message(back_sock)
        frames = [binder.mapper.map_grant_ref(BACK_DOMID, map_request["granter"], ref).frame for ref in map_request["refs"]]
        send_message(back_sock, {"frames": frames})

        front_report, _ = recv_message(front_out)
        send_message(back_sock, {"op": "stop"})
        back_report, _ = recv_message(back_out)
        for child in children:
            child.join(timeout)
    finally:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
                child.join()
        for s in (front_sock, back_sock, front_out, back_out):
            s.close()
        binder.close()
    return PairResult(
        pairs=pairs,
        elapsed_s=front_report["elapsed"],
        front_notifies=front_report["notifies"],
        back_notifies=back_report["notifies"],
        front_lost_wakeups=front_report["lost"],
        back_lost_wakeups=back_report["lost"],
        errors=front_report["errors"] + back_report["errors"],
    )
