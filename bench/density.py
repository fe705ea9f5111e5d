"""Consolidation: what a create, a list and `down` cost with thousands of idle guests, against one.

Idle 4 MiB guests are created one after another through the toolstack API (no
CLI start-up), jailed as always. The baselines are measured on the same host in
the same run, before the crowd:

``create_ms_at_1``: the ``create`` request (answered once the guest's workload
started) with no other domU; ``create_ms_at_2000``: the same with 2,000 running
(median of creates and destroys of one more guest); ``list_api_ms_at_1`` /
``list_api_ms_at_2000``: the toolstack's ``list`` request with 1 and 2,000 domUs;
``down_s_at_2000``: ``down`` with 2,000 domUs, from the request to the
hypervisor's exit; ``uss_mib_per_domu``: unique memory of an idle domU (psutil
USS, median of 20); ``hypervisor_cpu_pct_idle``: the hypervisor process's CPU
time over a quiet stretch with 2,000 idle guests, in % of one core.

``top_api_ms_*``, ``vcpu_list_api_ms_*`` and ``xenstore_ls_api_ms_*`` (``/local/domain``)
are those requests, as ``list_api_ms_*`` (medians of fewer: the replies at 2,000 are
large), so every listing's growth shows beside its reply's.

``host_other_cpu_pct_at_1``, ``_at_2000`` and ``_idle`` are the CPU that processes
outside the xenlike host (and this benchmark) used while the creates at 1 and at
2,000 ran and over the quiet stretch, in % of one core. On a shared or monitored
machine (an init that walks ``/proc``; DAMON's ``kdamond`` walking the reverse maps
of pages that 2,000 forked guests share) it grows with the number of guests and
takes CPU the creates would have had.

With ``--page-sharing`` the host runs with ``up --page-sharing`` (ksmd merges
pages that are the same in several guests): before the idle figures are read
it waits for ksmd to settle (two full scans in which the count of merged pages
moved by under 1 %; at most 30 minutes, and ``merge_settled`` says whether it
did), and it adds ``ksmd_cpu_pct_idle``, ksmd's CPU over the same quiet stretch,
``sharing_freed_mib`` (``xl info``'s sharing_freed_memory) and ``merge_settle_s``.

    python bench/density.py [--json] [--quick] [--guests N] [--page-sharing]

A progress line goes to stderr every 100 guests. ``--quick`` makes 200.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from bench.common import parser, report  # noqa: E402
from bench.lifecycle import start_host  # noqa: E402
from xenlike.kernel import ksm  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

GUEST_MIB = 4
SAMPLES = 20
IDLE_WINDOW_S = 10.0


def idle_config(name: str) -> dict:
    return {"name": name, "memory": GUEST_MIB, "workload": "idle"}


def timed_create(client: ToolstackClient, name: str) -> tuple[int, float]:
    """Create one idle guest; its domid and the request's time in ms."""
    start = time.perf_counter()
    reply = client.call("create", config=idle_config(name))
    elapsed = (time.perf_counter() - start) * 1000
    if reply.get("start", {}).get("state") != "started":
        raise RuntimeError(f"{name} did not start: {reply}")
    return reply["domid"], elapsed


def create_destroy_ms(client: ToolstackClient, prefix: str, count: int) -> float:
    """Median create time of ``count`` guests made and destroyed one at a time."""
    times = []
    for i in range(count):
        domid, ms = timed_create(client, f"{prefix}{i}")
        times.append(ms)
        client.call("destroy", domain=domid)
    return statistics.median(times)


