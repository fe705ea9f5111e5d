"""Trace buffers: the writer never waits and counts what it drops; the reader never takes a bad record."""

from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.kernel import trace
from xenlike.kernel.trace import TraceBuffer, TraceBufferError
from xenlike.public.trace import (
    HEADER_BYTES,
    MAX_RECORD,
    Event,
    TraceClass,
    Word,
    pack_record,
    parse_classes,
    unpack_record,
)

SIZE = 8192


def buffer(size: int = SIZE, mask: int = 0) -> tuple[int, TraceBuffer]:
    fd = TraceBuffer.create("test", 3, size, mask)
    return fd, TraceBuffer(fd)


def record(seq: int, pad: int) -> bytes:
    body = {"seq": seq, "pad": "x" * pad}
    return pack_record(Event.EVTCHN_SEND, seq, 3, 0, {**body, "crc": zlib.crc32(repr(body).encode())})


def check(data: bytes) -> int:
    """The record's sequence number, after checking it is whole."""
    _event, ns, domid, _vcpu, fields = unpack_record(data)
    crc = fields.pop("crc")
    assert crc == zlib.crc32(repr(fields).encode()), "a record came out corrupted"
    assert ns == fields["seq"] and domid == 3
    return fields["seq"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 900), st.just(-1)), max_size=300))
def test_a_writer_that_outruns_the_reader_drops_and_counts_and_never_corrupts(steps):
    """Writes of random sizes interleaved with reads (-1): every record read is whole, in order,
    and written records = read + dropped (``lost``); no write ever waits."""
    fd, buf = buffer()
    try:
        written = dropped = 0
        seen: list[int] = []
        lost_total = 0
        for step in steps:
            if step < 0:
                records, lost, why = buf.read()
                assert why is None
                lost_total += lost
                seen.extend(check(r) for r in records)
                continue
            started = time.monotonic()
            if buf.write(record(written, step)):
                pass
            else:
                dropped += 1
            written += 1
            assert time.monotonic() - started < 0.5  # a full buffer is a drop, not a wait
        records, lost, why = buf.read()
        assert why is None
        lost_total += lost
        seen.extend(check(r) for r in records)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert len(seen) + dropped == written
        assert lost_total == dropped == buf.lost
    finally:
        buf.close()
        os.close(fd)


def test_a_flooding_writer_in_another_process_never_blocks_and_loses_only_what_it_counts():
    """A child writes as fast as it can while the parent reads now and then: no record is torn,
    the sequence only skips what ``lost`` counts, and the child finishes without waiting."""
    fd, buf = buffer(16384)
    total = 20000
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = TraceBuffer(fd)
            for seq in range(total):
                child.write(record(seq, seq % 200))
            code = 0
        finally:
            os._exit(code)
    seen: list[int] = []
    lost_total = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            records, lost, why = buf.read()
            assert why is None
            lost_total += lost
            seen.extend(check(r) for r in records)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            assert time.monotonic() < deadline, "the writer blocked"
            time.sleep(0.001)
        records, lost, _ = buf.read()
        seen.extend(check(r) for r in records)
        lost_total += lost
    finally:
        buf.close()
        os.close(fd)
    assert seen == sorted(seen)
    assert len(seen) + lost_total == total
    assert lost_total > 0, "the reader kept up: the test did not flood"


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=0, max_size=SIZE),
    st.integers(0, SIZE - 1),
)
def test_a_hostile_writer_spoils_only_its_own_records(prod, cons, junk, at):
    """Whatever a guest writes in its buffer (indices, bytes), a read returns whole records or stops
    with a reason; it never raises and never reads beyond the buffer."""
    fd, buf = buffer()
    try:
        buf.write(record(1, 10))
        buf.data[at : at + len(junk)] = junk[: SIZE - at]
        buf.words[Word.PROD], buf.words[Word.CONS] = prod, cons
        records, _lost, why = buf.read()
        for data in records:
            assert len(data) <= MAX_RECORD
            try:
                unpack_record(data)
            except ValueError:
                pass  # RecordError: the reader reports it and goes on
        assert buf.waiting == 0 or why is not None
        assert buf.write(record(2, 10))  # and the buffer is usable again
    finally:
        buf.close()
        os.close(fd)


def test_a_buffer_cannot_be_shrunk_or_grown_by_whoever_holds_it():
    fd, buf = buffer()
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, HEADER_BYTES)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, HEADER_BYTES + 2 * SIZE)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SEAL
    finally:
        buf.close()
        os.close(fd)


