"""Virtual-disk throughput against direct file I/O on the same image, in the same run.

A guest with a blkfront disk (blkback in dom0, a worker per device) runs
sequential 1 MiB writes (8 in flight, then a flush) and reads, and random 4 KiB
reads at queue depth 1 and 32 from page cache, and in batches of 32 through
the batch interface (each batch waited for); then this process does the same
with os.pwrite/os.pread on the same image file. The image is written in full
beforehand, so both passes overwrite allocated blocks.

The sequential passes run twice in the guest. ``seq_*_mbps`` go through
``submit_write``/``submit_read``: blkfront copies a WRITE's bytes into its pool
pages and a READ's out into a new bytes object, and blkback's
``pwritev``/``preadv`` copy between those pages and the image, two copies a
request. ``seq_*_zc_mbps`` go through zero-copy buffers (``disk.buffer()``,
borrowed before the clock starts): blkfront copies nothing. For a write the
workload copies the 1 MiB source block into the buffer once per request (it
produces the data there), then blkback's ``pwritev`` copies it to the image:
still two copies, one of them now the workload's. Native ``os.pwrite`` copies
the same ready block into the page cache: one copy, producing the data not
counted. For a read, blkback's ``preadv`` copies the image into the buffer and
the workload compares two of its bytes: one copy. Native ``os.pread`` allocates
a new bytes object the kernel copies into, and drops it: one copy and an
allocation. Each side first makes one untimed sequential pass over 8 MiB
(``WARM_UP_MIB``, what blkfront's grant pool holds), so no figure includes the
pool's first use (granting it, blkback's persistent mappings, the first touch of
its pages), a cost paid once per device.

The guest runs once per device model of its disk (``model=split``, ``direct``,
``passthrough``; see ``xenlike.public.vdisk``), each on a host of its own, on
the same image. At each pass's ``PHASE`` line on the guest's console this
process reads the CPU time of every process in the path (the guest, the
back-end worker, dom0, the hypervisor; ``/proc/PID/stat``, every thread), so the
table shows CPU microseconds per request per process; the guest counts its own
time itself (``time.process_time``), the others are read within a few
milliseconds of the line (a pass lasts hundreds). The first lines and the
``--json`` keys of old (``seq_write_mbps``...) are the split model's;
``<model>_<pass>`` and ``<model>_<pass>_cpu_us_<process>`` are added beside them,
and ``passthrough_rand4k_guest_pread_iops``: the passthrough guest reading its
image's fd with a bare ``os.pread`` loop, as native does, so the API's cost per
request shows apart from the jailed guest process's.

The native passes run before the first guest and again after each one, and each
model is compared with the mean of the native runs on either side of it
(``<model>_<native key>`` in ``--json``; the old ``*_native_*`` keys are the
split model's). A shared or virtual machine's speed drifts by a third from one
minute to the next; a baseline taken minutes away from the guest it is set
against would measure that drift as much as the device model. The table ends
with the native runs' spread.

    python bench/blk.py [--json] [--quick]
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.blk_workload import WARM_UP_MIB  # noqa: E402
from xenlike.public.vdisk import MODELS  # noqa: E402
from bench.common import parser, report  # noqa: E402
from xenlike.kernel.rundir import RunDir  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

MIB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKLOAD = f"{Path(__file__).parent / 'blk_workload.py'}:run"


def native(path: str, total_mib: int, random_ops: int) -> dict[str, float]:
    block = random.Random(1).randbytes(MIB)
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(WARM_UP_MIB):  # as the guest's warm-up pass
            os.pwrite(fd, block, i * MIB)
            os.pread(fd, MIB, i * MIB)
        start = time.perf_counter()
        for i in range(total_mib):
            os.pwrite(fd, block, i * MIB)
        os.fdatasync(fd)
        write = total_mib / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(total_mib):
            os.pread(fd, MIB, i * MIB)
        read = total_mib / (time.perf_counter() - start)
        rng = random.Random(2)
        offsets = [rng.randrange(total_mib * MIB // 4096) * 4096 for _ in range(random_ops)]
        start = time.perf_counter()
        for offset in offsets:
            os.pread(fd, 4096, offset)
        iops = random_ops / (time.perf_counter() - start)
    finally:
        os.close(fd)
    return {"seq_write_native_mbps": write, "seq_read_native_mbps": read, "rand4k_native_iops": iops}


def _cpu_s(pid: int) -> float:
    """A process's user + system CPU time, every thread (``/proc/PID/stat`` utime + stime)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _roles(tmp: str, hypervisor: int) -> dict[str, list[int]]:
    """The host's processes by role: the guest, its back-end worker (split), dom0, the hypervisor."""
    roles: dict[str, list[int]] = {"guest": [], "backend": [], "dom0": [], "hypervisor": [hypervisor]}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                ours = tmp.encode() in f.read()
        except OSError:
            continue
        if not ours:
            continue
        if comm.startswith("xl-blk-"):
            roles["backend"].append(int(entry))
        elif comm.startswith("xl-d0-"):
            roles["dom0"].append(int(entry))
        elif comm.startswith("xl-d") and comm.endswith("blkbench"):
            roles["guest"].append(int(entry))
    return roles


