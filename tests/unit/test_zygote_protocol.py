"""The zygote's control socket: a spawn's reply is never confused with an exit that came first."""

from __future__ import annotations

import os
import threading

from xenlike.hypervisor.zygote import Zygote
from xenlike.kernel.hypercall import recv_message, send_message, socketpair


def test_an_exit_that_arrives_before_the_spawn_reply_stays_an_exit() -> None:
    ours, theirs = socketpair()
    zygote = Zygote(pid=os.getpid(), sock=ours)

    def zygote_side() -> None:
        request, fds = recv_message(theirs)
        assert request["op"] == "spawn" and not fds
        # A domain ended while the zygote was forking: its exit goes out first.
        send_message(theirs, {"event": "exited", "pid": 4242, "status": 0, "cpu_time": 0.5})
        send_message(theirs, {"spawned": 4343})

    side = threading.Thread(target=zygote_side)
    side.start()
    try:
        assert zygote.spawn({"role": "domu"}, []) == 4343  # not the pid of the one that ended
    finally:
        side.join()
    # The exit was read off the socket by the spawn: the next read hands it over without more traffic.
    assert zygote.pending_events == [{"event": "exited", "pid": 4242, "status": 0, "cpu_time": 0.5}]
    assert zygote.read_events() == [{"event": "exited", "pid": 4242, "status": 0, "cpu_time": 0.5}]
    assert zygote.read_events() == []
    ours.close()
    theirs.close()