class OtherCpu:
    """CPU time of every process outside the xenlike host rooted at ``hypervisor`` and outside this one."""

    def __init__(self, hypervisor: psutil.Process) -> None:
        self.hypervisor = hypervisor
        self._start: dict[int, float] = {}
        self._started = 0.0

    def _outside(self) -> dict[int, float]:
        inside = {self.hypervisor.pid, os.getpid()} | {p.pid for p in self.hypervisor.children(recursive=True)}
        times = {}
        for proc in psutil.process_iter():
            if proc.pid in inside:
                continue
            try:
                times[proc.pid] = sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue
        return times

    def start(self) -> None:
        self._start, self._started = self._outside(), time.monotonic()

    def pct(self) -> float:
        """% of one core since :meth:`start` (processes present at both ends)."""
        now, wall = self._outside(), time.monotonic() - self._started
        return sum(now[pid] - before for pid, before in self._start.items() if pid in now) / wall * 100


def list_api_ms(client: ToolstackClient, count: int, op: str = "list", **args: object) -> float:
    """Median time in ms of ``count`` ``op`` requests."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.call(op, **args)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# The other listings, each with how many requests make its median.
LISTINGS = (("top", "top", {}, 10), ("vcpu_list", "vcpu_list", {}, 10),
            ("xenstore_ls", "xenstore_ls", {"path": "/local/domain"}, 5))


def listings_ms(client: ToolstackClient, at: str, found: dict[str, float]) -> None:
    """``<name>_api_ms_<at>`` of each of :data:`LISTINGS`."""
    for name, op, args, count in LISTINGS:
        found[f"{name}_api_ms_{at}"] = list_api_ms(client, count, op, **args)


def cpu_pct(procs: list[psutil.Process], window_s: float) -> list[float]:
    """Each process's CPU time (user + system) over ``window_s`` of wall time, in % of one core."""
    before = [sum(p.cpu_times()[:2]) for p in procs]
    start = time.monotonic()
    time.sleep(window_s)
    wall = time.monotonic() - start
    return [(sum(p.cpu_times()[:2]) - b) / wall * 100 for p, b in zip(procs, before)]


def uss_mib(client: ToolstackClient, domids: list[int]) -> float:
    pids = {row["domid"]: row["info"]["pid"] for row in client.call("list", long=True)}
    return statistics.median(psutil.Process(pids[d]).memory_full_info().uss / (1 << 20) for d in domids)


def wait_for_merging(timeout_s: float = 1800.0) -> tuple[float, bool]:
    """Seconds until ksmd settles (two full scans in a row that moved the merged-page count by under 1 %),
    and whether it did: past ``timeout_s`` the figures are read as they are, and said to be."""
    start = time.monotonic()
    last = ksm.counters()
    calm = 0
    while calm < 2:
        if time.monotonic() - start > timeout_s:
            print(f"density: ksmd had not settled after {timeout_s:.0f} s; figures read as they are", file=sys.stderr)
            return time.monotonic() - start, False
        time.sleep(1.0)
        now = ksm.counters()
        if now.full_scans == last.full_scans:
            continue
        calm = calm + 1 if abs(now.pages_sharing - last.pages_sharing) <= 0.01 * max(1, last.pages_sharing) else 0
        last = now
    return time.monotonic() - start, True


def ksmd_process() -> psutil.Process:
    return next(p for p in psutil.process_iter(["name"]) if p.info["name"] == "ksmd")


