"""``xenlike inject`` on block devices: back-end restart and recovery, sector-eio, ring-corrupt.

Each fault gives its documented outcome and nothing else is harmed: a checksummed
workload keeps every acknowledged write through a back-end kill and restart, reads
stay correct through injected EIO, and a corrupted ring harms only its own disk.
"""

from __future__ import annotations

import errno
import re

from .conftest import console_json, wait_for, workload
from .test_inject import counter, grows, stays
from .test_lifecycle import write_cluster


def guest(name: str, mode: str, tmp_path, **extra) -> dict:
    return {"name": name, "memory": 32, "workload": workload("faults_disk"), "workload_args": [mode, "xvda"],
            "disk": [f"vdev=xvda, size=8M, target={tmp_path / name}.img"], **extra}


def node(host, name: str, path: str) -> str | None:
    return host.xs_read(f"/local/domain/{host.domains()[name]['domid']}/data/{path}")


def worker_pid(host, name: str) -> int:
    out = host.xl("inject", "backend-freeze", name, "xvda").stdout
    fault_id = out.split()[0].lstrip("#")
    host.xl("inject", "--clear", fault_id)
    return int(out.split("worker pid ")[1].split(")")[0])


def test_a_killed_back_end_comes_back_and_every_acknowledged_write_survives(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [guest("a", "ledger", tmp_path), guest("b", "tolerant", tmp_path)])))
    acked, b_rounds = counter(host, "a", "acked"), counter(host, "b", "rounds")
    grows(acked, by=64, what="a's ledger")
    grows(b_rounds, what="b's I/O")

    # A kill with requests certainly in flight: freeze the worker, let the guest queue, kill it.
    out = host.xl("inject", "backend-freeze", "a", "xvda").stdout
    first_pid = int(out.split("worker pid ")[1].split(")")[0])
    stays(acked)
    assert "restarts the back end" in host.xl("inject", "backend-kill", "a", "xvda").stdout
    grows(acked, by=64, what="a's ledger after its back end was restarted")
    host.xl("inject", "--clear")  # the freeze's worker is gone: nothing to continue

    # Kills while it runs, on the new workers.
    assert worker_pid(host, "a") != first_pid
    for _ in range(2):
        host.xl("inject", "backend-kill", "a", "xvda")
        grows(acked, by=64, what="a's ledger after another restart")
    grows(b_rounds, what="b's I/O after a's back end was killed three times")

    host.xl("xenstore-write", f"/local/domain/{host.domains()['a']['domid']}/data/stop", "1")
    ledger = console_json(host, "a", "LEDGER", timeout=30)
    assert "error" not in ledger, ledger
    assert ledger["bad"] == [] and ledger["slots"] == 512 and ledger["acked"] >= 4 * 64
    reissued = [int(n) for n in re.findall(r"reconnected; (\d+) request\(s\) issued again", host.log("a"))]
    assert len(reissued) == 3 and reissued[0] >= 1, reissued  # the frozen worker had requests in flight
    assert node(host, "b", "errors") is None  # b saw nothing
    domid = host.domains()["a"]["domid"]
    error_node = f"/local/domain/0/error/backend/vbd/{domid}/51712/error"
    assert host.xs_read(error_node) is None

    # A worker that keeps dying is restarted 3 times a minute; the fourth death closes the device.
    host.xl("inject", "backend-kill", "a", "xvda")
    wait_for(lambda: host.xs_read(error_node), what="the error node of a worker that died a fourth time")
    assert "serving: the back-end worker died" in host.xs_read(error_node)
    grows(b_rounds, what="b's I/O after a's disk closed")
    assert host.run_dir.running_pid() == host.hypervisor_pid


