"""``xenlike top``: xentop's frames (tools/xentop/xentop.c) from a live host, disk counters from the blkback workers."""

from __future__ import annotations

import re

from .conftest import wait_for
from .test_blk import create_doing_io
from .test_lifecycle import write_cluster

HEADER = ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)", "MAXMEM(k)", "MAXMEM(%)", "VCPUS", "NETS",
          "NETTX(k)", "NETRX(k)", "VBDS", "VBD_OO", "VBD_RD", "VBD_WR", "VBD_RSECT", "VBD_WSECT", "SSID", "NOTIF/s"]


def batch_frames(output: str) -> list[dict[str, dict[str, str]]]:
    """Each frame of ``top -b`` output: its rows by domain name, each a dict of column to cell."""
    frames: list[dict[str, dict[str, str]]] = []
    for line in output.splitlines():
        cells = line.split()
        if cells == HEADER:
            frames.append({})
        else:
            row = dict(zip(HEADER, cells, strict=True))
            frames[-1][row["NAME"]] = row
    return frames


def test_top_batch_shows_every_domain_and_live_disk_counters(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "sleeper", "workload": "idle", "maxmem": 24},
                                         {"name": "crasher", "workload": "crash", "on_crash": "preserve"}])))
    create_doing_io(host, tmp_path, "disky", pause_ms=5)
    host.xl("pause", "sleeper")
    wait_for(lambda: host.domains()["crasher"]["state"] == "---sc-", what="crasher to crash")

    output = host.xl("top", "-b", "-i", "2", "-d", "0.2").stdout
    assert not output.startswith("xentop - ")  # batch mode prints no summary, as xentop -b
    frames = batch_frames(output)
    assert len(frames) == 2
    assert all(set(frame) == {"Domain-0", "sleeper", "crasher", "disky"} for frame in frames)
    assert all(row["CPU(%)"] == "0.0" for row in frames[0].values())  # no earlier sample to compare with

    second = frames[1]
    assert second["sleeper"]["STATE"] == "----p-"  # d s b c p r
    assert second["crasher"]["STATE"] == "---c--"  # xenstat counts a crash apart from a shutdown
    assert re.fullmatch(r"--b---|-----r", second["disky"]["STATE"])
    assert re.fullmatch(r"--b---|-----r", second["Domain-0"]["STATE"])
    disky = second["disky"]
    assert disky["VBDS"] == "1" and disky["VBD_OO"] == "0"
    # The guest is still writing: these come live from its disk's blkback worker.
    assert int(disky["VBD_WR"]) > 0 and int(disky["VBD_WSECT"]) >= int(disky["VBD_WR"])
    assert int(disky["VBD_RD"]) > 0 and int(disky["VBD_RSECT"]) > 0
    assert second["sleeper"]["VBDS"] == "0" and second["sleeper"]["VBD_WR"] == "0"
    assert second["disky"]["MEM(k)"] == str(32 * 1024) and second["sleeper"]["MEM(k)"] == str(16 * 1024)
    assert second["disky"]["MAXMEM(k)"] == str(32 * 1024)  # no maxmem in its config: its memory
    assert second["sleeper"]["MAXMEM(k)"] == str(24 * 1024)
    # Its ring's notifications, both ways, as its blkback worker counts them; no ring, no figure.
    assert frames[0]["disky"]["NOTIF/s"] == "0.0" and float(disky["NOTIF/s"]) > 0
    assert second["sleeper"]["NOTIF/s"] == "-" and second["Domain-0"]["NOTIF/s"] == "-"


def test_top_full_names_are_not_cut(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "a-rather-long-name", "workload": "idle"}])))
    short = batch_frames(host.xl("top", "-b", "-i", "1").stdout)[0]
    full = batch_frames(host.xl("top", "-b", "-i", "1", "-f").stdout)[0]
    assert "a-rather-l" in short and "a-rather-long-name" in full


def test_top_x_shows_each_disk_s_line_and_its_ring_s_notifications_per_second(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "sleeper", "workload": "idle"}])))
    create_doing_io(host, tmp_path, "disky", pause_ms=5)
    output = host.xl("top", "-b", "-i", "3", "-d", "0.5", "-x", "-n").stdout.splitlines()
    header = [number for number, line in enumerate(output) if line.split() == HEADER]
    assert len(header) == 3
    rates = []
    for start, end in zip(header[1:], [*header[2:], len(output)]):
        frame = output[start + 1 : end]
        rows = [line.split()[0] for line in frame if not line.startswith(("VBD", "Net"))]
        assert rows == sorted(rows, key=str.casefold) and set(rows) == {"Domain-0", "disky", "sleeper"}
        disky = next(n for n, line in enumerate(frame) if line.split()[0] == "disky")
        vbd = frame[disky + 1].split()
        # xentop's do_vbd line, then the ring's own notifications per second.
        assert vbd[:4] == ["VBD", "BlkBack", "51712", "[ca:"] and vbd[4] == "0]"
        assert int(vbd[vbd.index("WR:") + 1]) > 0
        rates.append(float(vbd[vbd.index("NOTIF/s:") + 1]))
        sleeper = next(n for n, line in enumerate(frame) if line.split()[0] == "sleeper")
        assert sleeper + 1 == len(frame) or not frame[sleeper + 1].startswith(("VBD", "Net"))  # no device, no line
    # The guest is still writing: its ring notifies between some two frames (a frame's counters are
    # the worker's latest answer, which may be the one before).
    assert max(rates) > 0
