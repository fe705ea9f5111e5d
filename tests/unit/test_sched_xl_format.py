"""xl's scheduling output formats: vcpu-list (tools/xl/xl_vcpu.c), sched-credit (xl_sched.c), print_bitmap."""

from __future__ import annotations

from xenlike.tools.xl_format import cpu_bitmap, format_sched_credit, format_vcpu_list


def test_bitmaps_print_as_xl_prints_them():
    assert cpu_bitmap([0, 1], 2) == "all"
    assert cpu_bitmap([1], 2) == "1"
    assert cpu_bitmap([0, 1, 2, 5, 6], 8) == "0-2,5-6"
    assert cpu_bitmap([], 4) == "none"
    assert cpu_bitmap([2, 3], 4) == "2-3"


def test_vcpu_list_columns_match_xl():
    rows = [
        {"name": "Domain-0", "domid": 0, "vcpu": 0, "online": True, "cpu": 1, "running": False, "blocked": True,
         "time": 22.74, "hard": [0, 1], "soft": [0, 1]},
        {"name": "web", "domid": 3, "vcpu": 1, "online": True, "cpu": 0, "running": True, "blocked": False,
         "time": 1.0, "hard": [0], "soft": [0, 1]},
        {"name": "web", "domid": 3, "vcpu": 2, "online": False, "cpu": None, "running": False, "blocked": False,
         "time": 0.0, "hard": [0, 1], "soft": [0, 1]},
    ]
    lines = format_vcpu_list(rows, 2).splitlines()
    assert lines[0] == "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)"
    assert lines[1] == "Domain-0                             0     0    1   -b-      22.7  all / all"
    assert lines[2] == "web                                  3     1    0   r--       1.0  0 / all"
    assert lines[3] == "web                                  3     2    -   --p       0.0  all / all"


def test_sched_credit_prints_the_pool_then_name_id_weight_cap():
    pool = {"name": "Pool-0", "tslice_ms": 30, "ratelimit_us": 1000, "migration_delay_us": 0}
    rows = [{"name": "Domain-0", "domid": 0, "weight": 256, "cap": 0},
            {"name": "web", "domid": 3, "weight": 512, "cap": 25}]
    assert format_sched_credit(pool, rows).splitlines() == [
        "Cpupool Pool-0: tslice=30ms ratelimit=1000us migration-delay=0us",
        "Name                                ID Weight  Cap",
        "Domain-0                             0    256    0",
        "web                                  3    512   25",
    ]
    assert format_sched_credit(None, rows[1:]).splitlines()[0].startswith("Name")  # -d DOMAIN: no pool line
