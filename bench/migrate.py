"""Live migration against stop-and-copy of the same guest, in the same run, between two loopback hosts.

A guest of ``--memory`` MiB (256) fills its memory, then dirties a working set of
``--working-set`` pages at ``--rate`` pages a second. It is migrated live from host
A to host B (pre-copy rounds from the kernel's dirty log, then stop-and-copy, as
Xen's ``simple_precopy_policy``), then back from B to A by stop-and-copy alone.

``downtime_ms``: from the guest's suspend on the source to the target's DONE
(its domain built and started), live; ``total_ms``: the whole live migration;
``pages_sent_ratio``: pages the live migration sent over the guest's frames;
``rounds``: its rounds, the stop-and-copy one included; ``stop_copy_downtime_ms``:
the same guest's downtime by stop-and-copy, the baseline. Clark et al. report
60 ms for a Quake 3 server (NSDI 2005).

    python bench/migrate.py [--json] [--quick]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import parser, report  # noqa: E402
from xenlike.kernel.rundir import RunDir  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

WORKLOAD = f"{Path(__file__).parent / 'migrate_workload.py'}:run"


def xl(run_dir: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "xenlike", "--run-dir", run_dir, *args], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise SystemExit(f"xenlike {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_host(tmp: Path, name: str, memory_mib: int) -> tuple[str, str, str]:
    """A host with no domains, listening for migrations: (run dir, ADDR:PORT, key)."""
    run_dir = str(tmp / name)
    empty = tmp / "empty.toml"
    empty.write_text("")
    address = f"127.0.0.1:{free_port()}"
    xl(run_dir, "up", "-d", "--memory", str(memory_mib), "--listen", address, str(empty))
    with ToolstackClient(RunDir(run_dir), timeout=30) as client:
        key = client.call("info")["migration"]["key"]
    return run_dir, address, key


def wait_line(run_dir: str, line: str, count: int = 1, timeout: float = 300) -> None:
    log = Path(run_dir) / "logs" / "g.log"
    deadline = time.monotonic() + timeout
    while not (log.exists() and log.read_text(errors="replace").count(line) >= count):
        if time.monotonic() > deadline:
            raise SystemExit(f"the guest did not print {line} within {timeout}s")
        time.sleep(0.05)


def migrate(run_dir: str, address: str, key: str, stop_and_copy: bool) -> dict:
    with ToolstackClient(RunDir(run_dir), timeout=600) as client:
        return client.call("migrate", domain="g", host=address, key=key, stop_and_copy=stop_and_copy)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--memory", type=int, default=256, help="the guest's memory, MiB (default 256)")
    p.add_argument("--working-set", type=int, default=1024, help="pages the guest keeps dirtying (default 1024)")
    p.add_argument("--rate", type=int, default=2000, help="pages it dirties a second (default 2000)")
    args = p.parse_args()
    memory = 64 if args.quick else args.memory
    tmp = Path(tempfile.mkdtemp(prefix="xl-bench-mig-", dir="/tmp"))
    hosts: list[str] = []
    try:
        a, a_address, a_key = start_host(tmp, "a", memory + 256)
        hosts.append(a)
        b, b_address, b_key = start_host(tmp, "b", memory + 256)
        hosts.append(b)
        cfg = tmp / "g.cfg"
        cfg.write_text(
            f'name = "g"\nmemory = {memory}\nworkload = "{WORKLOAD}"\n'
            f'workload_args = ["{args.working_set}", "{args.rate}"]\n'
        )
        xl(a, "create", str(cfg))
        wait_line(a, "READY")
        time.sleep(1.0)  # the working set is being dirtied
        live = migrate(a, b_address, b_key, stop_and_copy=False)
        wait_line(b, "RESUMED")
        time.sleep(1.0)
        stop = migrate(b, a_address, a_key, stop_and_copy=True)
        wait_line(a, "RESUMED")
    finally:
        for run_dir in hosts:
            subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", run_dir, "down"], capture_output=True)
    figures = {
        "downtime_ms": live["downtime_ms"],
        "total_ms": live["total_ms"],
        "pages_sent_ratio": live["pages"] / live["nr_frames"],
        "rounds": live["rounds"],
        "stop_copy_downtime_ms": stop["downtime_ms"],
        "stop_copy_total_ms": stop["total_ms"],
        "guest_mib": memory,
        "live": live["live"],
    }
    ratios = {"downtime_vs_stop_copy": live["downtime_ms"] / stop["downtime_ms"]}
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
