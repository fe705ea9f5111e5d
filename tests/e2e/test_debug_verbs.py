"""xl's debugging verbs on a real host: domid, domname, debug-keys, dump-core, sysrq, trigger."""

from __future__ import annotations

import re
import subprocess

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster


def up(host, tmp_path, *domains):
    host.up(str(write_cluster(tmp_path, list(domains))))
    return {name: row["domid"] for name, row in host.domains().items()}


def test_domid_and_domname_name_each_other_and_an_unknown_one_is_named(host, tmp_path):
    ids = up(host, tmp_path, {"name": "web", "workload": "idle"})
    assert host.xl("domid", "web").stdout == f"{ids['web']}\n"
    assert host.xl("domname", str(ids["web"])).stdout == "web\n"
    assert host.xl("domid", "Domain-0").stdout == "0\n" and host.xl("domname", "0").stdout == "Domain-0\n"
    missing = host.xl("domid", "nope", check=False)
    assert missing.returncode != 0 and "no domain named 'nope'" in missing.stderr
    assert "no domain with id '99'" in host.xl("domname", "99", check=False).stderr


def test_debug_keys_dump_domains_event_channels_grants_and_run_queues_into_dmesg(host, tmp_path):
    ids = up(host, tmp_path, {"name": "web", "workload": "idle"})
    host.xl("debug-keys", "qegr")
    dmesg = host.xl("dmesg").stdout
    web = ids["web"]
    assert "'q' pressed -> dumping domain info" in dmesg
    assert re.search(rf"General information for domain {web} \(web\): pid \d+, 4096 frames", dmesg)
    assert f"Event channel information for domain {web}:" in dmesg
    assert re.search(r"port +1: interdomain d0:\d+", dmesg)  # the guest's xenstore port, bound by dom0
    assert "'g' pressed -> dumping grant table info (maptrack)" in dmesg
    assert re.search(rf"d0 handle +\d+: d{web} ref +1 frame 0x2 rw", dmesg)  # dom0 maps its xenstore page
    assert "'r' pressed -> dumping run queues (scheduler credit)" in dmesg
    assert re.search(rf"CPU\[\d\d\]: .*d{web}v0 (running|runnable|blocked)", dmesg)
    refused = host.xl("debug-keys", "qz", check=False)
    assert refused.returncode != 0 and "no handler for key(s) 'z'" in refused.stderr and "eghqr" in refused.stderr
    host.xl("debug-keys", "h")
    assert " key 'g': print grant table usage" in host.xl("dmesg").stdout


def test_dump_core_writes_an_elf_core_readelf_reads_with_the_guests_memory(host, tmp_path):
    ids = up(host, tmp_path, {"name": "m", "workload": workload("marker"), "memory": 32})
    marker = console_json(host, "m", "MARKER")
    core = tmp_path / "m.core"
    out = host.xl("dump-core", "m", str(core)).stdout
    assert f"{core}:" in out and "PT_LOAD segments" in out
    header = subprocess.run(["readelf", "-h", str(core)], capture_output=True, text=True, check=True).stdout
    assert "CORE (Core file)" in header and "X86-64" in header and "ELF64" in header
    segments = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True, check=True).stdout
    loads = [tuple(int(v, 16) for v in line.split()[1:5])
             for line in segments.splitlines() if line.strip().startswith("LOAD")]
    assert loads and len(loads) == int(re.search(r"(\d+) PT_LOAD", out).group(1))
    # Runs are disjoint, in order, never adjacent (adjacent runs would be one), frame-aligned.
    for (off, vaddr, paddr, size), following in zip(loads, loads[1:] + [None]):
        assert vaddr == paddr and vaddr % 4096 == 0 and size % 4096 == 0 and off % 4096 == 0
        if following is not None:
            assert vaddr + size < following[1]
    data = core.read_bytes()
    for i in range(marker["count"]):
        address = (marker["pfn"] + i) * 4096
        off, vaddr, _paddr, size = next(seg for seg in loads if seg[1] <= address < seg[1] + seg[3])
        assert data[off + address - vaddr:].startswith(f"{marker['text']} {i}".encode())
    notes = subprocess.run(["readelf", "-nW", str(core)], capture_output=True, text=True, check=True).stdout
    assert "xenlike" in notes
    assert host.domains()["m"]["state"][2] != "p", "dump-core left the domain paused"
    refused = host.xl("dump-core", "m", "/nonexistent/dir/core", check=False)
    assert refused.returncode != 0 and "cannot write the core of 'm' to /nonexistent/dir/core" in refused.stderr
    assert host.domains()["m"]["state"][2] != "p" and ids["m"] in [r["domid"] for r in host.call("list")]


def test_sysrq_letters_reach_the_guests_kernel(host, tmp_path):
    up(host, tmp_path, {"name": "s", "workload": "idle"})
    host.xl("sysrq", "s", "h")
    wait_for(lambda: "sysrq: HELP : reboot(b)" in host.log("s"), what="sysrq help on the console")
    host.xl("sysrq", "s", "m")
    wait_for(lambda: re.search(r"\d+ frames \(\d+ KiB\), \d+ free for the kernel", host.log("s")), what="sysrq m")
    host.xl("sysrq", "s", "t")
    wait_for(lambda: "thread evtchn:" in host.log("s") and "thread MainThread:" in host.log("s"), what="sysrq t")
    assert host.xs_read(f"/local/domain/{host.domains()['s']['domid']}/control/sysrq") == ""  # taken
    assert "one letter" in host.xl("sysrq", "s", "xy", check=False).stderr
    host.xl("sysrq", "s", "c")  # a crash: on_crash (destroy by default) applies
    wait_for(lambda: "s" not in host.domains(), what="the crashed domain to go")


def test_trigger_nmi_dumps_the_guests_threads_and_acpi_triggers_are_refused(host, tmp_path):
    up(host, tmp_path, {"name": "t", "workload": "idle"})
    host.xl("trigger", "t", "nmi")
    wait_for(lambda: "most recent call first" in host.log("hypervisor-stderr"), what="the guest's thread dump")
    refused = host.xl("trigger", "t", "power", check=False)
    assert refused.returncode != 0 and "HVM" in refused.stderr and "use shutdown" in refused.stderr
    assert "t" in host.domains()
