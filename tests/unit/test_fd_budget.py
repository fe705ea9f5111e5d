"""FdBudget: a create is refused before a process's fds run out, counted without listing on every create."""

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


def test_at_the_limit_itself_counting_reports_the_limit_instead_of_failing(monkeypatch):
    def emfile(path):
        raise OSError(errno.EMFILE, "Too many open files", path)

    monkeypatch.setattr(os, "listdir", emfile)
    assert FdBudget.open_fds() == FdBudget.limit()
