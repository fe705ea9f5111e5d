"""The three device models of a disk end to end: split (blkfront/blkback), direct (the hypervisor), passthrough.

The same workload gives the same image in every model; every model refuses what
blkback refuses; a passthrough guest reaches no file but its image; direct and
passthrough disks are hotplugged into a running guest (a direct one unplugged, a
passthrough one refused); acknowledged writes survive SIGKILL of the process in
each model's path (dom0 for split, the hypervisor for direct; a passthrough
guest's I/O goes on while dom0 is stopped).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib

import pytest

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster
from .workloads.models import block, intact

MODELS = ("split", "direct", "passthrough")
RECORD = struct.Struct("<QI")


def model_domain(name, spec, *args, workload_name="models"):
    return {"name": name, "memory": 64, "workload": workload(workload_name), "workload_args": list(args),
            "disk": [spec]}


def test_the_same_workload_leaves_the_same_image_in_every_model(host, tmp_path):
    """Checksummed writes of every size, batches, zero-copy buffers, a flush, a discard and a reboot."""
    images = {model: tmp_path / f"{model}.img" for model in MODELS}
    host.up(str(write_cluster(tmp_path, [
        model_domain(model, f"vdev=xvda, size=16M, model={model}, target={images[model]}", "same", "xvda", "5")
        for model in MODELS
    ])))
    first = {model: console_json(host, model, "FIRST", timeout=60) for model in MODELS}
    assert all(result["ok"] for result in first.values()), first
    assert len({result["sha256"] for result in first.values()}) == 1  # the same data read back everywhere
    for model in MODELS:
        host.xl("reboot", model)
    second = {model: console_json(host, model, "SECOND", timeout=60) for model in MODELS}
    assert all(result["ok"] for result in second.values()), second
    for model in MODELS:
        host.xl("destroy", model)
    contents = {model: images[model].read_bytes() for model in MODELS}
    assert contents["direct"] == contents["split"]
    assert contents["passthrough"] == contents["split"]
    assert contents["split"].count(0) < len(contents["split"])  # something was written


def test_block_list_and_list_long_say_what_each_model_allows(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        model_domain(model, f"vdev=xvda, size=16M, model={model}, target={tmp_path / model}.img", "same", "xvda", "1")
        for model in MODELS
    ])))
    for model in MODELS:
        console_json(host, model, "FIRST", timeout=60)
    listing = host.xl("block-list", "passthrough").stdout
    assert "xvda: passthrough disk: cannot be shared, hot-unplugged, migrated" in listing
    assert listing.splitlines()[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    direct = host.xl("block-list", "direct").stdout
    assert "hypervisor" in direct and "xvda: direct disk\n" in direct + "\n"  # nothing it cannot do
    printed = {row["name"]: row for row in json.loads(host.xl("list", "-l").stdout)}
    assert printed["passthrough"]["disk_models"][0]["hot_unplug"] is False  # what `xl list -l` shows
    rows = {row["name"]: row for row in host.call("list", long=True)}
    assert rows["passthrough"]["disk_models"] == [
        {"vdev": "xvda", "model": "passthrough", "shareable": False, "hot_unplug": False, "migratable": False}
    ]
    assert rows["split"]["disk_models"][0]["hot_unplug"] is True
    assert rows["direct"]["disk_models"][0] == {
        "vdev": "xvda", "model": "direct", "shareable": True, "hot_unplug": True, "migratable": True
    }
    detach = host.xl("block-detach", "passthrough", "xvda", check=False)
    assert detach.returncode != 0 and "cannot be unplugged safely" in detach.stderr
    for verb in (("save", "passthrough", str(tmp_path / "p.save")), ("migrate", "passthrough", "127.0.0.1:1", "--key", "k")):
        refused = host.xl(*verb, check=False)
        assert refused.returncode != 0 and "xvda is a passthrough disk" in refused.stderr, refused.stderr
    assert not (tmp_path / "p.save").exists()


@pytest.mark.parametrize("access", ["rw", "ro"])
def test_a_direct_disk_refuses_what_blkback_refuses(host, tmp_path, access):
    image = tmp_path / "r.img"
    image.write_bytes(bytes(4 << 20))
    host.up(str(write_cluster(tmp_path, [
        model_domain("r", f"vdev=xvda, access={access}, model=direct, target={image}", "refused", "xvda"),
        model_domain("s", ("size=4M, " if access == "rw" else "") + f"vdev=xvda, access={access}, "
                     f"target={image if access == 'ro' else tmp_path / 's.img'}", "refused", "xvda"),
    ])))
    direct, split = console_json(host, "r", "REFUSED", timeout=60), console_json(host, "s", "REFUSED", timeout=60)
    for key in ("read_past_end", "write_past_end", "discard_past_end"):
        assert direct[key].startswith("BlockIOError"), direct
        assert split[key].startswith("BlockIOError"), split  # the same refusal from blkback
    raw = direct["raw"]
    refused = -1  # BLKIF_RSP_ERROR, what blkback answers
    for key in ("past_end", "straddling_end", "negative_sector", "not_whole_sectors", "too_large", "frame_not_ours"):
        assert raw[key] == refused, (key, raw)
    assert raw["unknown_op"] == -2  # BLKIF_RSP_EOPNOTSUPP
    assert "ENODEV" in raw["other_devid"] or "no direct disk" in raw["other_devid"]
    assert raw["in_range"] == 0
    if access == "ro":
        assert direct["write_readonly"].startswith("BlockIOError") and split["write_readonly"].startswith("BlockIOError")
        assert raw["write_readonly"] == refused and raw["discard_readonly"] == refused
        assert image.read_bytes() == bytes(4 << 20)  # nothing written
    assert "request refused" in (host.path / "logs" / "hypervisor.log").read_text()
    assert host.call("ping")  # the hypervisor and dom0 serve on


def test_a_passthrough_guest_reaches_no_file_but_its_image(host, tmp_path):
    image, other = tmp_path / "p.img", tmp_path / "secret.txt"
    other.write_text("not the guest's")
    host.up(str(write_cluster(tmp_path, [
        model_domain("p", f"vdev=xvda, size=4M, model=passthrough, target={image}", "escape", "xvda", str(other)),
    ])))
    found = console_json(host, "p", "ESCAPE", timeout=60)
    for key in ("other_file", "etc_passwd", "reopen_via_proc", "create_file"):
        assert found[key] != "opened", found
    assert found["grow_image"] == "EFBIG" and found["size_after"], found
    assert found["own_io"], found
    assert os.path.getsize(image) == 4 << 20
    assert not os.path.exists("/tmp/escaped")


@pytest.mark.parametrize("model", MODELS)
def test_acknowledged_flushed_writes_survive_killing_dom0_and_the_hypervisor(host, tmp_path, model):
    """Whichever process is in the path (blkback's dom0, the hypervisor, or none), SIGKILL loses nothing flushed."""
    image = tmp_path / "dur.img"
    host.up(str(write_cluster(tmp_path, [model_domain("w", f"vdev=xvda, size=16M, model={model}, target={image}",
                                                      "durable", "xvda", workload_name="disk")])))
    domid = host.domains()["w"]["domid"]
    flushed = int(wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/flushed") or 0) >= 64 and
                           host.xs_read(f"/local/domain/{domid}/data/flushed"), timeout=30, what="flushed writes"))
    dom0 = next(p for p in host.processes() if p.name().startswith("xl-d0"))
    os.kill(dom0.pid, signal.SIGKILL)
    os.kill(host.hypervisor_pid, signal.SIGKILL)
    wait_for(lambda: not host.processes(), what="every process of the host to die")
    record = struct.Struct("<QI")
    data = image.read_bytes()
    for seq in range(len(data) // 4096):
        chunk = data[seq * 4096 : (seq + 1) * 4096]
        if seq < flushed:
            got_seq, crc = record.unpack_from(chunk)
            assert got_seq == seq and crc == zlib.crc32(chunk[record.size :]), f"acknowledged record {seq} lost"
        elif chunk != bytes(4096):
            got_seq, crc = record.unpack_from(chunk)
            assert got_seq == seq and crc == zlib.crc32(chunk[record.size :]), f"record {seq} is torn"


def _has_cap_sys_resource(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        effective = next(line for line in status if line.startswith("CapEff:")).split()[1]
    return bool(int(effective, 16) >> 24 & 1)  # CAP_SYS_RESOURCE


@pytest.mark.parametrize("model", ["direct", "passthrough"])
def test_a_disk_outside_xenbus_is_hotplugged_into_a_running_guest(host, tmp_path, model):
    """A passthrough guest boots with an 8 MiB passthrough disk, so it may write 8 MiB images (RLIMIT_FSIZE)."""
    booted = {"disk": [f"vdev=xvda, size=8M, model=passthrough, target={tmp_path / 'boot.img'}"]}
    host.up(str(write_cluster(tmp_path, [{"name": "h", "memory": 64, "workload": workload("models"),
                                          "workload_args": ["hotplug", "xvdb"],
                                          **(booted if model == "passthrough" else {})}])))
    image = tmp_path / "hot.img"
    host.xl("block-attach", "h", f"vdev=xvdb, size=8M, model={model}, target={image}")
    assert console_json(host, "h", "HOT", timeout=30) == {"model": model, "size": 8 << 20, "same": True}
    data = image.read_bytes()
    assert data[:4096] == block(7, 0, 4096) and data[-4096:] == block(7, 1, 4096) and intact(data[-4096:])
    listing = host.xl("block-list", "h").stdout.splitlines()
    rows = [line.split() for line in listing[1:] if not line.startswith("xvd")]
    assert rows[-1][-1] == ("hypervisor" if model == "direct" else "guest")
    row = next(r for r in host.call("list", long=True) if r["name"] == "h")["disk_models"][-1]
    assert row["vdev"] == "xvdb"
    assert row["model"] == model and row["hot_unplug"] is (model == "direct")
    if model == "passthrough":
        assert "xvdb: passthrough disk: cannot be shared, hot-unplugged, migrated" in listing
        detach = host.xl("block-detach", "h", "xvdb", check=False)
        assert detach.returncode != 0 and "cannot be unplugged safely" in detach.stderr
        assert len(detach.stderr.strip().splitlines()) == 1, detach.stderr
        save = host.xl("save", "h", str(tmp_path / "h.save"), check=False)
        assert save.returncode != 0 and "is a passthrough disk" in save.stderr
        assert len(host.xl("block-list", "h").stdout.splitlines()) == 5  # both still there
        larger = host.xl("block-attach", "h", f"vdev=xvdc, size=16M, model=passthrough, target={tmp_path / 'c.img'}",
                         check=False)
        if not _has_cap_sys_resource(host.hypervisor_pid):  # else its RLIMIT_FSIZE is raised to 16 MiB
            assert larger.returncode != 0 and "RLIMIT_FSIZE" in larger.stderr and "CAP_SYS_RESOURCE" in larger.stderr
            assert len(larger.stderr.strip().splitlines()) == 1, larger.stderr
            host.xl("block-attach", "h", f"vdev=xvdc, access=ro, model=passthrough, target={tmp_path / 'c.img'}")
        return
    assert "forced" not in host.xl("block-detach", "h", "xvdb").stdout
    gone = console_json(host, "h", "GONE", timeout=30)
    assert gone["disks"] == [] and gone["after"].startswith("BlockIOError"), gone
    assert len(host.xl("block-list", "h").stdout.splitlines()) == 1
    assert "direct xvdb unplugged" in (host.path / "logs" / "hypervisor.log").read_text()
    again = host.xl("block-attach", "h", f"vdev=xvdb, model=direct, target={image}")  # the vdev is free again
    assert again.returncode == 0


def _valid_records(data: bytes) -> int:
    """How many 4 KiB records from the start are whole (their own sequence number and crc)."""
    count = 0
    while (count + 1) * 4096 <= len(data):
        chunk = data[count * 4096 : (count + 1) * 4096]
        seq, crc = RECORD.unpack_from(chunk)
        if seq != count or crc != zlib.crc32(chunk[RECORD.size :]):
            break
        count += 1
    return count


@pytest.mark.parametrize("model", MODELS)
def test_every_acknowledged_write_survives_sigkill_of_the_process_in_its_path(host, tmp_path, model):
    """split: dom0 (blkback) killed; direct: the hypervisor killed; passthrough: neither is in the path, so the
    guest's own pwritev goes on while dom0 is stopped, and dom0's SIGKILL then loses nothing acknowledged."""
    image = tmp_path / "acked.img"
    host.up(str(write_cluster(tmp_path, [model_domain("w", f"vdev=xvda, size=64M, model={model}, target={image}",
                                                      "acked", "xvda")])))
    domid = host.domains()["w"]["domid"]
    acked = int(wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/acked") or 0) >= 256 and
                         host.xs_read(f"/local/domain/{domid}/data/acked"), timeout=30, what="acknowledged writes"))
    dom0 = next(p.pid for p in host.processes() if p.name().startswith("xl-d0"))
    victim = host.hypervisor_pid if model == "direct" else dom0
    if model == "passthrough":
        os.kill(dom0, signal.SIGSTOP)
        try:
            stopped_at = _valid_records(image.read_bytes())
            wait_for(lambda: _valid_records(image.read_bytes()) >= stopped_at + 256, timeout=20,
                     what="the passthrough guest to go on writing while dom0 is stopped")
        finally:
            os.kill(dom0, signal.SIGKILL)
    else:
        os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not host.processes(), timeout=30, what="every process of the host to die")
    data = image.read_bytes()
    assert _valid_records(data) >= acked, f"acknowledged record {_valid_records(data)} lost ({acked} acknowledged)"
    for seq in range(_valid_records(data), len(data) // 4096):  # past them: whole records or nothing
        chunk = data[seq * 4096 : (seq + 1) * 4096]
        if chunk != bytes(4096):
            got_seq, crc = RECORD.unpack_from(chunk)
            assert got_seq == seq and crc == zlib.crc32(chunk[RECORD.size :]), f"record {seq} is torn"
