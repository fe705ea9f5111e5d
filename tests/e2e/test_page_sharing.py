"""`up --page-sharing`: ksmd merges what guests hold alike; `sharing` and `info` show it, dom0 shares nothing.

The figures are the kernel's, so the test waits for ksmd rather than for a time:
it scans at ``xenlike.kernel.ksm.SCAN_PAGES`` a wake-up when xenlike started it.
"""

from __future__ import annotations

import os

import pytest

from xenlike.kernel import ksm

from .conftest import Host, wait_for
from .test_lifecycle import write_cluster

SETTINGS = ("run", "pages_to_scan", "sleep_millisecs")


def _settings() -> list[str]:
    return [open(os.path.join(ksm.KSM_DIR, name)).read() for name in SETTINGS]


def _startable() -> str | None:
    missing = ksm.available()
    if missing is None and not ksm.counters().running and os.geteuid() != 0:
        return "ksmd is not running and only root may start it"
    return missing


@pytest.mark.skipif(_startable() is not None, reason=str(_startable()))
@pytest.mark.timeout(180)
def test_idle_guests_share_pages_dom0_shares_none_and_ksmd_is_put_back_at_down(host, tmp_path):
    before = _settings()
    guests = [{"name": f"idle{i}", "memory": 4, "workload": "idle"} for i in range(3)]
    host.up("--page-sharing", str(write_cluster(tmp_path, guests)))
    assert ksm.counters().running

    def shared_mib() -> dict[str, int]:
        lines = host.xl("sharing").stdout.splitlines()
        assert lines[0] == "Name                                        ID   Mem Shared"
        return {line.split()[0]: int(line.split()[3]) for line in lines[1:]}

    # An idle guest's private pages are mostly the bytes every other guest has: most of them merge.
    shared = wait_for(lambda: (s := shared_mib()) and all(s[g["name"]] >= 1 for g in guests) and s, 120,
                      "ksmd to merge pages of every guest")
    assert shared["Domain-0"] == 0
    dom0 = host.call("list", domain="Domain-0", long=True)[0]["info"]["pid"]
    with open(f"/proc/{dom0}/ksm_stat") as f:
        assert "ksm_merge_any: no" in f.read()  # privileged: none of its pages is ever offered
    one = host.xl("sharing", "idle1").stdout.splitlines()
    assert len(one) == 2 and one[1].split()[:2] == ["idle1", str(host.domains()["idle1"]["domid"])]
    info = dict(line.split(":", 1) for line in host.xl("info").stdout.splitlines())
    assert int(info["sharing_freed_memory   "]) >= 1 and info["page_sharing           "].strip() == "on (ksmd)"
    assert "--page-sharing" in info["xen_commandline        "]

    host.xl("down")
    assert _settings() == before


@pytest.mark.skipif(_startable() is not None, reason=str(_startable()))
@pytest.mark.timeout(120)
def test_two_hosts_share_one_ksmd_and_the_last_to_stop_puts_it_back(host, tmp_path):
    before = _settings()
    guest = [{"name": "idle0", "memory": 4, "workload": "idle"}]
    host.up("--page-sharing", str(write_cluster(tmp_path, guest)))
    other = Host()
    try:
        other.up("--page-sharing", str(write_cluster(tmp_path, guest)))
        host.xl("down")
        assert ksm.counters().running  # the other host's guests still share pages
        other.xl("down")
        assert _settings() == before
    finally:
        other.teardown()


def test_without_page_sharing_nothing_is_shared_and_info_says_how_to_turn_it_on(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "idle0", "memory": 4, "workload": "idle"}])))
    rows = host.xl("sharing").stdout.splitlines()[1:]
    assert {row.split()[0]: row.split()[3] for row in rows} == {"Domain-0": "0", "idle0": "0"}
    info = host.xl("info").stdout
    assert "sharing_freed_memory   : 0" in info
    assert "page_sharing           : off (--page-sharing turns it on)" in info
