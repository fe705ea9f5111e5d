"""xl's info, uptime and block-list output (xl_info.c print_info, uptime_to_string, print_uptime; xl_block.c)."""

from __future__ import annotations

import time

import pytest

from xenlike.tools.xl_format import format_block_list, format_info, format_sharing, format_uptime, uptime_text

DAY = 86400


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, " 0:00:00"),
        (3 * 3600 + 4 * 60 + 5, " 3:04:05"),  # "%2d:%02d:%02d": the hour padded to two columns
        (13 * 3600 + 59, "13:00:59"),
        (DAY + 3 * 3600 + 4 * 60 + 5, "1 day,  3:04:05"),  # "%d day, %2d:%02d:%02d"
        (2 * DAY + 23 * 3600 + 59 * 60 + 59.9, "2 days, 23:59:59"),
        (400 * DAY + 60, "400 days,  0:01:00"),
    ],
)
def test_uptime_is_uptime_to_string(seconds: float, text: str) -> None:
    assert uptime_text(seconds) == text


def test_short_uptime_drops_the_seconds() -> None:
    assert uptime_text(3 * 3600 + 4 * 60 + 5, short=True) == " 3:04"
    assert uptime_text(DAY + 3 * 3600 + 4 * 60 + 5, short=True) == "1 day,  3:04"
    assert uptime_text(3 * DAY + 12 * 3600, short=True) == "3 days, 12:00"


def test_uptime_table_is_print_uptime() -> None:
    rows = [{"name": "Domain-0", "domid": 0, "uptime": DAY + 3 * 3600 + 4 * 60 + 5},
            {"name": "web", "domid": 12, "uptime": 65}]
    assert format_uptime(rows).splitlines() == [
        "Name                                ID Uptime",  # "%-33s %4s %s"
        "Domain-0                             0 1 day,  3:04:05",
        "web                                 12  0:01:05",
    ]


def test_short_uptime_is_one_line_per_domain_without_a_header() -> None:
    now = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))
    rows = [{"name": "Domain-0", "domid": 0, "uptime": 2 * DAY + 3600}, {"name": "web", "domid": 3, "uptime": 300}]
    assert format_uptime(rows, short=True, now=now).splitlines() == [
        " 07:08:09 up 2 days,  1:00, Domain-0 (0)",  # " %s up %s, %s (%d)"
        " 07:08:09 up  0:05, web (3)",
    ]


def test_block_list_handle_is_the_front_ends_domid() -> None:
    rows = [{"vdev": 51728, "backend": 0, "frontend_id": 7, "state": 4, "evtch": 12, "ring_ref": 8,
             "be_path": "/local/domain/0/backend/vbd/7/51728"}]
    header, row = format_block_list(rows).splitlines()
    assert header.split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    # "%-5d %-3d %-6d %-5d %-6d %-8d %-30s": devid, backend_id, frontend_id, state, evtch, rref, backend
    assert row == "51728 0   7      4     12     8        /local/domain/0/backend/vbd/7/51728"


PHYSINFO = {"nr_cpus": 16, "nr_nodes": 2, "cores_per_socket": 4, "threads_per_core": 2, "cpu_khz": 2596120,
            "total_frames": 262144, "free_frames": 233472, "pcpus": [0, 1, 2, 3], "sched": "credit",
            "version": {"major": 4, "minor": 19, "extra": "-xenlike", "caps": "xenlike-1-x86_64",
                        "commandline": "--run-dir /tmp/xl --memory 1024 --pcpus 4 --sched credit"}}
NODE = {"host": "vm", "release": "6.8.0", "version": "#1 SMP PREEMPT_DYNAMIC", "machine": "x86_64"}


