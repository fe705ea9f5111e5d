"""A host with 1,100 guests answers list, top and xenstore-ls, and `down` leaves nothing behind.

Past about a thousand guests the hypervisor's ``getdomaininfo`` reply outgrew one
datagram of its channel and the toolstack stopped answering. The guests are made
through the toolstack API in one loop (what a CLI start per guest would add is
not what is tested); the verbs are the CLI's.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from xenlike.hypervisor.jail import CGROUP_PREFIX
from xenlike.kernel import cgroup

from .test_lifecycle import write_cluster

GUESTS = 1100
GUEST_MIB = 4
NEEDED_MEM_KIB = 8 << 20  # 1,100 guests of ~4.5 MiB unique memory each, dom0's maps and the page tables
NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")


def _mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def _namespaces(pids: list[int]) -> set[str]:
    """The namespaces (``net:[4026532...]``) these processes are in that this test's process is not."""
    own = {os.readlink(f"/proc/self/ns/{kind}") for kind in NAMESPACES if os.path.exists(f"/proc/self/ns/{kind}")}
    found = set()
    for pid in pids:
        for kind in NAMESPACES:
            try:
                found.add(os.readlink(f"/proc/{pid}/ns/{kind}"))
            except OSError:
                continue
    return found - own


def _namespaces_still_held(names: set[str], run_dir: Path) -> set[str]:
    """Which of ``names`` a process of this host (its command line names ``run_dir``: every domain is
    forked from the hypervisor's) still holds, or a bind mount keeps (nsfs). Other hosts on the machine
    may be given the same namespace numbers once these are freed."""
    held = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ours = str(run_dir).encode() in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        for kind in NAMESPACES if ours else ():
            try:
                link = os.readlink(proc / "ns" / kind)
            except OSError:
                continue
            if link in names:
                held.add(link)
    mounts = Path("/proc/self/mountinfo").read_text()
    return held | {name for name in names if name in mounts}


@pytest.mark.timeout(300)  # about 40 s on two idle cores; more where the machine is shared
@pytest.mark.skipif(
    _mem_available_kib() < NEEDED_MEM_KIB,
    reason=f"{GUESTS} guests need about 8 GiB of MemAvailable; this machine has "
    f"{_mem_available_kib() // 1024} MiB available",
)
def test_a_host_with_1100_guests_answers_list_top_and_xenstore_ls_and_down_leaves_nothing(host, tmp_path):
    shm_before = set(os.listdir("/dev/shm"))
    host.up("--memory", str(GUEST_MIB * (GUESTS + 20) + 256), str(write_cluster(tmp_path, [])))
    fit = host.call("info")["max_new_domains"]
    assert fit["count"] >= GUESTS or "memory" in fit["limit"], (
        f"this host fits only {fit['count']} guests ({fit['limit']}); raise RLIMIT_NOFILE (ulimit -n) to "
        f"about {GUESTS * 10 + 500}"
    )
    names = [f"g{i}" for i in range(GUESTS)]
    with host.client() as client:
        for name in names:
            reply = client.call("create", config={"name": name, "memory": GUEST_MIB, "workload": "idle"})
            assert reply["start"]["state"] == "started", reply

    listed = host.xl("list").stdout.splitlines()
    assert listed[0].split()[:2] == ["Name", "ID"]
    assert {line.split()[0] for line in listed[1:]} == {"Domain-0", *names}

    top = host.xl("top", "-b", "-i", "1", timeout=60).stdout
    shown = {line.split()[0] for line in top.splitlines() if line.strip()}
    assert set(names) <= shown and "Domain-0" in shown

    domids = {row["domid"] for row in host.domains().values() if row["domid"] != 0}
    store = host.xl("xenstore-ls", "/local/domain").stdout
    tops = {line.split(" ", 1)[0] for line in store.splitlines() if line and not line.startswith(" ")}
    assert {str(domid) for domid in domids} <= tops

    processes = host.processes()
    zygote = next(p for p in processes if p.name() == "xl-zygote")
    guests = [p.pid for p in processes if p.name().startswith("xl-d") and not p.name().startswith("xl-d0-")]
    assert len(guests) >= GUESTS
    namespaces = _namespaces(guests)

    host.xl("down", timeout=60)
    assert host.run_dir.running_pid() is None
    left = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"{len(left)} processes of the host outlived down, e.g. {left[:3]}"
    cgroups = [n for n in cgroup.DomainCgroup.names(CGROUP_PREFIX) if n.startswith(f"{CGROUP_PREFIX}{zygote.pid}-")]
    assert not cgroups, f"{len(cgroups)} cgroups outlived down, e.g. {cgroups[:3]}"
    shm = sorted(set(os.listdir("/dev/shm")) - shm_before)
    assert not [f for f in shm if f.startswith(("xl", "xenlike"))], shm
    assert not _namespaces_still_held(namespaces, host.path)
