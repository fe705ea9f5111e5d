"""The zygote's pool of ready shells: when replacements are forked."""

from __future__ import annotations

import pytest

from xenlike.hypervisor import zygote
from xenlike.hypervisor.zygote import POOL_SIZE, _ShellPool


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> tuple[_ShellPool, list[object], FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(zygote.time, "monotonic", clock)
    forked: list[object] = []

    def fork(self: _ShellPool) -> object:
        shell = object()
        forked.append(shell)
        return shell

    monkeypatch.setattr(_ShellPool, "_fork", fork)
    return _ShellPool(None, (-1, -1), None), forked, clock  # type: ignore[arg-type]


def fill(pool: _ShellPool, clock: FakeClock) -> None:
    while pool.seconds_to_refill() is not None:
        clock.now += pool.seconds_to_refill()  # type: ignore[operator]
        pool.refill_if_due()


def test_the_pool_fills_one_shell_per_boot_window(pool) -> None:
    shells, forked, clock = pool
    assert shells.seconds_to_refill() == 0.0
    shells.refill_if_due()
    assert len(forked) == 1 and shells.seconds_to_refill() == pytest.approx(zygote.BOOT_WINDOW_S)
    shells.refill_if_due()
    assert len(forked) == 1  # not yet: the window is not over
    fill(shells, clock)
    assert len(forked) == POOL_SIZE and shells.seconds_to_refill() is None


def test_a_replacement_waits_for_the_new_domains_boot_unless_the_pool_ran_dry(pool) -> None:
    shells, forked, clock = pool
    fill(shells, clock)
    first = shells.take("domu")
    assert first is forked[0]
    shells.refill_if_due()
    assert len(forked) == POOL_SIZE  # another shell is still ready: the fork waits a window
    assert shells.seconds_to_refill() == pytest.approx(zygote.BOOT_WINDOW_S)
    for _ in range(POOL_SIZE - 1):
        shells.take("domu")
    assert shells.seconds_to_refill() == 0.0  # none left ready: refilled at once
    shells.take("domu")
    assert len(forked) == POOL_SIZE + 1  # forked on demand
