"""Event channels: the hypervisor's table and a domain's event loop."""

from __future__ import annotations

import errno
import multiprocessing
import os

import pytest

from xenlike.hypervisor.event_channel import EventChannelHost
from xenlike.kernel.events import EventLoop
from xenlike.kernel.hypercall import recv_message, send_message, socketpair
from xenlike.public.event_channel import VIRQ, ChannelState, EvtchnError


@pytest.fixture
def host():
    h = EventChannelHost(max_ports=8)
    for domid in (0, 1, 2):
        h.add_domain(domid)
    yield h
    for domid in (0, 1, 2):
        h.remove_domain(domid)
    assert h.open_fds() == 0


def loop_with(port_fds, handler=None, name="d"):
    loop = EventLoop(name)
    loop.bind(port_fds.port, os.dup(port_fds.recv_fd), os.dup(port_fds.send_fd) if port_fds.send_fd else None, handler)
    return loop


def test_alloc_bind_send_close_status(host):
    unbound = host.alloc_unbound(1, remote_dom=0)
    assert host.status(1, unbound.port)["status"] == ChannelState.UNBOUND
    local, update = host.bind_interdomain(0, 1, unbound.port)
    assert update.domid == 1 and update.port == unbound.port
    assert host.status(1, unbound.port) == {
        "status": ChannelState.INTERDOMAIN,
        "remote_dom": 0,
        "remote_port": local.port,
        "virq": None,
    }
    back = loop_with(local, name="d0")
    front = loop_with(unbound, name="d1")
    front.connect(unbound.port, os.dup(update.send_fd))
    assert back.is_pending(local.port)  # a fresh bind is pending, in case the peer sent first
    back.clear_pending(local.port)

    got = []
    back.set_handler(local.port, got.append)
    front.notify(unbound.port)
    front.notify(unbound.port)  # events coalesce: one bit
    assert back.poll(0) == 1 and got == [local.port]
    assert back.poll(0) == 0

    assert host.close(0, local.port) == [type(update)(1, unbound.port, None)]
    assert host.status(1, unbound.port)["status"] == ChannelState.UNBOUND
    assert host.status(0, local.port)["status"] == ChannelState.CLOSED
    back.close()
    front.close()


def test_bind_refused_unless_the_port_accepts_us(host):
    unbound = host.alloc_unbound(1, remote_dom=0)
    with pytest.raises(EvtchnError) as err:
        host.bind_interdomain(2, 1, unbound.port)
    assert err.value.errno == errno.EINVAL and "accepts a binding from d0, not d2" in str(err.value)
    with pytest.raises(EvtchnError) as err:
        host.bind_interdomain(0, 1, 5)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(EvtchnError) as err:
        host.bind_interdomain(0, 9, 1)
    assert err.value.errno == errno.ESRCH
    host.bind_interdomain(0, 1, unbound.port)
    with pytest.raises(EvtchnError):  # already bound: nobody else can take it
        host.bind_interdomain(0, 1, unbound.port)


def test_ports_run_out(host):
    for _ in range(7):  # port 0 is never used
        host.alloc_unbound(2, 0)
    with pytest.raises(EvtchnError) as err:
        host.alloc_unbound(2, 0)
    assert err.value.errno == errno.ENOSPC


def test_a_domain_s_ports_stop_at_its_max_evtchn_port():
    h = EventChannelHost(max_ports=4096)
    h.add_domain(0)
    h.add_domain(5, max_port=3)
    try:
        assert [h.alloc_unbound(5, 0).port for _ in range(3)] == [1, 2, 3]
        with pytest.raises(EvtchnError) as err:
            h.alloc_unbound(5, 0)
        assert err.value.errno == errno.ENOSPC and "all 3 event-channel ports" in str(err.value)
        assert h.alloc_unbound(0, 5).port == 1  # dom0's table is the host's own size
    finally:
        h.remove_domain(5)
        h.remove_domain(0)
    assert h.open_fds() == 0