def test_an_injected_eio_fails_the_range_alone_names_the_sector_and_clears(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [guest("e", "eio", tmp_path)])))
    good = counter(host, "e", "good")
    grows(good, by=256, timeout=30, what="e's reads")

    out = host.xl("inject", "sector-eio", "e", "xvda", "100-103").stdout
    assert out.startswith("#1 sector-eio e xvda sectors 100-103") and "OSError(EIO)" in out
    wait_for(lambda: node(host, "e", "error/96"), what="e's read of sectors 96..103 to fail")
    message = node(host, "e", "error/96")
    assert message.startswith(f"{errno.EIO} ") and "read at sector 96 failed" in message
    wait_for(lambda: node(host, "e", "write_error/96"), what="e's write into the range")
    assert node(host, "e", "write_error/96").startswith(f"{errno.EIO} ")
    grows(good, by=512, what="e's reads elsewhere while the range fails")
    assert node(host, "e", "bad") == "0"
    traced = host.xl("trace", "--class", "fault", "--json", "-T", "2").stdout  # each failed request, as it fails
    assert "sector-eio" in traced and "100" in traced
    # Only the block holding the range fails: one error a pass.
    assert node(host, "e", "pass_errors") == "1"

    assert host.xl("inject", "--clear", "1").stdout == "cleared #1\n"
    errors = counter(host, "e", "errors")
    wait_for(lambda: node(host, "e", "pass_errors") == "0", what="a whole pass with no error after --clear")
    settled = errors()
    grows(good, by=512, what="e's reads after --clear")
    assert errors() == settled and node(host, "e", "bad") == "0"

    refused = host.xl("inject", "sector-eio", "e", "xvda", "16384", check=False)
    assert refused.returncode != 0 and "past the disk's last sector, 16383" in refused.stderr
    refused = host.xl("inject", "sector-eio", "e", "xvda", "9-3", check=False)
    assert refused.returncode != 0 and "at most LAST" in refused.stderr


def test_a_corrupted_slot_fails_one_request_and_a_corrupted_index_closes_only_that_disk(host, tmp_path):
    direct = {"name": "d", "workload": "ticker", "disk": [f"vdev=xvda, size=8M, model=direct, target={tmp_path}/d.img"]}
    host.up(str(write_cluster(tmp_path, [guest("a", "tolerant", tmp_path), guest("b", "tolerant", tmp_path), direct])))
    a_rounds, b_rounds = counter(host, "a", "rounds"), counter(host, "b", "rounds")
    refused = host.xl("inject", "sector-eio", "d", "xvda", "0", check=False)
    assert refused.returncode != 0 and "d's xvda is a direct disk" in refused.stderr
    grows(a_rounds, what="a's I/O")
    grows(b_rounds, what="b's I/O")

    out = host.xl("inject", "ring-corrupt", "a", "xvda", "slot").stdout
    assert "ring-corrupt a xvda slot" in out and "BLKIF_RSP_EOPNOTSUPP" in out
    wait_for(lambda: node(host, "a", "errors") == "1", what="a's scribbled request to fail")
    assert node(host, "a", "last_error").startswith(f"{errno.EOPNOTSUPP} ")
    assert "not supported" in node(host, "a", "last_error")
    grows(a_rounds, what="a's I/O after the scribbled slot: the ring goes on")
    assert node(host, "a", "errors") == "1" and node(host, "a", "crosstalk") is None

    adomid = host.domains()["a"]["domid"]
    host.xl("inject", "ring-corrupt", "a", "xvda", "index")
    error_node = f"/local/domain/0/error/backend/vbd/{adomid}/51712/error"
    wait_for(lambda: host.xs_read(error_node), what="the back end's error node")
    assert "front end provided bogus ring requests" in host.xs_read(error_node)
    wait_for(lambda: node(host, "a", "gone") == "1", what="a's disk to close")
    grows(b_rounds, what="b's I/O after a's ring was corrupted")
    assert node(host, "b", "errors") is None
    assert {"a", "b"} <= set(host.domains()) and host.run_dir.running_pid() == host.hypervisor_pid
    refused = host.xl("inject", "ring-corrupt", "b", "xvda", "head", check=False)
    assert refused.returncode != 0 and "slot or index, not 'head'" in refused.stderr