def _snapshot(roles: dict[str, list[int]]) -> dict[str, float]:
    taken = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            try:
                total += _cpu_s(pid)
            except OSError:
                pass
        taken[role] = total
    return taken


def guest(tmp: str, image: str, total_mib: int, random_ops: int, model: str = "split") -> dict[str, Any]:
    """One guest's passes on a disk of ``model``: its figures and each process's CPU time per pass."""
    run_dir = RunDir(tmp)
    subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", tmp, "up", "-d", "--memory", "1024", "/dev/null"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        hypervisor = run_dir.running_pid()
        assert hypervisor is not None
        with ToolstackClient(run_dir) as client:
            config = {"name": "blkbench", "memory": 256, "workload": WORKLOAD,
                      "workload_args": [str(total_mib), str(random_ops)],
                      "disk": [{"target": image, "vdev": "xvda", "devid": 51712, "format": "raw", "access": "rw",
                                "devtype": "disk", "backend": "0", "discard": True, "direct_io_safe": False,
                                "trusted": True, "size": None, "model": model}]}
            client.call("create", config=config)
        return _follow(tmp, Path(tmp) / "logs" / "blkbench.log", hypervisor)
    finally:
        subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", tmp, "down"], stdout=subprocess.DEVNULL)


def _follow(tmp: str, log: Path, hypervisor: int, timeout: float = 900) -> dict[str, Any]:
    """Read the guest's console as it goes: CPU times at each PHASE line, then its BLKBENCH figures.

    Only whole lines count: one caught half written (the BLKBENCH one, say) is read
    again once its newline is there.
    """
    seen, marks, roles = 0, [], None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        lines = text[: text.rfind("\n") + 1].splitlines()
        for line in lines[seen:]:
            if line.startswith("PHASE "):
                roles = roles or _roles(tmp, hypervisor)
                marks.append((line.split()[1], _snapshot(roles)))
            elif line.startswith("BLKBENCH "):
                report = json.loads(line[len("BLKBENCH "):])
                cpu = {name: {role: after[role] - before[role] for role in before}
                       for (name, before), (_, after) in zip(marks, marks[1:])}
                for name, guest_s in report["guest_cpu_s"].items():
                    cpu[name]["guest"] = guest_s  # the guest's own count is exact
                return {"figures": report["figures"], "cpu_s": cpu}
        seen = len(lines)
        time.sleep(0.002)
    raise RuntimeError(f"the guest reported nothing; see {log}")


def _allocate(path: str, total_mib: int) -> None:
    """Write the whole image once, so both passes overwrite allocated blocks.

    A sparse image would make the first pass (the guest's) pay for the file
    system's block allocation and the second (native) not.
    """
    with open(path, "wb") as f:
        for _ in range(total_mib):
            f.write(bytes(MIB))
        os.fdatasync(f.fileno())


KEYS = ("seq_write_mbps", "seq_read_mbps", "rand4k_qd1_iops", "rand4k_qd32_iops", "rand4k_batch32_iops",
        "seq_write_zc_mbps", "seq_read_zc_mbps")
NATIVE = {"seq_write": "seq_write_native_mbps", "seq_read": "seq_read_native_mbps", "rand4k": "rand4k_native_iops"}
ROLES = ("guest", "backend", "dom0", "hypervisor")


def _requests(key: str, total_mib: int, random_ops: int) -> int:
    """How many requests a pass makes (1 MiB each for the sequential ones)."""
    if key.startswith("seq_"):
        return total_mib
    return random_ops // 4 if key == "rand4k_qd1_iops" else random_ops


def _baseline(key: str, native: dict[str, float]) -> float:
    return native[NATIVE["seq_write" if key.startswith("seq_write") else "seq_read" if key.startswith("seq_read")
                      else "rand4k"]]


