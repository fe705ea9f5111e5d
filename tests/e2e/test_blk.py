"""Virtual block devices end to end: blkfront in guests, blkback in dom0, real image files."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import zlib

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster

MAGIC = b"XENLIKE-PATTERN\0"


def disk_domain(name, spec, *args, **extra):
    return {"name": name, "memory": 32, "workload": workload("disk"), "workload_args": list(args),
            "disk": [spec], **extra}


def write_cluster_disks(directory, domains):
    """write_cluster with disk lists (TOML arrays of strings)."""
    return write_cluster(directory, domains)


def create_disk_guest(host, tmp_path, name: str, mode: str, vdev: str = "xvda", *args: str) -> int:
    """``xenlike create`` a guest running the disk workload's ``mode`` (and ``args``) on an 8 MiB ``vdev``; its domid."""
    cfg = tmp_path / f"{name}.cfg"
    quoted = "".join(f', "{arg}"' for arg in args)
    cfg.write_text(f'name = "{name}"\nmemory = 32\nworkload = "{workload("disk")}"\n'
                   f'workload_args = ["{mode}", "{vdev}"{quoted}]\n'
                   f'disk = ["vdev={vdev}, size=8M, target={tmp_path / name}.img"]\n')
    host.xl("create", str(cfg))
    return host.domains()[name]["domid"]


def create_doing_io(host, tmp_path, name: str, pause_ms: int | None = None) -> int:
    """A guest doing I/O rounds on its disk (``create_disk_guest``), once it has done a few.

    With ``pause_ms`` it idles that long after each round: past the rings' poll windows, so its
    requests notify (a ring kept busy needs no notification at all).
    """
    pause = () if pause_ms is None else (str(pause_ms),)
    domid = create_disk_guest(host, tmp_path, name, "io", "xvda", *pause)
    wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/rounds") or 0) > 3, timeout=30, what="I/O")
    return domid


def test_written_data_is_in_the_image_and_survives_a_reboot(host, tmp_path):
    image = tmp_path / "a.img"
    host.up(str(write_cluster(tmp_path, [disk_domain("a", f"vdev=xvda, size=8M, target={image}",
                                                     "pattern", "xvda", "7", "2")])))
    wrote = console_json(host, "a", "WROTE", timeout=30)
    expected = random.Random(7).randbytes(2 << 20)
    with open(image, "rb") as f:
        assert f.read(512).startswith(MAGIC)
        assert f.read(2 << 20) == expected  # byte-identical in the image file
    assert wrote["sha256"] == hashlib.sha256(expected).hexdigest()
    host.xl("reboot", "a")
    verify = console_json(host, "a", "VERIFY", timeout=30)
    assert verify["same"] and verify["sha256"] == wrote["sha256"]


def test_a_read_only_disk_refuses_writes(host, tmp_path):
    image = tmp_path / "ro.img"
    image.write_bytes(b"\x5a" * (1 << 20))
    host.up(str(write_cluster(tmp_path, [disk_domain("r", f"vdev=xvda, access=ro, target={image}", "readonly", "xvda")])))
    outcome = console_json(host, "r", "RO", timeout=30)
    assert outcome["refused"] and outcome["unchanged"] and "read-only" in outcome["error"]
    assert image.read_bytes() == b"\x5a" * (1 << 20)


def test_hot_attach_and_detach_while_the_guest_runs(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "h", "memory": 32, "workload": workload("disk"),
                                          "workload_args": ["hotplug", "xvdb"]}])))
    image = tmp_path / "hot.img"
    host.xl("block-attach", "h", f"vdev=xvdb, size=4M, target={image}")
    hot = console_json(host, "h", "HOT", timeout=30)
    assert hot["same"] and hot["size"] == 4 << 20
    listing = host.xl("block-list", "h").stdout.splitlines()
    assert listing[0].split() == ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    assert listing[1].split()[3] == "4"  # Connected
    assert "forced" not in host.xl("block-detach", "h", "xvdb").stdout  # the front end closed cooperatively
    assert console_json(host, "h", "GONE", timeout=30)["disks"] == []
    assert len(host.xl("block-list", "h").stdout.splitlines()) == 1
    assert image.read_bytes().startswith(b"hotplugged!")


def test_two_guests_with_their_own_disks_have_no_cross_talk(host, tmp_path):
    images = [tmp_path / "x.img", tmp_path / "y.img"]
    host.up(str(write_cluster(tmp_path, [disk_domain(n, f"vdev=xvda, size=16M, target={img}", "io", "xvda")
                                         for n, img in zip(("x", "y"), images)])))
    ids = {n: host.domains()[n]["domid"] for n in ("x", "y")}
    for name, domid in ids.items():
        wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/rounds") or 0) > 20, timeout=30,
                 what=f"{name}'s I/O rounds")
    assert "CROSSTALK" not in host.log("x") + host.log("y")
    workers = {p.pid: p for p in host.processes_named("xl-blk")}
    assert len(workers) == 2  # one back-end process per device