def test_a_new_port_is_the_lowest_free_one_as_xen_gives_it(host):
    ports = [host.alloc_unbound(2, 0).port for _ in range(5)]
    assert ports == [1, 2, 3, 4, 5]
    host.close(2, 4)
    host.close(2, 2)
    assert [host.alloc_unbound(2, 0).port for _ in range(3)] == [2, 4, 6]


def test_virq_binding_and_raise(host):
    virq = host.bind_virq(0, VIRQ.DOM_EXC)
    with pytest.raises(EvtchnError) as err:
        host.bind_virq(0, VIRQ.DOM_EXC)
    assert err.value.errno == errno.EEXIST
    loop = loop_with(virq)
    got = []
    loop.set_handler(virq.port, got.append)
    assert host.raise_virq(0, VIRQ.DOM_EXC) is True
    assert host.raise_virq(1, VIRQ.DOM_EXC) is False
    loop.poll(0)
    assert got == [virq.port]
    assert host.status(0, virq.port)["virq"] == VIRQ.DOM_EXC
    loop.close()


def test_masked_port_stays_pending_and_unmask_delivers(host):
    unbound = host.alloc_unbound(1, 0)
    local, update = host.bind_interdomain(0, 1, unbound.port)
    got = []
    back = loop_with(local, got.append)
    back.clear_pending(local.port)
    back.mask(local.port)
    host.send(1, unbound.port)  # the hypervisor-side send reaches the same eventfd
    assert back.poll(0) == 0 and got == []
    assert back.is_pending(local.port)
    back.unmask(local.port)
    assert back.poll(0) == 1 and got == [local.port]
    assert not back.is_pending(local.port)
    back.close()


def test_remove_domain_unbinds_its_peers(host):
    unbound = host.alloc_unbound(1, 0)
    local, _ = host.bind_interdomain(0, 1, unbound.port)
    updates = host.remove_domain(1)
    assert [(u.domid, u.port, u.send_fd) for u in updates] == [(0, local.port, None)]
    assert host.status(0, local.port)["status"] == ChannelState.UNBOUND
    host.add_domain(1)


def test_send_on_an_unbound_port_is_dropped(host):
    unbound = host.alloc_unbound(1, 0)
    loop = loop_with(unbound)
    loop.notify(unbound.port)  # no send fd yet: nothing happens, no error
    host.send(1, unbound.port)
    assert not loop.is_pending(unbound.port)
    assert host.port_fds(0) == []  # d0, whom the port waits for, has no port the send could have reached
    loop.close()


def test_loop_refuses_unknown_ports():
    loop = EventLoop("d5")
    with pytest.raises(EvtchnError, match="d5: port 3 is not bound here"):
        loop.notify(3)
    loop.close()


def _ponger(sock) -> None:
    msg, fds = recv_message(sock)
    loop = EventLoop("child")
    loop.bind(msg["port"], fds[0], fds[1], handler=loop.notify)
    loop.clear_pending(msg["port"])
    send_message(sock, "ready")
    while loop.channel(msg["port"]).upcalls < 100:
        loop.poll(5)
    loop.close()


def test_ping_pong_across_processes_with_fds_over_scm_rights(host):
    """The child receives its port's fds over AF_UNIX and answers 100 events."""
    unbound = host.alloc_unbound(1, 2)
    peer, update = host.bind_interdomain(2, 1, unbound.port)
    ours, theirs = socketpair()
    child = multiprocessing.get_context("fork").Process(target=_ponger, args=(theirs,))
    child.start()
    theirs.close()
    send_message(ours, {"port": peer.port}, [peer.recv_fd, peer.send_fd])
    assert recv_message(ours)[0] == "ready"
    loop = loop_with(unbound)
    loop.connect(unbound.port, os.dup(update.send_fd))
    pongs = []
    loop.set_handler(unbound.port, lambda port: (pongs.append(port), len(pongs) < 100 and loop.notify(port)))
    loop.notify(unbound.port)
    while len(pongs) < 100:
        assert loop.poll(5) > 0, "the child stopped answering"
    child.join(10)
    assert child.exitcode == 0
    loop.close()
    ours.close()
