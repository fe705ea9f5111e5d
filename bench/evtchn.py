"""Event-channel round trip against raw eventfd ping-pong, in the same run.

``evtchn_rtt_us``: two processes, each with an EventLoop (epoll) and one end of an
interdomain event channel bound through the hypervisor's EventChannelHost with the
fds passed over AF_UNIX; each upcall handler notifies the other end.
``eventfd_rtt_us``: the same ping-pong with two bare eventfds and blocking reads.

    python bench/evtchn.py [--json] [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import parser, report  # noqa: E402
from xenlike.hypervisor.event_channel import EventChannelHost  # noqa: E402
from xenlike.kernel.events import EventLoop  # noqa: E402
from xenlike.kernel.hypercall import recv_message, send_message, socketpair  # noqa: E402

ROUNDS = 5  # the figure is the median of this many runs of each


def _eventfd_ponger(ping: int, pong: int, count: int) -> None:
    for _ in range(count):
        os.read(ping, 8)
        os.eventfd_write(pong, 1)


def eventfd_rtt_us(count: int) -> float:
    ping, pong = os.eventfd(0), os.eventfd(0)
    child = multiprocessing.get_context("fork").Process(target=_eventfd_ponger, args=(ping, pong, count + 1))
    child.start()
    os.eventfd_write(ping, 1)  # warm-up round
    os.read(pong, 8)
    start = time.perf_counter()
    for _ in range(count):
        os.eventfd_write(ping, 1)
        os.read(pong, 8)
    elapsed = time.perf_counter() - start
    child.join()
    os.close(ping)
    os.close(pong)
    return elapsed / count * 1e6


def _evtchn_ponger(sock, count: int) -> None:
    msg, fds = recv_message(sock)
    loop = EventLoop("pong")
    port = msg["port"]
    loop.bind(port, fds[0], fds[1], handler=loop.notify)
    loop.clear_pending(port)  # a fresh bind starts pending
    send_message(sock, "ready")
    while loop.channel(port).upcalls < count:
        loop.poll()
    loop.close()


def evtchn_rtt_us(count: int) -> float:
    host = EventChannelHost()
    host.add_domain(1)
    host.add_domain(2)
    ours, theirs = socketpair()
    child = multiprocessing.get_context("fork").Process(target=_evtchn_ponger, args=(theirs, count + 1))
    child.start()
    theirs.close()
    unbound = host.alloc_unbound(1, 2)
    peer, update = host.bind_interdomain(2, 1, unbound.port)
    send_message(ours, {"port": peer.port}, [peer.recv_fd, peer.send_fd])
    loop = EventLoop("ping")
    loop.bind(unbound.port, os.dup(unbound.recv_fd), os.dup(update.send_fd))
    recv_message(ours)
    done = [0]

    def pong(port: int) -> None:
        done[0] += 1
        loop.notify(port)

    loop.set_handler(unbound.port, pong)
    loop.notify(unbound.port)  # warm-up round
    while done[0] < 1:
        loop.poll()
    start = time.perf_counter()
    while done[0] <= count:
        loop.poll()
    elapsed = time.perf_counter() - start
    child.join()
    loop.close()
    host.remove_domain(1)
    host.remove_domain(2)
    ours.close()
    return elapsed / count * 1e6


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    count = 5_000 if args.quick else 50_000
    evtchn, eventfd = [], []
    for _ in range(ROUNDS):  # interleaved, so drift on the machine hits both alike
        eventfd.append(eventfd_rtt_us(count))
        evtchn.append(evtchn_rtt_us(count))
    figures = {"evtchn_rtt_us": statistics.median(evtchn), "eventfd_rtt_us": statistics.median(eventfd)}
    ratios = {"evtchn_rtt_us / eventfd_rtt_us": figures["evtchn_rtt_us"] / figures["eventfd_rtt_us"]}
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
