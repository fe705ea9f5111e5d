"""The machine a xenlike host runs on: its memory, CPU topology, clock and NUMA nodes, as Linux reports them.

Xen learns these at boot and reports them in ``XEN_SYSCTL_physinfo``
(``xen/common/sysctl.c``, ``arch/x86/sysctl.c``): ``total_pages`` from the
memory map, ``cpu_khz`` from its clock calibration, ``threads_per_core`` as the
weight of CPU 0's sibling mask and ``cores_per_socket`` as the weight of its
core mask over that, ``nr_nodes`` as the online NUMA nodes. xenlike runs on
Linux and reads Linux's figures for the same things: ``/proc/meminfo``,
``/proc/cpuinfo``, ``/sys/devices/system/cpu/cpuN/topology`` and
``/sys/devices/system/node/online``.

Every reader takes a ``root`` (default ``/``) so a test can hand it a tree of
its own; a figure Linux does not give reads as Xen's neutral value (0 MHz, one
thread per core, one core per socket, one node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Machine", "parse_cpu_list", "memory_kib", "cpu_khz", "cpu_topology", "nr_nodes", "host_memory_refusal"]

ROOT = Path("/")


def parse_cpu_list(text: str) -> set[int]:
    """The CPUs of a Linux cpu list (``0-3,8,10-11``, as sysfs writes them); an empty text is none."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def memory_kib(root: Path = ROOT) -> int:
    """The machine's memory, ``MemTotal`` of ``/proc/meminfo`` in KiB (0 if it cannot be read).

    MemTotal rather than MemAvailable: it is the machine's memory, as Xen's
    ``total_pages`` is, and stays the same from one run to the next, while
    MemAvailable moves with the page cache and every other program, so a check
    against it would accept a command one minute and refuse it the next.
    """
    try:
        with open(root / "proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_khz(root: Path = ROOT) -> int:
    """The CPU clock in kHz: the first ``cpu MHz`` of ``/proc/cpuinfo``, else cpufreq's figure for CPU 0, else 0."""
    try:
        with open(root / "proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return round(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    for name in ("base_frequency", "cpuinfo_max_freq"):  # cpufreq gives kHz
        try:
            return int((root / "sys/devices/system/cpu/cpu0/cpufreq" / name).read_text())
        except (OSError, ValueError):
            continue
    return 0


def cpu_topology(root: Path = ROOT) -> tuple[int, int]:
    """``(threads_per_core, cores_per_socket)`` of the first online CPU, as Xen computes them for CPU 0.

    Threads per core is how many CPUs share its core (``thread_siblings_list``);
    cores per socket is how many CPUs share its package (``core_siblings_list``)
    over that.
    """
    cpu_dir = root / "sys/devices/system/cpu"
    try:
        online = sorted(parse_cpu_list((cpu_dir / "online").read_text()))
    except (OSError, ValueError):
        online = []
    topology = cpu_dir / f"cpu{online[0] if online else 0}" / "topology"
    try:
        threads = len(parse_cpu_list((topology / "thread_siblings_list").read_text())) or 1
        package = len(parse_cpu_list((topology / "core_siblings_list").read_text())) or threads
    except (OSError, ValueError):
        return 1, 1
    return threads, max(1, package // threads)


def nr_nodes(root: Path = ROOT) -> int:
    """How many NUMA nodes are online (``/sys/devices/system/node/online``); 1 where Linux has no NUMA."""
    try:
        return len(parse_cpu_list((root / "sys/devices/system/node/online").read_text())) or 1
    except (OSError, ValueError):
        return 1


@dataclass(frozen=True)
class Machine:
    """The machine's figures, read once (as Xen measures its machine once, at boot)."""

    memory_kib: int
    cpu_khz: int
    threads_per_core: int
    cores_per_socket: int
    nr_nodes: int

    @property
    def memory_mib(self) -> int:
        return self.memory_kib // 1024

    @classmethod
    def read(cls, root: Path = ROOT) -> Machine:
        threads, cores = cpu_topology(root)
        return cls(memory_kib(root), cpu_khz(root), threads, cores, nr_nodes(root))


def host_memory_refusal(what: str, memory_mib: int, machine_mib: int) -> str | None:
    """Why a host pool of ``memory_mib`` MiB is refused on a machine of ``machine_mib`` MiB, or None if it fits.

    ``what`` names where the figure came from (``--memory 65536 MiB``). A pool
    above the machine's memory is what ``--overcommit`` allows: guests' memory is
    sparse and only costs the machine what they touch, but a guest that touches
    more than is there meets Linux's OOM killer. A machine whose memory could not
    be read (0) refuses nothing.
    """
    if machine_mib <= 0 or memory_mib <= machine_mib:
        return None
    return (
        f"{what} is more than this machine's {machine_mib} MiB (MemTotal); ask for at most "
        f"{machine_mib} MiB, or add --overcommit to allow it"
    )
