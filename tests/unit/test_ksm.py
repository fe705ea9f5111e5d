"""xenlike.kernel.ksm: starting ksmd for a host and putting it back as it was, and reading its counters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenlike.kernel import ksm


@pytest.fixture
def fake_ksm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /sys/kernel/mm/ksm with the kernel's defaults (ksmd stopped, 100 pages per 20 ms),
    and no other process on the machine asking for merging unless a test says so."""
    ksm_dir = tmp_path / "ksm"
    ksm_dir.mkdir()
    for name, value in {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_shared": "7",
                        "pages_sharing": "70", "full_scans": "3"}.items():
        (ksm_dir / name).write_text(value + "\n")
    monkeypatch.setattr(ksm, "KSM_DIR", str(ksm_dir))
    monkeypatch.setattr(ksm, "others_merging", lambda: False)
    return ksm_dir


def _settings(ksm_dir: Path) -> list[str]:
    return [(ksm_dir / name).read_text().strip() for name in ksm.SETTINGS]


def test_a_stopped_ksmd_is_started_at_xenlike_s_rate_and_put_back_after(fake_ksm: Path, tmp_path: Path) -> None:
    ksmd = ksm.Ksmd(str(tmp_path / "saved.json"))
    assert ksmd.ensure_running() is True
    assert _settings(fake_ksm) == ["1", str(ksm.SCAN_PAGES), str(ksm.SCAN_SLEEP_MS)]
    assert ksmd.restore() is True
    assert _settings(fake_ksm) == ["0", "100", "20"]
    assert not (tmp_path / "saved.json").exists()


def test_a_running_ksmd_is_left_as_its_owner_tuned_it(fake_ksm: Path, tmp_path: Path) -> None:
    (fake_ksm / "run").write_text("1\n")
    (fake_ksm / "pages_to_scan").write_text("5000\n")
    ksmd = ksm.Ksmd(str(tmp_path / "saved.json"))
    assert ksmd.ensure_running() is False
    assert ksmd.restore() is False
    assert _settings(fake_ksm) == ["1", "5000", "20"]


def test_the_last_of_two_hosts_to_stop_puts_ksmd_back(
    fake_ksm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = ksm.Ksmd(str(tmp_path / "saved.json")), ksm.Ksmd(str(tmp_path / "saved.json"))
    assert first.ensure_running() is True
    assert second.ensure_running() is False  # already running, at xenlike's rate
    monkeypatch.setattr(ksm, "others_merging", lambda: True)  # the second host's guests
    assert first.restore(wait_s=0) is False
    assert _settings(fake_ksm)[0] == "1"
    monkeypatch.setattr(ksm, "others_merging", lambda: False)
    assert second.restore(wait_s=0) is True
    assert _settings(fake_ksm) == ["0", "100", "20"]


def test_a_host_that_was_killed_leaves_the_settings_for_the_next_to_put_back(fake_ksm: Path, tmp_path: Path) -> None:
    assert ksm.Ksmd(str(tmp_path / "saved.json")).ensure_running() is True  # then SIGKILLed: no restore
    later = ksm.Ksmd(str(tmp_path / "saved.json"))
    assert later.ensure_running() is False
    assert later.restore() is True
    assert _settings(fake_ksm) == ["0", "100", "20"]


def test_a_ksmd_that_cannot_be_started_is_refused_by_name_and_nothing_is_left_changed(
    fake_ksm: Path, tmp_path: Path
) -> None:
    (fake_ksm / "run").unlink()
    (fake_ksm / "run").mkdir()  # reading or writing it fails, even as root
    with pytest.raises(ksm.KsmError, match=r"ksmd is not running and cannot be started \(.*run: "):
        ksm.Ksmd(str(tmp_path / "saved.json")).ensure_running()
    assert (fake_ksm / "pages_to_scan").read_text() == "100\n"  # never written
    assert not (tmp_path / "saved.json").exists()


def test_counters_are_ksmd_s_and_all_zero_without_ksm(fake_ksm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ksm.counters() == ksm.KsmCounters(running=False, pages_shared=7, pages_sharing=70, full_scans=3)
    monkeypatch.setattr(ksm, "KSM_DIR", str(fake_ksm / "missing"))
    assert ksm.counters() == ksm.KsmCounters(False, 0, 0, 0)
    assert ksm.available() is not None and "CONFIG_KSM" in ksm.available()


def test_a_process_that_is_gone_shares_nothing() -> None:
    assert ksm.merging_pages(2**22 + 1) == 0  # above pid_max's largest value
    assert ksm.merging_pages(os.getpid()) >= 0
