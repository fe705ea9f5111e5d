"""The three device models of a disk end to end: split (blkfront/blkback), direct (the hypervisor), passthrough.

The same workload gives the same image in every model; every model refuses what
blkback refuses; a passthrough guest reaches no file but its image; acknowledged,
flushed writes survive SIGKILL of every process in the path.
"""

from __future__ import annotations

import os
import signal
import struct
import zlib

import pytest

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster

MODELS = ("split", "direct", "passthrough")


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
    assert "hypervisor" in direct and "xvda: direct disk: cannot be hot-unplugged" in direct
    rows = {row["name"]: row for row in host.call("list", long=True)}
    assert rows["passthrough"]["disk_models"] == [
        {"vdev": "xvda", "model": "passthrough", "shareable": False, "hot_unplug": False, "migratable": False}
    ]
    assert rows["split"]["disk_models"][0]["hot_unplug"] is True
    detach = host.xl("block-detach", "passthrough", "xvda", check=False)
    assert detach.returncode != 0 and "cannot be unplugged safely" in detach.stderr
    for verb in (("save", "passthrough", str(tmp_path / "p.save")), ("migrate", "passthrough", "127.0.0.1:1", "--key", "k")):
        refused = host.xl(*verb, check=False)
        assert refused.returncode != 0 and "xvda is a passthrough disk" in refused.stderr, refused.stderr
    assert not (tmp_path / "p.save").exists()
    attach = host.xl("block-attach", "split", f"vdev=xvdb, size=4M, model=direct, target={tmp_path / 'b.img'}",
                     check=False)
    assert attach.returncode != 0 and "model=split" in attach.stderr


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
