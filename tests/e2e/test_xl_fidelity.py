"""xl's behaviours that xenlike mirrors, end to end: on_* soft-reset, block-list's columns, numeric vdevs."""

from __future__ import annotations

from .conftest import wait_for
from .test_lifecycle import write_cluster


def test_soft_reset_acts_as_restart_and_says_so(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "s", "workload": "crash", "workload_args": ["--after", "0.2"],
                                          "on_crash": "soft-reset"}])))
    wait_for(lambda: host.log("s").count("will crash") >= 2, what="a second boot after the crash")
    assert "s" in host.domains()
    assert "soft-reset acts as restart" in host.log("dom0")


def test_block_list_shows_the_numeric_vdev_and_the_front_ends_domid(host, tmp_path):
    image = tmp_path / "n.img"
    host.up(str(write_cluster(tmp_path, [{"name": "n", "workload": "idle",
                                          "disk": [f"vdev=51728, size=4M, target={image}"]}])))
    domid = host.domains()["n"]["domid"]

    def connected_row():
        rows = [line.split() for line in host.xl("block-list", "n").stdout.splitlines()[1:]]
        return rows if rows and rows[0][3] == "4" else None

    [row] = wait_for(connected_row, what="the disk to connect")
    # Vdev BE handle state evt-ch ring-ref BE-path, as xl_block.c prints a libxl_diskinfo
    assert row[:4] == ["51728", "0", str(domid), "4"]
    assert row[6] == f"/local/domain/0/backend/vbd/{domid}/51728"
