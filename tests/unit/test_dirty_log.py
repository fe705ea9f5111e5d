"""xenlike.kernel.dirty_log against the kernel: vCPU processes write a domain's memfd, the log says which frames.

Each "vCPU" is a real forked process with its own mapping of the memfd; it makes
its userfaultfd and pagemap fd and sends them to this process, which keeps the
log (as the hypervisor does for a domain), while the vCPU writes what it is told.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.kernel import dirty_log
from xenlike.kernel.dirty_log import DirtyLog, MappingLog
from xenlike.kernel.memory import GuestMemory
from xenlike.public.xen import PAGE_SIZE

NR_FRAMES = 96
NR_VCPUS = 3

unsupported = dirty_log.probe()
pytestmark = pytest.mark.skipif(unsupported is not None, reason=f"no dirty log here: {unsupported}")


def _vcpu(sock: socket.socket, memory: GuestMemory) -> None:
    """The child: map, hand over the fds and the address, then write the frames each message names."""
    uffd, pagemap = dirty_log.open_for_mapping()
    socket.send_fds(sock, [struct.pack("=Q", memory.address(0))], [uffd, pagemap])
    while True:
        data = sock.recv(65536)
        if not data:
            os._exit(0)
        pfns = struct.unpack(f"={len(data) // 4}I", data)
        for pfn in pfns:
            memory.frame(pfn)[pfn % PAGE_SIZE] ^= 0xFF  # one byte is a write to the whole page
        sock.send(b"k")


class Domain:
    """A memfd and NR_VCPUS processes mapping it, each logged."""

    def __init__(self) -> None:
        self.memory = GuestMemory.create(NR_FRAMES, "dirty-log-test")
        self.log = DirtyLog(NR_FRAMES, "d1 (test)")
        self.vcpus: list[tuple[int, socket.socket]] = []
        for _ in range(NR_VCPUS):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:
                try:
                    ours.close()
                    _vcpu(theirs, GuestMemory.from_fd(os.dup(self.memory.fd), NR_FRAMES))
                finally:
                    os._exit(1)
            theirs.close()
            self.vcpus.append((pid, ours))
            msg, fds, _, _ = socket.recv_fds(ours, 64, 2)
            (address,) = struct.unpack("=Q", msg)
            self.log.add(MappingLog(fds[0], fds[1], address, NR_FRAMES, f"d1 (test) vcpu {len(self.vcpus) - 1}"))

    def write(self, vcpu: int, pfns: list[int]) -> None:
        sock = self.vcpus[vcpu][1]
        if pfns:
            sock.send(struct.pack(f"={len(pfns)}I", *pfns))
            assert sock.recv(1) == b"k"

    def close(self) -> None:
        self.log.close()
        for pid, sock in self.vcpus:
            sock.close()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # reaped already
        self.memory.close()


@pytest.fixture(scope="module")
def domain() -> Iterator[Domain]:
    d = Domain()
    try:
        d.log.harvest()  # start from a clean log
        yield d
    finally:
        d.close()


frames = st.lists(st.integers(0, NR_FRAMES - 1), max_size=30)


@given(writes=st.lists(frames, min_size=NR_VCPUS, max_size=NR_VCPUS), marked=frames, unlogged=frames)
@settings(max_examples=60, deadline=None)
def test_written_frames_are_reported_once(
    domain: Domain, writes: list[list[int]], marked: list[int], unlogged: list[int]
) -> None:
    """Frames any vCPU wrote, and frames marked, are reported once; others are not; the next harvest is empty."""
    for vcpu, pfns in enumerate(writes):
        domain.write(vcpu, pfns)
    # A write through another mapping (this process's, as a back end's in dom0) is not
    # seen by the kernel's log: only what is marked counts.
    for pfn in unlogged:
        domain.memory.frame(pfn)[0] ^= 1
    domain.log.mark(marked)
    expected = sorted(set().union(*writes, marked))
    assert domain.log.harvest() == expected
    assert domain.log.harvest() == []


def test_frames_written_after_a_harvest_are_reported_again(domain: Domain) -> None:
    domain.write(0, [5, 6])
    assert domain.log.harvest() == [5, 6]
    domain.write(1, [6])
    domain.write(2, [6, 90])
    assert domain.log.harvest() == [6, 90]


def test_mark_outside_memory_is_refused(domain: Domain) -> None:
    with pytest.raises(IndexError, match=r"frame 96 is outside its memory \(0..95\)"):
        domain.log.mark([96])


def test_a_vcpu_that_dies_leaves_the_others_logged() -> None:
    d = Domain()
    try:
        pid, sock = d.vcpus[2]
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        d.write(0, [1])
        # What the dead vCPU wrote cannot be known: the harvest says so, once, and keeps the others' writes.
        with pytest.raises(ProcessLookupError, match=r"vcpu 2: the process is gone; the frames it wrote"):
            d.log.harvest()
        d.write(1, [2])
        assert d.log.harvest() == [1, 2]
    finally:
        d.close()