def crowd(client: ToolstackClient, count: int) -> list[int]:
    """Create ``count`` idle guests, reporting progress on stderr every 100."""
    domids, recent = [], []
    started = time.monotonic()
    for i in range(count):
        domid, ms = timed_create(client, f"idle{i}")
        domids.append(domid)
        recent.append(ms)
        if (i + 1) % 100 == 0 or i + 1 == count:
            print(
                f"density: {i + 1}/{count} guests, create {statistics.median(recent):.1f} ms "
                f"(median of the last {len(recent)}), {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            recent = []
    return domids


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--guests", type=int, default=None, help="how many idle guests (default 2000; 200 with --quick)")
    p.add_argument("--page-sharing", action="store_true", help="run the host with up --page-sharing (ksmd)")
    args = p.parse_args()
    count = args.guests or (200 if args.quick else 2000)
    found: dict[str, float] = {}
    extra: dict[str, float] = {}
    extra["load_average_1min_at_start"] = os.getloadavg()[0]  # the machine is shared: how busy it was
    with tempfile.TemporaryDirectory(prefix="xl-dens-", dir="/tmp") as tmp:
        flags = ["--page-sharing"] if args.page_sharing else []
        hypervisor, client = start_host(tmp, GUEST_MIB * (count + SAMPLES + 100) + 512, flags)
        hv = psutil.Process(hypervisor.pid)
        try:
            fit = client.call("info")["max_new_domains"]
            if "fds" in fit["limit"] and fit["count"] < count + 1:  # memory is sized for 4 MiB guests above
                raise SystemExit(f"density: this host fits {fit['count']} more guests ({fit['limit']}), not {count}")
            create_destroy_ms(client, "warm", 3)  # first-touch costs are not the steady state
            other = OtherCpu(hv)
            other.start()
            found["create_ms_at_1"] = create_destroy_ms(client, "first", SAMPLES)
            found["host_other_cpu_pct_at_1"] = other.pct()
            only, _ = timed_create(client, "only")
            found["list_api_ms_at_1"] = list_api_ms(client, 50)
            listings_ms(client, "at_1", found)
            client.call("destroy", domain=only)
            domids = crowd(client, count)
            other.start()
            found["create_ms_at_2000"] = create_destroy_ms(client, "late", SAMPLES)
            found["host_other_cpu_pct_at_2000"] = other.pct()
            found["list_api_ms_at_2000"] = list_api_ms(client, SAMPLES)
            listings_ms(client, "at_2000", found)
            if args.page_sharing:
                found["merge_settle_s"], settled = wait_for_merging()
                extra["merge_settled"] = float(settled)
                found["sharing_freed_mib"] = client.call("info")["sharing_freed_frames"] * 4096 / (1 << 20)
            found["uss_mib_per_domu"] = uss_mib(client, domids[:: max(1, count // 20)][:20])
            rows = client.call("list", long=True)
            dom0 = psutil.Process(next(row["info"]["pid"] for row in rows if row["domid"] == 0))
            time.sleep(2.0)  # let the last creates' stragglers settle
            extra["load_average_1min_before_idle"] = os.getloadavg()[0]
            other.start()
            idle = cpu_pct([hv, dom0] + ([ksmd_process()] if args.page_sharing else []), IDLE_WINDOW_S)
            found["host_other_cpu_pct_idle"] = other.pct()
            found["hypervisor_cpu_pct_idle"], extra["dom0_cpu_pct_idle"] = idle[:2]
            if args.page_sharing:
                found["ksmd_cpu_pct_idle"] = idle[2]
            start = time.perf_counter()
            down = client.call("down", timeout=120)
            hypervisor.wait(120)
            found["down_s_at_2000"] = time.perf_counter() - start
            # Whether some guests were still shutting down after down's 10 s and were killed with the host.
            extra["down_forced"] = float(bool(down.get("forced")))
            extra["load_average_1min_before_down"] = os.getloadavg()[0]
        finally:
            client.close()
            if hypervisor.poll() is None:
                hypervisor.kill()
                hypervisor.wait()
    ratios = {
        "create_ms_at_2000 / create_ms_at_1": found["create_ms_at_2000"] / found["create_ms_at_1"],
        "list_api_ms_at_2000 / list_api_ms_at_1": found["list_api_ms_at_2000"] / found["list_api_ms_at_1"],
    }
    for name, *_ in LISTINGS:
        crowded, alone = f"{name}_api_ms_at_2000", f"{name}_api_ms_at_1"
        ratios[f"{crowded} / {alone}"] = found[crowded] / found[alone]
    for key, value in extra.items():
        print(f"{key}  {value:.3f}", file=sys.stderr)
    if count != 2000:
        print(f"density: {count} guests, not 2000; the *_at_2000 figures are at {count}", file=sys.stderr)
    report(found, ratios, args.json)


if __name__ == "__main__":
    main()