def test_info_is_print_info_s_lines_in_xl_s_order_and_format() -> None:
    assert format_info(PHYSINFO, NODE, {"run_dir": "/tmp/xl"}).splitlines() == [
        # output_nodeinfo
        "host                   : vm",  # "%-23s: %s", as maybe_printf's format strings are padded
        "release                : 6.8.0",
        "version                : #1 SMP PREEMPT_DYNAMIC",
        "machine                : x86_64",
        # output_physinfo
        "nr_cpus                : 16",
        "nr_nodes               : 2",
        "cores_per_socket       : 4",
        "threads_per_core       : 2",
        "cpu_mhz                : 2596.120",  # "%d.%03d" of cpu_khz
        "total_memory           : 1024",
        "free_memory            : 912",
        "sharing_freed_memory   : 0",  # no --page-sharing: nothing shared, as Xen prints without mem_sharing
        "sharing_used_memory    : 0",
        # output_xeninfo
        "xen_major              : 4",
        "xen_minor              : 19",
        "xen_extra              : -xenlike",
        "xen_version            : 4.19-xenlike",  # "%d.%d%s"
        "xen_caps               : xenlike-1-x86_64",
        "xen_scheduler          : credit",
        "xen_pagesize           : 4096",
        "xen_commandline        : --run-dir /tmp/xl --memory 1024 --pcpus 4 --sched credit",
        # xenlike's own, after xl's
        "nr_pcpus_scheduled     : 4",
        "page_sharing           : off (--page-sharing turns it on)",
        "run_dir                : /tmp/xl",
    ]


def test_info_shows_what_page_sharing_freed_and_uses_in_mib() -> None:
    shared = {**PHYSINFO, "page_sharing": True, "sharing_freed_frames": 25600, "sharing_used_frames": 2560}
    lines = format_info(shared, NODE).splitlines()
    free = lines.index("free_memory            : 912")
    # output_physinfo: sharing_freed_pages and sharing_used_frames, in MiB, right after free_memory
    assert lines[free + 1 : free + 3] == ["sharing_freed_memory   : 100", "sharing_used_memory    : 10"]
    assert "page_sharing           : on (ksmd)" in lines


def test_sharing_is_xl_sharing_s_table() -> None:
    rows = [{"name": "Domain-0", "domid": 0, "memory_kb": 32768, "shared_kb": 0},
            {"name": "idle7", "domid": 7, "memory_kb": 4096, "shared_kb": 4420}]
    assert format_sharing(rows).splitlines() == [
        "Name                                        ID   Mem Shared",
        # "%-40s %5d %5lu  %5lu": name, domid, current memory and shared memory in MiB
        "Domain-0                                     0    32      0",
        "idle7                                        7     4      4",
    ]


@pytest.mark.parametrize("khz, text", [(2596120, "2596.120"), (3000000, "3000.000"), (800005, "800.005"), (0, "0.000")])
def test_cpu_mhz_keeps_three_decimals_of_the_khz(khz: int, text: str) -> None:
    lines = format_info({**PHYSINFO, "cpu_khz": khz}, NODE).splitlines()
    assert f"cpu_mhz                : {text}" in lines


def test_info_lists_the_jail_and_each_mechanism_on_or_off() -> None:
    jail = {"enabled": True, "mechanisms": [["landlock", True, "ABI 7"], ["seccomp", False, "seccomp unavailable"]]}
    lines = format_info({**PHYSINFO, "jail": jail}, NODE).splitlines()
    assert lines[-3:] == [
        "jail                   : on",
        "jail_landlock          : on  (ABI 7)",
        "jail_seccomp           : off (seccomp unavailable)",
    ]
    off = format_info({**PHYSINFO, "jail": {"enabled": False, "mechanisms": []}}, NODE).splitlines()
    assert off[-1] == "jail                   : OFF (--no-jail): guests can reach what the host's user can"


def test_info_shows_how_many_more_guests_fit_and_which_limit_says_so() -> None:
    fit = {"count": 27, "limit": "hypervisor fds (RLIMIT_NOFILE)", "guest_mib": 16}
    lines = format_info({**PHYSINFO, "max_new_domains": fit}, NODE, {"run_dir": "/tmp/xl"}).splitlines()
    assert lines[-2] == "max_new_domains        : 27 (limited by hypervisor fds (RLIMIT_NOFILE))"
    assert lines[-1].startswith("run_dir")
    assert not any(line.startswith("max_new_domains") for line in format_info(PHYSINFO, NODE).splitlines())