def test_a_back_end_worker_may_run_on_every_pcpu_whatever_dom0_is_pinned_to(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    host.xl("vcpu-pin", "Domain-0", "0", "0")
    create_doing_io(host, tmp_path, "p")
    workers = {p.pid: p for p in host.processes_named("xl-blk")}.values()
    assert [sorted(p.cpu_affinity()) for p in workers] == [sorted(host.call("info")["pcpus"])]


def test_after_destroy_nothing_stays_mapped_or_bound(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    before = host.call("info")
    domid = create_doing_io(host, tmp_path, "d")
    during = host.call("info")
    assert during["grant_mappings"] > before["grant_mappings"]
    host.xl("destroy", "d")
    after = host.call("info")
    assert (after["grant_mappings"], after["evtchn_ports"]) == (before["grant_mappings"], before["evtchn_ports"])
    assert not host.processes_named("xl-blk")
    assert host.xs_read(f"/local/domain/0/backend/vbd/{domid}/51712/state") is None


def test_acknowledged_flushed_writes_survive_killing_dom0_and_the_hypervisor(host, tmp_path):
    image = tmp_path / "dur.img"
    host.up(str(write_cluster(tmp_path, [disk_domain("w", f"vdev=xvda, size=16M, target={image}", "durable", "xvda")])))
    domid = host.domains()["w"]["domid"]
    flushed = int(wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/flushed") or 0) >= 64 and
                           host.xs_read(f"/local/domain/{domid}/data/flushed"), timeout=30, what="flushed writes"))
    dom0 = host.processes_named("xl-d0")[0]
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


def test_a_front_end_that_breaks_the_ring_is_disconnected_and_harms_nobody(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        disk_domain("bad", f"vdev=xvda, size=4M, target={tmp_path / 'bad.img'}", "hostile", "xvda"),
        disk_domain("good", f"vdev=xvda, size=8M, target={tmp_path / 'good.img'}", "io", "xvda"),
    ])))
    console_json(host, "bad", "HOSTILE", timeout=30)
    bad = host.domains()["bad"]["domid"]
    wait_for(lambda: host.xs_read(f"/local/domain/0/backend/vbd/{bad}/51712/state") in ("5", "6"),
             what="the hostile front end's device to be disconnected")
    assert "broke the ring protocol" in (host.path / "logs" / "dom0.log").read_text()
    good = host.domains()["good"]["domid"]
    rounds = int(wait_for(lambda: host.xs_read(f"/local/domain/{good}/data/rounds"), what="good's I/O"))
    wait_for(lambda: int(host.xs_read(f"/local/domain/{good}/data/rounds")) > rounds + 5, what="good's I/O to go on")
    assert host.call("ping")  # dom0 is up


def test_a_killed_back_end_worker_is_restarted_and_leaves_nothing_mapped(host, tmp_path):
    """SIGKILL of a device's blkback worker: what it mapped is unmapped, a new worker serves a new ring, the guest
    keeps its disk; detached, nothing of it stays mapped."""
    host.up(str(write_cluster(tmp_path, [])))
    no_guest = host.call("info")["grant_mappings"]
    host.xl("create", "/dev/null", "name=plain", "memory=16", "workload=idle")
    per_guest = host.call("info")["grant_mappings"] - no_guest  # its console and xenstore rings
    victim = create_disk_guest(host, tmp_path, "victim", "hotplug", "xvdb")
    console_json(host, "victim", "HOT", timeout=30)
    [worker] = {p.pid for p in host.processes_named("xl-blk")}
    os.kill(worker, signal.SIGKILL)
    workers = lambda: {p.pid for p in host.processes_named("xl-blk")} - {worker}  # noqa: E731
    wait_for(workers, what="a new worker")
    order = int(host.xs_read(f"/local/domain/{victim}/device/vbd/51728/ring-page-order") or 0)
    # The new worker maps the new ring alone: the dead one's ring and pool mappings are gone.
    wait_for(lambda: host.call("info")["grant_mappings"] == no_guest + 2 * per_guest + (1 << order),
             what="only the new ring mapped")
    assert "the back-end worker died; restarting" in (host.path / "logs" / "dom0.log").read_text()
    assert "GONE" not in host.log("victim")
    host.xl("block-detach", "victim", "xvdb")
    assert console_json(host, "victim", "GONE", timeout=30)["disks"] == []
    assert host.call("info")["grant_mappings"] == no_guest + 2 * per_guest  # nothing of the disk is mapped
    assert "not returned" not in host.log("victim")  # every grant came back to the guest
    assert set(host.domains()) >= {"plain", "victim"}
    assert "victim" in host.xl("top", "-b", "-i", "1").stdout  # asking the workers for counters finds no dead one


