"""xentop's output format (tools/xentop/xentop.c): summary lines, column header, rows, state letters."""

from __future__ import annotations

import time

from xenlike.tools.xl_format import format_xentop, state_letters, xentop_state

HOST = {"total_kb": 1048576, "free_kb": 933888, "nr_cpus": 4, "cpu_mhz": 2596, "version": "4.19-xenlike"}
HEADER = ("      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) "
          "VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID  NOTIF/s")


def domain(name, domid, cpu_time, vbds=(), **flags):
    return {"domid": domid, "name": name, "cpu_time": cpu_time, "memory_kb": 32768, "maxmem_kb": 65536, "vcpus": 1,
            "nets": [], "vbds": list(vbds), "ssid": 0, **flags}


def sample(at, domains):
    return {"time": at, "monotonic": at, "host": HOST, "domains": domains}


def test_a_frame_has_the_summary_the_column_header_and_a_row_per_domain_sorted_by_name():
    at = time.mktime((2026, 1, 2, 10, 27, 18, 0, 0, -1))
    disk = {"read_requests": 7, "write_requests": 12, "read_sectors": 56, "write_sectors": 96, "oo_requests": 0}
    frame = format_xentop(sample(at, [
        domain("Domain-0", 0, 12.7, running=True),
        domain("web", 3, 1.0, [disk, dict(disk)], blocked=True),
        domain("db", 2, 0.5, paused=True),
    ])).splitlines()
    assert frame[0] == "xentop - 10:27:18   Xen 4.19-xenlike"
    assert frame[1] == "3 domains: 1 running, 1 blocked, 1 paused, 0 crashed, 0 dying, 0 shutdown "
    assert frame[2] == "Mem: 1048576k total, 114688k used, 933888k free    CPUs: 4 @ 2596MHz"
    assert frame[3] == HEADER
    assert [line.split()[0] for line in frame[4:]] == ["db", "Domain-0", "web"]  # xentop sorts by name, ignoring case
    assert frame[6] == ("       web --b---          1    0.0      32768    3.1      65536       6.2     1    0        0"
                        "        0    2        0       14       24        112        192    0        -")


def test_batch_frames_have_no_summary_and_cpu_percent_compares_two_samples():
    first = sample(100.0, [domain("web", 3, 1.0, blocked=True)])
    second = sample(102.0, [domain("web", 3, 1.5, running=True), domain("new", 4, 9.0)])
    lines = format_xentop(second, first, summary=False).splitlines()
    assert lines[0] == HEADER
    new, web = (line.split() for line in lines[1:])
    assert web[:4] == ["web", "-----r", "1", "25.0"]  # 0.5 s of CPU in 2 s
    assert new[3] == "0.0"  # not in the sample before


def test_notifications_per_second_sum_both_directions_of_every_device_ring_between_two_samples():
    def disk(sent, received):
        return {"write_requests": 1, "notify_sent": sent, "notify_received": received}

    first = sample(100.0, [domain("web", 3, 1.0, [disk(10, 20), disk(0, 0)]), domain("idle", 4, 0.0),
                           domain("lost", 5, 0.0, [None])])
    second = sample(102.0, [domain("web", 3, 1.0, [disk(110, 120), disk(30, 40)]), domain("idle", 4, 0.0),
                            domain("lost", 5, 0.0, [None])])
    assert [line.split()[-1] for line in format_xentop(first, summary=False).splitlines()[1:]] == ["-", "-", "0.0"]
    rows = {line.split()[0]: line.split()[-1] for line in format_xentop(second, first, summary=False).splitlines()[1:]}
    assert rows == {"web": "135.0", "idle": "-", "lost": "-"}  # (100 + 100 + 30 + 40) / 2 s; no ring: "-"


def test_names_are_cut_to_ten_characters_unless_full_names():
    rows = [domain("a-rather-long-name", 1, 0.0)]
    assert format_xentop(sample(0.0, rows), summary=False).splitlines()[1].startswith("a-rather-l ")
    full = format_xentop(sample(0.0, rows), full_names=True, summary=False).splitlines()
    assert full[0].startswith("              NAME  STATE") and full[1].startswith("a-rather-long-name ")


def test_big_counters_widen_their_column_and_unreported_disks_show_a_dash():
    rows = [domain("big", 1, 0.0, [{"write_requests": 123456789, "write_sectors": 5}]),
            domain("lost", 2, 0.0, [None])]
    header, big, lost = format_xentop(sample(0.0, rows), summary=False).splitlines()
    assert "    VBD_WR " in header and "123456789" in big.split()
    assert header.index("VBD_WR") + len("VBD_WR") == big.index("123456789") + len("123456789")  # right-aligned
    assert lost.split()[13:18] == ["-", "-", "-", "-", "-"]


def test_xentop_state_letters_are_d_s_b_c_p_r_unlike_xl_lists():
    crashed = {"shutdown": True, "shutdown_reason": 3}
    powered_off = {"shutdown": True, "shutdown_reason": 0}
    assert xentop_state(crashed) == "---c--" and state_letters(crashed) == "---sc-"
    assert xentop_state(powered_off) == "-s----" and state_letters(powered_off) == "---s--"
    assert xentop_state({"paused": True}) == "----p-" and state_letters({"paused": True}) == "--p---"
    assert xentop_state({"running": True, "dying": True}) == "d----r"
    summary = format_xentop(sample(0.0, [domain("c", 1, 0.0, **crashed), domain("o", 2, 0.0, **powered_off),
                                         domain("d", 3, 0.0, dying=True)])).splitlines()[1]
    assert summary == "3 domains: 0 running, 0 blocked, 0 paused, 1 crashed, 1 dying, 1 shutdown "


def test_device_lines_follow_each_domain_row_as_xentop_n_and_x_print_them_with_each_ring_s_rate():
    def disk(reads, sent, received):
        return {"read_requests": reads, "write_requests": 2, "read_sectors": 8 * reads, "write_sectors": 16,
                "oo_requests": 0, "notify_sent": sent, "notify_received": received}

    def vif(sent, received):
        return {"rx_bytes": 1500, "rx_packets": 1, "tx_bytes": 3000, "tx_packets": 2, "notify_sent": sent,
                "notify_received": received}

    def web(disks, nets):
        row = domain("web", 3, 1.0, disks)
        row.update(nets=nets, devids={"vbds": [51712, 51728][: len(disks)], "nets": [0]})
        return row

    first = sample(100.0, [web([disk(1, 10, 10), None], [vif(4, 4)])])
    second = sample(104.0, [web([disk(5, 30, 30), None], [vif(24, 24)])])
    lines = format_xentop(second, first, summary=False, networks=True, vbds=True).splitlines()
    assert lines[0] == HEADER and lines[1].split()[0] == "web"
    assert lines[2] == ("Net0 RX:     1500bytes        1pkts        0err        0drop  "
                        "TX:     3000bytes        2pkts        0err        0drop   NOTIF/s:     10.0")
    assert lines[3] == ("VBD BlkBack 51712 [ca: 0] OO:        0   RD:        5   WR:        2   RSECT:         40   "
                        "WSECT:         16   NOTIF/s:     10.0")  # (30 + 30 - 20) / 4 s
    assert lines[4] == ("VBD BlkBack 51728 [ca:10] OO:        -   RD:        -   WR:        -   RSECT:          -   "
                        "WSECT:          -   NOTIF/s:        -")
    assert len(format_xentop(second, first, summary=False).splitlines()) == 2  # without -n and -x: rows only
    assert format_xentop(second, summary=False, vbds=True).splitlines()[2].endswith("NOTIF/s:      0.0")