def test_what_is_not_a_buffer_is_refused():
    fd = os.memfd_create("not-a-buffer")
    try:
        os.ftruncate(fd, HEADER_BYTES + SIZE)
        with pytest.raises(TraceBufferError, match="magic"):
            TraceBuffer(fd)
    finally:
        os.close(fd)


def test_a_process_traces_nothing_until_it_attaches_and_its_children_never_share_its_buffer():
    assert not trace.on(TraceClass.HYPERCALL)
    fd, reader = buffer(mask=int(TraceClass.EVTCHN))
    try:
        trace.attach(os.dup(fd), 7, 1)
        assert trace.on(TraceClass.EVTCHN) and not trace.on(TraceClass.XENSTORE)
        trace.emit(Event.EVTCHN_SEND, {"port": 5})
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not trace.attached() and not trace.on(TraceClass.EVTCHN) else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        reader.set_mask(0)
        assert not trace.on(TraceClass.EVTCHN)  # the mask is the buffer's word: one store turns it off
        records, lost, why = reader.read()
        assert (lost, why) == (0, None)
        event, _ns, domid, vcpu, fields = unpack_record(records[0])
        assert (event, domid, vcpu, fields) == (Event.EVTCHN_SEND, 7, 1, {"port": 5})
    finally:
        trace.detach()
        reader.close()
        os.close(fd)
    assert not trace.attached()


def test_a_record_too_long_keeps_its_event_and_drops_its_fields():
    fd, reader = buffer(mask=int(TraceClass.XENSTORE))
    try:
        trace.attach(os.dup(fd), 2)
        trace.emit(Event.XS_OP, {"path": "x" * (2 * MAX_RECORD)})
        records, _lost, _why = reader.read()
        assert unpack_record(records[0])[4] == {"truncated": True}
    finally:
        trace.detach()
        reader.close()
        os.close(fd)


def test_classes_parse_by_name_and_unknown_ones_are_named():
    assert parse_classes("hypercall,xenbus") == TraceClass.HYPERCALL | TraceClass.XENBUS
    assert parse_classes("all") == 0x0FFF_0000
    with pytest.raises(ValueError, match="'hypercals'.*hypercall"):
        parse_classes("hypercals")


def test_event_ids_are_xens_where_xen_has_them():
    """trace.h: TRC_LOST_RECORDS, TRC_PV_HYPERCALL, TRC_DOM0_DOM_ADD/REM; classes in bits 16-27."""
    assert Event.LOST_RECORDS == 0x0001F001
    assert Event.HYPERCALL == 0x00201001
    assert Event.DOM_ADD == 0x00041001 and Event.DOM_REM == 0x00041002
    assert all(event & 0xF000_0000 == 0 for event in Event)
    assert struct.calcsize("<IIQHH") == 20


def test_an_armed_fault_drops_or_delays_a_notification_and_clearing_it_restores_the_plain_send():
    from xenlike.kernel.events import EventLoop, new_port_fd
    from xenlike.public.trace import FAULTS_ARMED, FaultAction

    fd, host_view = buffer()
    loop = EventLoop("faulted")
    peer = new_port_fd()
    loop.bind(1, new_port_fd(), os.dup(peer))
    loop.bind(2, new_port_fd(), os.dup(peer))
    try:
        trace.attach(os.dup(fd), 3)
        host_view.set_mask(int(TraceClass.HYPERCALL))
        host_view.set_faults([(1, FaultAction.DROP, 0), (2, FaultAction.DELAY, 50)])
        assert trace.mask[0] == TraceClass.HYPERCALL | FAULTS_ARMED
        host_view.set_mask(0)
        assert trace.mask[0] == FAULTS_ARMED  # the classes change, the armed bit stays
        loop.notify(1)
        with pytest.raises(BlockingIOError):
            os.read(peer, 8)  # dropped
        loop.notify(2)
        with pytest.raises(BlockingIOError):
            os.read(peer, 8)  # not yet
        time.sleep(0.3)
        assert os.read(peer, 8)  # delivered late
        host_view.set_faults([])
        assert trace.mask[0] == 0
        loop.notify(1)
        assert os.read(peer, 8)
    finally:
        trace.detach()
        loop.close()
        os.close(peer)
        host_view.close()
        os.close(fd)