def test_a_worker_that_does_not_stop_is_killed_and_dom0_goes_on(host, tmp_path):
    """destroy while the device's worker is frozen: dom0 waits its grace period, kills it, and serves on."""
    host.up(str(write_cluster(tmp_path, [])))
    create_doing_io(host, tmp_path, "frozen")
    [worker] = {p.pid for p in host.processes_named("xl-blk")}
    os.kill(worker, signal.SIGSTOP)
    host.xl("destroy", "frozen")
    assert not host.processes_named("xl-blk")
    assert host.call("info")["grant_mappings"] == 0  # what the frozen worker mapped went with its channel
    create_doing_io(host, tmp_path, "next")  # dom0 still builds and serves disks


def test_a_target_dom0_cannot_open_fails_the_create_and_leaves_nothing(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    before = host.call("info")
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('name = "bad"\nmemory = 16\ndisk = ["vdev=xvda, target=/nonexistent/dir/disk.img"]\n')
    result = host.xl("create", str(cfg), check=False)
    assert result.returncode != 0 and "/nonexistent/dir/disk.img" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "bad" not in host.domains()
    after = host.call("info")
    assert after["free_frames"] == before["free_frames"] and after["evtchn_ports"] == before["evtchn_ports"]
    bad_spec = host.xl("block-attach", "Domain-0", "vdev=floppy0, target=/x", check=False)
    assert bad_spec.returncode != 0


def test_the_journal_survives_a_reboot_through_the_file_view(host, tmp_path):
    """The default cluster's disk guest: unaligned writes through DiskFile, fsync, reboot."""
    host.up(str(write_cluster(tmp_path, [{"name": "journal", "memory": 32, "workload": "journal",
                                          "workload_args": ["--interval", "0.2"],
                                          "disk": [f"vdev=xvda, size=4M, target={tmp_path / 'j.img'}"]}])))
    wait_for(lambda: "heartbeat 2 of boot 1" in (tmp_path / "j.img").read_bytes().decode(errors="replace"),
             what="heartbeats in the image")
    host.xl("reboot", "journal")
    wait_for(lambda: "from 1 earlier boot(s)" in host.log("journal"), timeout=20, what="the second boot to read the first")
    wait_for(lambda: "boot 2 at" in (tmp_path / "j.img").read_bytes().decode(errors="replace"), what="boot 2's entry")


def test_batches_larger_than_the_ring_and_the_pool_match_a_model_byte_for_byte(host, tmp_path):
    image = tmp_path / "batch.img"
    host.up(str(write_cluster(tmp_path, [disk_domain("b", f"vdev=xvda, size=16M, target={image}",
                                                     "batch", "xvda", "11", "16")])))
    outcome = console_json(host, "b", "BATCH", timeout=60)
    assert outcome["wrong"] == [] and outcome["same"]
    for batch in outcome["rounds"]:
        assert batch["requests"] > outcome["ring_slots"] and batch["pages"] > outcome["pool_pages"]
        assert batch["pushes"] > 1  # what fit, then the rest as room came back
        assert batch["notifies"] <= batch["pushes"]
    assert outcome["small"]["pushes"] == 1 and outcome["small"]["notifies"] <= 1  # one push for a batch that fits
    assert outcome["abandoned"] == "BlockIOError"
    assert hashlib.sha256(image.read_bytes()[: 16 << 20]).hexdigest() == outcome["sha256"]


def test_zero_copy_buffers_write_and_read_in_place_and_refuse_misuse(host, tmp_path):
    image = tmp_path / "buf.img"
    host.up(str(write_cluster(tmp_path, [disk_domain("z", f"vdev=xvda, size=16M, target={image}",
                                                     "buffers", "xvda", "5")])))
    outcome = console_json(host, "z", "BUFFERS", timeout=60)
    assert outcome["one_by_one"] == {"read": True, "read_buffer": True, "write_then_read_buffer": True}
    assert outcome["batch"] == {"written": True, "queued_twice": "BlockIOError", "release_queued": "BlockIOError",
                                "read_buffer": True, "read": True, "buffer_results": True}
    assert outcome["misuse"] == {"busy": True, "second_submit": "BlockIOError", "release_in_flight": "BlockIOError",
                                 "result": None, "view_after_release": "BlockIOError",
                                 "old_view_after_release": "ValueError", "submit_after_release": "BlockIOError",
                                 "too_big": "ValueError", "not_sectors": "ValueError"}
    assert outcome["pool"] == {"timed_out": "TimeoutError", "waited": True, "all_returned": True}
    rng = random.Random(5)  # the workload's first patterns, one per buffer size at 2 MiB apart
    data = image.read_bytes()
    for i, size in enumerate([512, 4096, 11 * 4096, 12 * 4096, 1 << 20]):
        assert data[i << 21 : (i << 21) + size] == rng.randbytes(size)
    assert hashlib.sha256(data[: 16 << 20]).hexdigest() == outcome["sha256"]
