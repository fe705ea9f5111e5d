"""xenlike.kernel.ksm: starting ksmd for a host and putting it back as it was, and reading its counters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenlike.kernel import ksm


@pytest.fixture
def fake_ksm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /sys/kernel/mm/ksm with the kernel's defaults: ksmd stopped, 100 pages per 20 ms."""
    for name, value in {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_shared": "7",
                        "pages_sharing": "70", "full_scans": "3"}.items():
        (tmp_path / name).write_text(value + "\n")
    monkeypatch.setattr(ksm, "KSM_DIR", str(tmp_path))
    return tmp_path


def test_a_stopped_ksmd_is_started_at_xenlike_s_rate_and_put_back_after(fake_ksm: Path) -> None:
    ksmd = ksm.Ksmd()
    assert ksmd.ensure_running() is True
    assert (fake_ksm / "run").read_text() == "1"
    assert (fake_ksm / "pages_to_scan").read_text() == str(ksm.SCAN_PAGES)
    assert (fake_ksm / "sleep_millisecs").read_text() == str(ksm.SCAN_SLEEP_MS)
    ksmd.restore()
    assert [(fake_ksm / n).read_text() for n in ("run", "pages_to_scan", "sleep_millisecs")] == ["0", "100", "20"]


def test_a_running_ksmd_is_left_as_its_owner_tuned_it(fake_ksm: Path) -> None:
    (fake_ksm / "run").write_text("1\n")
    (fake_ksm / "pages_to_scan").write_text("5000\n")
    ksmd = ksm.Ksmd()
    assert ksmd.ensure_running() is False
    ksmd.restore()
    assert (fake_ksm / "run").read_text() == "1\n"
    assert (fake_ksm / "pages_to_scan").read_text() == "5000\n"


def test_a_ksmd_that_cannot_be_started_is_refused_by_name_and_nothing_is_left_changed(fake_ksm: Path) -> None:
    (fake_ksm / "run").unlink()
    (fake_ksm / "run").mkdir()  # writing it fails, even as root
    (fake_ksm / "run" / "x").touch()
    with pytest.raises(ksm.KsmError, match=r"ksmd is not running and cannot be started .*run"):
        ksm.Ksmd().ensure_running()
    assert (fake_ksm / "pages_to_scan").read_text() == "100\n"  # never written


def test_counters_are_ksmd_s_and_all_zero_without_ksm(fake_ksm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ksm.counters() == ksm.KsmCounters(running=False, pages_shared=7, pages_sharing=70, full_scans=3)
    monkeypatch.setattr(ksm, "KSM_DIR", str(fake_ksm / "missing"))
    assert ksm.counters() == ksm.KsmCounters(False, 0, 0, 0)
    assert ksm.available() is not None and "CONFIG_KSM" in ksm.available()


def test_a_process_that_is_gone_shares_nothing() -> None:
    assert ksm.merging_pages(2**22 + 1) == 0  # above pid_max's largest value
    assert ksm.merging_pages(os.getpid()) >= 0
