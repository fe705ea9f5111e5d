"""The hypervisor in-process, its loop turned by the test, with domUs whose sockets the test holds.

No zygote runs: the domains are no processes (``kill`` is recorded instead of
sent), and each domU's hypercall socket is a socketpair whose other end is the
guest's, for the test to write requests on and read replies from.
"""

from __future__ import annotations

import os
import selectors
import socket
from pathlib import Path
from typing import Any

from xenlike.hypervisor.core import Hypervisor
from xenlike.hypervisor.zygote import Zygote
from xenlike.kernel.hypercall import recv_message, send_message, socketpair


class InProcessHost:
    """A :class:`Hypervisor` with no processes under it; ``killed`` lists the domids it would have killed."""

    def __init__(self, run_dir: Path) -> None:
        self._zygote_end, theirs = socketpair()
        self._theirs = theirs
        self.hv = Hypervisor(run_dir, 256, [0], Zygote(pid=os.getpid(), sock=self._zygote_end))
        self.killed: list[int] = []
        self.hv.kill = lambda domain: self.killed.append(domain.domid)  # type: ignore[method-assign]

    def domu(self, domid: int, memory_mib: int = 16) -> socket.socket:
        """A running domU; returns the guest's end of its hypercall socket."""
        domain = self.hv.new_domain(domid, f"g{domid}", memory_mib, memory_mib, 1, 1)
        ours, theirs = socketpair()
        domain.sock = ours
        self.hv._by_sock[ours.fileno()] = domain
        self.hv.selector.register(ours, selectors.EVENT_READ, self.hv._on_hypercall)
        return theirs

    def turn(self, times: int = 1) -> None:
        """Run the loop's body without waiting."""
        for _ in range(times):
            for key, _ in self.hv.selector.select(timeout=0):
                key.data(key.fileobj)

    def call(self, guest: socket.socket, op: str, **args: Any) -> dict:
        """One hypercall from ``guest``, answered; the reply message."""
        send_message(guest, {"id": 1, "op": op, "args": args})
        guest.settimeout(5)
        for _ in range(100):
            self.turn()
            try:
                reply, fds = recv_message(guest, flags=socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            for fd in fds:
                os.close(fd)
            return reply
        raise AssertionError(f"no reply to {op}")

    def close(self) -> None:
        self.hv.close()
        self._theirs.close()
