"""Save and restore end to end: a guest with state in its memory and on a disk, suspended, saved, restored."""

from __future__ import annotations

import struct

from xenlike.public.migration_stream import DomainInfo, StreamWriter

from .conftest import WORKLOADS, console_json, wait_for


def counter_guest(host, tmp_path, name="m", spec=None):
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(
        f'name = "{name}"\nmemory = 32\nworkload = "{spec or WORKLOADS / "migrating.py"}:run"\n'
        f'workload_args = ["counter", "xvda"]\n'
        f'disk = ["vdev=xvda, size=8M, target={tmp_path / name}.img"]\n'
    )
    host.xl("create", str(cfg))
    console_json(host, name, "STARTED", timeout=30)
    wait_for(lambda: "TICK" in host.log(name), timeout=30, what="the guest to tick")
    return host.domains()[name]["domid"]


def _disk_sectors(path, count):
    with open(path, "rb") as f:
        data = f.read((count + 1) * 512)
    return [struct.unpack_from("<Q", data, n * 512)[0] for n in range(1, count + 1)]


def test_save_then_restore_keeps_memory_disk_and_nodes(host, tmp_path):
    host.up()
    domid = counter_guest(host, tmp_path)
    host.xl("xenstore-write", f"/local/domain/{domid}/data/kept", "yes")
    image = tmp_path / "m.save"
    saved = host.xl("save", "m", str(image), timeout=120)
    assert "saved m: 1 round(s)" in saved.stdout and "pages" in saved.stdout
    assert "m" not in host.domains()
    assert image.exists() and not (tmp_path / "m.save.part").exists()

    restored = host.xl("restore", str(image), timeout=120)
    assert "restored m" in restored.stdout
    resumed = console_json(host, "m", "RESUMED", timeout=30)
    assert resumed["memory_same"], resumed
    assert resumed["disk_bad"] == [], resumed
    assert resumed["acked"] == resumed["counter"] > 0  # every acknowledged write was in the image
    # The image file holds every write acknowledged before the suspend.
    assert _disk_sectors(tmp_path / "m.img", resumed["acked"]) == list(range(1, resumed["acked"] + 1))
    new = host.domains()["m"]["domid"]
    assert host.xs_read(f"/local/domain/{new}/data/kept") == "yes"
    # The console history travelled in the image: `xenlike console` shows the first boot's lines first.
    history = host.call("console_attach", domain="m")["history"]
    assert history.index(b"STARTED ") < history.index(b"TICK ") < history.index(b"RESUMED ")
    # It runs on from where it stopped.
    wait_for(lambda: host.log("m").count("TICK") > 0 and _last_tick(host) > resumed["counter"], timeout=30,
             what="ticks after the restore")


def _last_tick(host):
    import json

    ticks = [json.loads(line[5:])["counter"] for line in host.log("m").splitlines() if line.startswith("TICK ")]
    return ticks[-1] if ticks else 0


def test_save_c_keeps_the_guest_running(host, tmp_path):
    host.up()
    domid = counter_guest(host, tmp_path)
    saved = host.xl("save", "-c", "m", str(tmp_path / "m.save"), timeout=120)
    assert "downtime" in saved.stdout
    assert host.domains()["m"]["domid"] == domid
    console_json(host, "m", "RESUME-HOOK", timeout=30)
    before = _last_tick(host)
    wait_for(lambda: _last_tick(host) > before, timeout=30, what="ticks after save -c")
    assert host.domains()["m"]["state"][3] != "s"


def test_a_guest_that_cannot_suspend_is_refused_and_runs_on(host, tmp_path):
    host.up()
    for name, fn, args in (("r", "run", '["refuses"]'), ("u", "unsuspendable", "[]")):
        cfg = tmp_path / f"{name}.cfg"
        cfg.write_text(f'name = "{name}"\nmemory = 32\nworkload = "{WORKLOADS / "migrating.py"}:{fn}"\n'
                       f"workload_args = {args}\n")
        host.xl("create", str(cfg))
    for name, why in (("r", "it refused: busy right now"),
                      ("u", "it refused: its workload cannot be suspended (suspendable = False)")):
        result = host.xl("save", name, str(tmp_path / f"{name}.save"), check=False, timeout=120)
        assert result.returncode != 0
        assert f"{name} (domain " in result.stderr and why in result.stderr and "it runs on" in result.stderr
        assert not (tmp_path / f"{name}.save").exists() and not (tmp_path / f"{name}.save.part").exists()
        count = host.log(name).count("TICK")
        wait_for(lambda: host.log(name).count("TICK") > count, timeout=30, what=f"{name} to tick on")


def test_restore_refuses_a_bad_image_and_builds_nothing(host, tmp_path):
    host.up()
    before = set(host.domains())
    truncated = tmp_path / "t.save"
    chunks: list[bytes] = []
    StreamWriter(chunks.append)
    truncated.write_bytes(b"".join(chunks)[:30])
    result = host.xl("restore", str(truncated), check=False)
    assert result.returncode != 0
    assert "truncated stream: the domain header at octet 24 needs 16 octets, 6 left" in result.stderr
    assert "nothing was restored" in result.stderr
    unknown = tmp_path / "u.save"
    chunks = []
    StreamWriter(chunks.append)
    unknown.write_bytes(b"".join(chunks) + struct.pack("<II", 0x4242, 0))
    result = host.xl("restore", str(unknown), check=False)
    assert "unknown mandatory record type 0x00004242 at octet 40: cannot restore" in result.stderr
    beyond = tmp_path / "b.save"
    chunks = []
    writer = StreamWriter(chunks.append)
    writer.domain_info(DomainInfo("b", "00000000-0000-0000-0000-0000000000b0", 8192, 1, 1, {"memory": 32}))
    writer.static_data_end()
    writer.page_data([(9000, bytes(4096))])
    writer.end()
    beyond.write_bytes(b"".join(chunks))
    result = host.xl("restore", str(beyond), check=False)
    assert "names pfn 9000, beyond the domain's memory (frames 0..8191)" in result.stderr
    assert "nothing was restored" in result.stderr
    assert set(host.domains()) == before


def test_a_hostile_guest_s_suspend_dirty_log_and_balloon_calls_are_refused(host, tmp_path):
    host.up()
    cfg = tmp_path / "h.cfg"
    cfg.write_text(f'name = "h"\nmemory = 32\nworkload = "{WORKLOADS / "migrating.py"}:run"\n'
                   'workload_args = ["hostile"]\n')
    host.xl("create", str(cfg))
    answers = console_json(host, "h", "HOSTILE", timeout=30)
    assert answers == {
        "suspend_record_outside": "EINVAL",
        "suspend_record_in_start_info": "EINVAL",
        "suspend_record_huge": "EINVAL",
        "logdirty_unasked": "EINVAL",
        "give_back_start_info": "EINVAL",
        "give_back_beyond": "EINVAL",
        "give_back_twice_in_one": "EINVAL",
        "take_what_was_never_given": "EINVAL",
        "shadow_op_as_a_guest": "EPERM",
        "resume_as_a_guest": "EPERM",
    }
    # It was not suspended by any of it, and runs on.
    assert host.domains()["h"]["state"][3] != "s"
    wait_for(lambda: "TICK" in host.log("h"), timeout=30, what="the guest to run on")
