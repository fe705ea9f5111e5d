"""The credit scheduler against Linux alone (the ``null`` scheduler), in the same run.

``share_error_weights``: three CPU-bound domains weighted 256, 512 and 1024, pinned
to pCPU 0, measured for 10 s after a warm-up: the largest relative error of their
CPU shares against 1/7, 2/7 and 4/7;
``cap_overshoot``: one CPU-bound domain with cap 25, measured for 10 s: its share
of a pCPU divided by 25 %;
``io_latency_ratio``: an I/O-bound domain ping-ponging on an event channel with
another domain (both on pCPU 0, a ping every millisecond): its median round trip
with two CPU-bound domains running on pCPU 0 divided by its median with them
paused, alternated over five rounds (the median of the rounds' ratios);
``hypervisor_cpu_pct``: the hypervisor's own CPU use, in percent of one core,
while 50 CPU-bound domains are scheduled (measured for 10 s).

Each figure has a ``*_null`` twin measured on a host running the null scheduler,
where Linux alone decides: that is the baseline.

    python bench/sched.py [--json] [--quick]
"""

from __future__ import annotations

import json
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

PING = f"{Path(__file__).parent / 'ping_workload.py'}:run"
WEIGHTS = (256, 512, 1024)
CROWD = 50


class BenchHost:
    """A host with the given scheduler in a temporary run directory."""

    def __init__(self, sched: str, memory_mib: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="xl-bench-", dir="/tmp")
        self.hypervisor = subprocess.Popen(
            [sys.executable, "-m", "xenlike.hypervisor", "--run-dir", self.tmp.name, "--memory", str(memory_mib),
             "--sched", sched],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client = ToolstackClient(RunDir(self.tmp.name), timeout=60)
                self.client.call("ping", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def create(self, name: str, workload: str, args: list[str] | None = None, paused: bool = False, **config) -> int:
        config = {"name": name, "memory": 16, "workload": workload, "workload_args": args or [], **config}
        return self.client.call("create", config=config, paused=paused)["domid"]

    def destroy(self, *domids: int) -> None:
        for domid in domids:
            self.client.call("destroy", domain=domid)

    def cpu_times(self) -> dict[int, float]:
        return {row["domid"]: row["cpu_time"] for row in self.client.call("list")}

    def xs_read(self, path: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.client.call("xenstore_read", path=path)
                return value.decode() if isinstance(value, bytes) else value
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        try:
            self.client.call("down", timeout=120)
            self.client.close()
        finally:
            try:
                self.hypervisor.wait(30)
            except subprocess.TimeoutExpired:
                self.hypervisor.kill()
                self.hypervisor.wait()
            self.tmp.cleanup()


def shares(host: BenchHost, warm_s: float, measure_s: float) -> float:
    """Largest relative error of three pinned hogs' shares against their weights."""
    domids = [host.create(f"w{w}", "burn", weight=w, cpus=[0]) for w in WEIGHTS]
    time.sleep(warm_s)  # credits start equal: let the shares settle
    before = host.cpu_times()
    time.sleep(measure_s)
    after = host.cpu_times()
    used = [after[d] - before[d] for d in domids]
    host.destroy(*domids)
    expected = [w / sum(WEIGHTS) for w in WEIGHTS]
    return max(abs(u / sum(used) - e) / e for u, e in zip(used, expected))


def cap_share(host: BenchHost, warm_s: float, measure_s: float) -> float:
    """A lone hog with cap 25: its share of one pCPU divided by 25 %."""
    domid = host.create("capped", "burn", cap=25)
    time.sleep(warm_s)
    before, start = host.cpu_times()[domid], time.monotonic()
    time.sleep(measure_s)
    after, end = host.cpu_times()[domid], time.monotonic()
    host.destroy(domid)
    return (after - before) / (end - start) / 0.25


def io_round_trips(host: BenchHost, count: int, rounds: int) -> tuple[float, float, float]:
    """The ping-pong's median round trip alone and next to two hogs on its pCPU (µs), and their ratio.

    Alone and loaded alternate (the hogs paused, then running) so that drift on the
    machine hits both alike; the ratio is the median of the rounds' ratios.
    """
    ping = host.create("ping", PING, ["ping"], cpus=[0])
    pong = host.create("pong", PING, ["pong", str(ping)], cpus=[0])
    port = host.xs_read(f"/local/domain/{pong}/data/port")
    host.client.call("xenstore_write", path=f"/local/domain/{ping}/data/peer", value=f"{pong} {port}")
    hogs = [host.create(f"hog{i}", "burn", paused=True, cpus=[0]) for i in range(2)]

    def median(request_id: str) -> float:
        host.client.call("xenstore_write", path=f"/local/domain/{ping}/data/request", value=f"{request_id} {count}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                result = json.loads(host.xs_read(f"/local/domain/{ping}/data/result"))
            except ValueError:
                result = {}
            if result.get("id") == request_id:
                return result["median_us"]
            time.sleep(0.05)
        raise RuntimeError("the ping domain did not answer")

    median("warm-up")
    alone, loaded = [], []
    for index in range(rounds):
        alone.append(median(f"alone-{index}"))
        for hog in hogs:
            host.client.call("unpause", domain=hog)
        time.sleep(0.3)
        loaded.append(median(f"loaded-{index}"))
        for hog in hogs:
            host.client.call("pause", domain=hog)
    for hog in hogs:
        host.client.call("unpause", domain=hog)
    host.destroy(*hogs, ping, pong)
    ratios = [b / a for a, b in zip(alone, loaded)]
    return statistics.median(alone), statistics.median(loaded), statistics.median(ratios)


def hypervisor_cpu_pct(host: BenchHost, crowd: int, measure_s: float) -> float:
    """The hypervisor's CPU use (percent of one core) while ``crowd`` hogs are scheduled."""
    domids = [host.create(f"crowd{i}", "burn") for i in range(crowd)]
    time.sleep(1.0)
    process = psutil.Process(host.hypervisor.pid)
    before, start = sum(process.cpu_times()[:2]), time.monotonic()
    time.sleep(measure_s)
    after, end = sum(process.cpu_times()[:2]), time.monotonic()
    host.destroy(*domids)
    return (after - before) / (end - start) * 100


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    measure = 3.0 if args.quick else 10.0
    pings = 200 if args.quick else 500
    crowd = 10 if args.quick else CROWD
    memory = 16 * (crowd + 20)
    figures: dict[str, float] = {}
    for sched, suffix in (("credit", ""), ("null", "_null")):
        host = BenchHost(sched, memory)
        try:
            figures[f"share_error_weights{suffix}"] = shares(host, 1.0 if args.quick else 3.0, measure)
            figures[f"cap_overshoot{suffix}"] = cap_share(host, 0.5, measure)
            alone, loaded, ratio = io_round_trips(host, pings, 3 if args.quick else 5)
            figures[f"io_rtt_alone_us{suffix}"] = alone
            figures[f"io_rtt_loaded_us{suffix}"] = loaded
            figures[f"io_latency_ratio{suffix}"] = ratio
            figures[f"hypervisor_cpu_pct{suffix}"] = hypervisor_cpu_pct(host, crowd, measure)
        finally:
            host.close()
    ordered = {key: figures[key] for key in ("share_error_weights", "cap_overshoot", "io_latency_ratio",
                                              "hypervisor_cpu_pct")}
    ordered.update({key: value for key, value in figures.items() if key not in ordered})
    if args.quick:
        ordered["domus_in_crowd"] = crowd
    ratios = {
        "share_error_weights / share_error_weights_null": figures["share_error_weights"] / figures["share_error_weights_null"],
        "cap_overshoot / cap_overshoot_null": figures["cap_overshoot"] / figures["cap_overshoot_null"],
        "io_latency_ratio / io_latency_ratio_null": figures["io_latency_ratio"] / figures["io_latency_ratio_null"],
    }
    report(ordered, ratios, args.json)


if __name__ == "__main__":
    main()
