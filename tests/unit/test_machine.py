"""The machine's figures as Linux gives them (xenlike.kernel.machine), read from a tree of its own files."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenlike.hypervisor.domain import FramePool, OutOfMemory, mib_to_frames
from xenlike.kernel.machine import Machine, host_memory_refusal, parse_cpu_list

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu MHz\t\t: 2596.12
siblings\t: 16

processor\t: 1
cpu MHz\t\t: 3100.000
"""


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("text, cpus", [
    ("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-1,4,6-7\n", {0, 1, 4, 6, 7}), ("", set()), ("\n", set()),
])
def test_cpu_lists_are_read_as_sysfs_writes_them(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


def test_a_two_socket_hyperthreaded_machine(tmp_path: Path) -> None:
    cpu0 = "sys/devices/system/cpu/cpu0/topology"
    root = _tree(tmp_path, {
        "proc/meminfo": "MemTotal:       24684092 kB\nMemFree:        23988184 kB\nMemAvailable:   24215392 kB\n",
        "proc/cpuinfo": CPUINFO,
        "sys/devices/system/cpu/online": "0-31\n",
        f"{cpu0}/thread_siblings_list": "0,16\n",  # CPU 0 and its hyperthread
        f"{cpu0}/core_siblings_list": "0-7,16-23\n",  # its package: 8 cores of 2 threads
        "sys/devices/system/node/online": "0-1\n",
    })
    machine = Machine.read(root)
    assert machine == Machine(memory_kib=24684092, cpu_khz=2596120, threads_per_core=2, cores_per_socket=8,
                              nr_nodes=2)
    assert machine.memory_mib == 24105  # MemTotal, not MemAvailable


def test_the_first_online_cpu_stands_for_the_machine_when_cpu0_is_offline(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "sys/devices/system/cpu/online": "2-3\n",
        "sys/devices/system/cpu/cpu2/topology/thread_siblings_list": "2\n",
        "sys/devices/system/cpu/cpu2/topology/core_siblings_list": "2-3\n",
    })
    machine = Machine.read(root)
    assert (machine.threads_per_core, machine.cores_per_socket) == (1, 2)


def test_without_cpu_mhz_the_clock_is_cpufreq_s_else_zero(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/cpuinfo": "processor\t: 0\n",
                            "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "1800000\n"})
    assert Machine.read(root).cpu_khz == 1800000
    assert Machine.read(tmp_path / "nothing").cpu_khz == 0


def test_what_linux_does_not_say_reads_as_xen_s_neutral_values(tmp_path: Path) -> None:
    assert Machine.read(tmp_path) == Machine(memory_kib=0, cpu_khz=0, threads_per_core=1, cores_per_socket=1,
                                             nr_nodes=1)


def test_host_memory_above_the_machine_s_is_refused_naming_both_and_the_way_out() -> None:
    assert host_memory_refusal("--memory 65536 MiB", 65536, 24105) == (
        "--memory 65536 MiB is more than this machine's 24105 MiB (MemTotal); ask for at most 24105 MiB, "
        "or add --overcommit to allow it")
    assert host_memory_refusal("--memory 24105 MiB", 24105, 24105) is None  # all of it is allowed
    assert host_memory_refusal("--memory 65536 MiB", 65536, 0) is None  # a machine that could not be read


def test_a_domain_larger_than_the_machine_is_told_about_overcommit() -> None:
    pool = FramePool(mib_to_frames(8192), machine_mib=24105)
    with pytest.raises(OutOfMemory) as refused:
        pool.reserve(mib_to_frames(30000), "domain 'big'")
    assert str(refused.value) == (
        "domain 'big' needs 30000 MiB but only 8192 MiB of the host's 8192 MiB are free (that is more than this "
        "machine's 24105 MiB: only a host started with --overcommit and a larger --memory can hold it)")
    with pytest.raises(OutOfMemory) as refused:
        pool.reserve(mib_to_frames(9000), "domain 'mid'")
    assert str(refused.value).endswith("(start the host with a larger --memory, or destroy a domain)")
    assert pool.free == pool.total  # nothing was taken
