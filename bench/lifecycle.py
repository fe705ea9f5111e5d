"""Domain lifecycle costs against a bare interpreter start, in the same run.

``create_ms_p50`` / ``create_ms_p99``: from the create request (toolstack API, no
CLI start-up) to the guest's workload running, with no other domU;
``create_ms_p50_at_200``: the same with 200 domUs already running;
``uss_mib_per_domu``: unique memory of an idle domU (psutil USS);
``list_ms_at_1`` / ``list_ms_at_200``: the ``xenlike list`` command, start to exit, with 1
and 200 domUs (``list_api_ms_*``: the toolstack's ``list`` request alone);
``process_spawn_ms_p50``: ``python -c pass``, the baseline. Every guest is jailed
(``xenlike.hypervisor.jail``); ``create_ms_p50_no_jail`` and ``uss_mib_per_domu_no_jail``
come from a second host started with ``--no-jail`` in the same run: the jail's cost.

    python bench/lifecycle.py [--json] [--quick]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from bench.common import parser, report  # noqa: E402
from xenlike.kernel.rundir import RunDir  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

PROBE = f"{Path(__file__).parent / 'probe_workload.py'}:run"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def spawn_ms(count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def started_at(client: ToolstackClient, domid: int) -> float:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return float(client.call("xenstore_read", path=f"/local/domain/{domid}/data/started"))
        except Exception:
            time.sleep(0.001)
    raise RuntimeError(f"domain {domid}'s workload never started")


def create_ms(client: ToolstackClient, count: int, prefix: str) -> list[float]:
    times = []
    for i in range(count):
        config = {"name": f"{prefix}{i}", "memory": 16, "workload": PROBE}
        start = time.monotonic()
        domid = client.call("create", config=config)["domid"]
        times.append((started_at(client, domid) - start) * 1000)
        client.call("destroy", domain=domid)
    return times


def list_api_ms(client: ToolstackClient, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.call("list")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def list_cli_ms(run_dir: str, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", run_dir, "list"], check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def start_host(tmp: str, memory_mib: int, extra: list[str]) -> tuple[subprocess.Popen, ToolstackClient]:
    hypervisor = subprocess.Popen(
        [sys.executable, "-m", "xenlike.hypervisor", "--run-dir", tmp, "--memory", str(memory_mib), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            client = ToolstackClient(RunDir(tmp), timeout=60)
            client.call("ping", timeout=1)
            return hypervisor, client
        except Exception:
            if time.monotonic() > deadline:
                hypervisor.kill()
                raise
            time.sleep(0.05)


def stop_host(hypervisor: subprocess.Popen, client: ToolstackClient) -> None:
    try:
        client.call("down", timeout=120)
        client.close()
    finally:
        try:
            hypervisor.wait(30)
        except subprocess.TimeoutExpired:
            hypervisor.kill()
            hypervisor.wait()


def uss_mib(client: ToolstackClient, domids: list[int]) -> float:
    infos = {row["domid"]: row["info"] for row in client.call("list", long=True)}
    return statistics.median(psutil.Process(infos[d]["pid"]).memory_full_info().uss / (1 << 20) for d in domids)


def measure(extra: list[str], samples: int, crowd: int, full: bool) -> dict[str, float]:
    """One host's figures; ``full`` adds the crowd and the CLI's list."""
    found: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xl-bench-", dir="/tmp") as tmp:
        hypervisor, client = start_host(tmp, 16 * (crowd + 40), extra)
        try:
            create_ms(client, 3, "warm")  # first-touch costs are not the steady state
            first = create_ms(client, samples, "first")
            found["create_ms_p50"], found["create_ms_p99"] = statistics.median(first), percentile(first, 99)
            if full:
                one = client.call("create", config={"name": "only", "memory": 16, "workload": "idle"})
                found["list_ms_at_1"], found["list_api_ms_at_1"] = list_cli_ms(tmp, 10), list_api_ms(client, 20)
                client.call("destroy", domain=one["domid"])
            crowd_ids = [client.call("create", config={"name": f"idle{i}", "memory": 16, "workload": "idle"})["domid"]
                         for i in range(crowd)]
            time.sleep(1.0)  # let them all settle into their event loops
            if full:
                found["create_ms_p50_at_200"] = statistics.median(create_ms(client, samples, "late"))
                found["list_ms_at_200"], found["list_api_ms_at_200"] = list_cli_ms(tmp, 10), list_api_ms(client, 20)
            found["uss_mib_per_domu"] = uss_mib(client, crowd_ids[:20])
        finally:
            stop_host(hypervisor, client)
    return found


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    samples = 10 if args.quick else 40
    crowd = 40 if args.quick else 200
    spawn = spawn_ms(samples)
    jailed = measure([], samples, crowd, full=True)
    bare = measure(["--no-jail"], samples, 20, full=False)
    figures = {
        **jailed,
        "process_spawn_ms_p50": statistics.median(spawn),
        "create_ms_p50_no_jail": bare["create_ms_p50"],
        "uss_mib_per_domu_no_jail": bare["uss_mib_per_domu"],
    }
    ratios = {
        "create_ms_p50 / process_spawn_ms_p50": figures["create_ms_p50"] / figures["process_spawn_ms_p50"],
        "create_ms_p50_at_200 / create_ms_p50": figures["create_ms_p50_at_200"] / figures["create_ms_p50"],
        "list_ms_at_200 / list_ms_at_1": figures["list_ms_at_200"] / figures["list_ms_at_1"],
        "create_ms_p50 / create_ms_p50_no_jail": figures["create_ms_p50"] / figures["create_ms_p50_no_jail"],
    }
    if args.quick:
        figures["domus_in_crowd"] = crowd
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
