"""FdBudget: a create is refused before a process's fds run out; the kernel counts them (or, before 6.2, a listing)."""

from __future__ import annotations

import errno
import os
import resource

import pytest

from xenlike.kernel.proc import FdBudget


@pytest.fixture
def low_limit():
    """This process's soft RLIMIT_NOFILE lowered to 64 more than it holds, restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = FdBudget.open_fds() + 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_create_is_refused_once_its_fds_and_the_reserve_would_pass_the_limit(low_limit):
    budget = FdBudget(per_domain=10, where="the test")
    held = FdBudget.open_fds()
    fits = (low_limit - FdBudget.RESERVE - held) // 10
    assert budget.headroom() == fits
    opened = []
    try:
        for i in range(fits):
            assert budget.refusal(f"d{i}") is None
            opened += [os.open("/dev/null", os.O_RDONLY) for _ in range(10)]
        refusal = budget.refusal("one-too-many")
        assert refusal is not None and "\n" not in refusal
        assert "'one-too-many' needs about 10 more file descriptors in the test" in refusal
        assert f"of its {low_limit} (RLIMIT_NOFILE, {FdBudget.RESERVE} kept in reserve)" in refusal
        assert budget.headroom() == 0
    finally:
        for fd in opened:
            os.close(fd)


def test_at_the_limit_itself_listing_reports_the_limit_instead_of_failing(monkeypatch):
    def emfile(path):
        raise OSError(errno.EMFILE, "Too many open files", path)

    monkeypatch.setattr(os, "listdir", emfile)
    assert FdBudget._listed_fds() == FdBudget.limit()


def test_the_kernel_s_count_is_the_listing_s_and_is_used_where_it_is_given():
    opened = [os.open("/dev/null", os.O_RDONLY) for _ in range(100)]
    try:
        stated = FdBudget._stated_fds()
        if stated == 0:
            pytest.skip("this kernel (before Linux 6.2) gives no count as /proc/self/fd's size")
        assert stated == FdBudget._listed_fds() == FdBudget.open_fds()
        assert FdBudget(per_domain=10, where="the test").counts_cheaply
    finally:
        for fd in opened:
            os.close(fd)


def test_without_the_kernel_s_count_a_create_is_still_refused_before_the_limit(low_limit, monkeypatch):
    monkeypatch.setattr(FdBudget, "_stated_fds", staticmethod(lambda: 0))  # a kernel before 6.2
    budget = FdBudget(per_domain=10, where="the test")
    assert not budget.counts_cheaply
    opened = []
    try:
        while budget.refusal("d") is None:
            opened += [os.open("/dev/null", os.O_RDONLY) for _ in range(10)]
        assert FdBudget.open_fds() + 10 + FdBudget.RESERVE > low_limit
    finally:
        for fd in opened:
            os.close(fd)