def bracketing(natives: list[dict[str, float]]) -> list[dict[str, float]]:
    """The baseline of each guest run between ``natives[i]`` and ``natives[i + 1]``: their mean, per key."""
    return [{key: (before[key] + after[key]) / 2 for key in before} for before, after in zip(natives, natives[1:])]


def table(runs: dict[str, dict[str, Any]], baselines: dict[str, dict[str, float]],
          natives: list[dict[str, float]], total_mib: int, random_ops: int) -> str:
    """The lecture's table: each pass's figure per model, the native figure beside it and the ratio,
    CPU us per request per process; then the spread of the native runs."""
    lines = [f"{'pass':<20} {'model':<12} {'figure':>12} {'native':>12} {'x native':>9}   CPU us/request: "
             + " ".join(f"{role:>10}" for role in ROLES)]
    for key in KEYS:
        for model, run in runs.items():
            figure, count = run["figures"][key], _requests(key, total_mib, random_ops)
            baseline = _baseline(key, baselines[model])
            cpu = run["cpu_s"].get(key, {})
            per_request = " ".join(f"{cpu.get(role, 0.0) * 1e6 / count:>10.1f}" for role in ROLES)
            lines.append(f"{key:<20} {model:<12} {figure:>12,.0f} {baseline:>12,.0f} {figure / baseline:>8.2f}x"
                         f"                   {per_request}")
    for name in natives[0]:
        values = [run[name] for run in natives]
        lines.append(f"{name:<33} {len(values)} runs, {min(values):,.0f} to {max(values):,.0f}")
    guest_pread = runs.get("passthrough", {}).get("figures", {}).get("rand4k_guest_pread_iops")
    if guest_pread:  # the passthrough guest's own os.pread loop: the jailed process's cost without the API
        native_iops = baselines["passthrough"]["rand4k_native_iops"]
        lines.append(f"{'rand4k_guest_pread_iops':<33} {guest_pread:>12,.0f} {native_iops:>12,.0f} "
                     f"{guest_pread / native_iops:>8.2f}x")
    return "\n".join(lines)


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    total_mib = 32 if args.quick else 512
    random_ops = 5_000 if args.quick else 40_000
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="xl-blk-", dir="/tmp") as tmp:
        image = os.path.join(tmp, "bench.img")
        _allocate(image, total_mib)
        natives = [native(image, total_mib, random_ops)]
        for model in MODELS:
            run_dir = os.path.join(tmp, model[0])  # zmq's ipc paths must stay short
            os.mkdir(run_dir)
            runs[model] = guest(run_dir, image, total_mib, random_ops, model)
            natives.append(native(image, total_mib, random_ops))
    baselines = dict(zip(MODELS, bracketing(natives)))
    native_figures = baselines["split"]
    split = runs["split"]["figures"]
    ordered = {"seq_write_mbps": split["seq_write_mbps"], "seq_write_native_mbps": native_figures["seq_write_native_mbps"],
               "seq_read_mbps": split["seq_read_mbps"], "seq_read_native_mbps": native_figures["seq_read_native_mbps"],
               "rand4k_qd1_iops": split["rand4k_qd1_iops"], "rand4k_qd32_iops": split["rand4k_qd32_iops"],
               "rand4k_batch32_iops": split["rand4k_batch32_iops"],
               "rand4k_native_iops": native_figures["rand4k_native_iops"],
               "seq_write_zc_mbps": split["seq_write_zc_mbps"], "seq_read_zc_mbps": split["seq_read_zc_mbps"]}
    for model, run in runs.items():
        for name, value in baselines[model].items():
            ordered[f"{model}_{name}"] = value
        for key in KEYS:
            ordered[f"{model}_{key}"] = run["figures"][key]
            for role in ROLES:
                seconds = run["cpu_s"].get(key, {}).get(role, 0.0)
                ordered[f"{model}_{key.rsplit('_', 1)[0]}_cpu_us_{role}"] = (
                    seconds * 1e6 / _requests(key, total_mib, random_ops)
                )
    ratios = {f"{model}_{key} / native": run["figures"][key] / _baseline(key, baselines[model])
              for model, run in runs.items() for key in KEYS}
    guest_pread = runs["passthrough"]["figures"].get("rand4k_guest_pread_iops")
    if guest_pread:
        ordered["passthrough_rand4k_guest_pread_iops"] = guest_pread
        ratios["passthrough_rand4k_guest_pread_iops / native"] = (
            guest_pread / baselines["passthrough"]["rand4k_native_iops"]
        )
    print(table(runs, baselines, natives, total_mib, random_ops))
    print()
    report(ordered, ratios, args.json)


if __name__ == "__main__":
    main()
