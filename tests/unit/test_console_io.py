"""A guest's console_io lines reach ``xl dmesg`` as Xen's printk rate limit lets them: ten in five seconds.

Any domU may write to the hypervisor's console. Unlimited, four 1 KiB writes of
newlines pushed every message of the host's own out of the 2000-line ring, and
the log file grew without bound.
"""

from __future__ import annotations

import pytest

from xenlike.hypervisor.console import RATELIMIT_BURST, RATELIMIT_MS, GuestLines

from .hypervisor_support import InProcessHost


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_line_per_refill_and_the_suppressed_are_counted():
    clock = _Clock()
    lines = GuestLines(clock)
    assert [lines.admit() for _ in range(RATELIMIT_BURST + 5)] == [True] * RATELIMIT_BURST + [False] * 5
    assert lines.suppressed == 5
    clock.now += RATELIMIT_MS / 1000 / RATELIMIT_BURST  # one line's worth of time
    assert lines.admit() and not lines.admit()
    clock.now += 3600  # a long quiet: the burst again, no more
    assert sum(lines.admit() for _ in range(3 * RATELIMIT_BURST)) == RATELIMIT_BURST


@pytest.fixture
def host(tmp_path):
    host = InProcessHost(tmp_path)
    yield host
    host.close()


def test_a_guest_flooding_console_io_keeps_the_host_s_own_lines_in_the_ring(host):
    guest = host.domu(1)
    before = host.hv.console.read()
    for _ in range(50):
        assert host.call(guest, "console_io", data="\n".join(["flood"] * 100))["ok"]
    ring = host.hv.console.read()
    flooded = [line for line in ring if "(d1) flood" in line]
    assert len(flooded) <= RATELIMIT_BURST + 1
    assert all(line in ring for line in before)  # nothing of the host's was pushed out
