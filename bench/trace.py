"""What trace points cost: bench/ring.py's ring pair with tracing off and with every class on,
against the same pair in a checkout of the code before the trace points, measured in the same run.

``ring_rps_baseline``: pairs per second of ``bench/ringpair.py`` run from ``--baseline DIR`` (a
checkout, e.g. ``git worktree add /tmp/base <commit>``); ``ring_rps_off``: this tree, nobody
tracing (every trace point tests its class in the mask and goes on); ``ring_rps_all``: this tree
with a trace buffer in each process, every class on and a reader draining both buffers every
10 ms as ``xenlike trace`` does. Rounds alternate the three and the figures are medians.
The ring pair meets a trace point only when it notifies or waits (a few times in
a thousand pairs), so ``notify_per_s_*`` times the one it meets most,
``EventLoop.notify`` (an eventfd write), alone in a loop, from each tree: best of
the rounds.

    python bench/trace.py --baseline DIR [--json] [--quick] [--rounds N]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import parser, report  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING_PAGES = 16  # as bench/ring.py
_PAIR = (
    "import json, sys; from bench.ringpair import run_pair; "
    "r = run_pair({pairs}, ring_pages={pages}, mode='echo'); "
    "print(json.dumps({{'rps': r.pairs_per_s, 'errors': r.errors, 'src': __import__('xenlike').__file__}}))"
)


def pair_in(tree: str, pairs: int) -> dict:
    """One ring pair run by a fresh interpreter importing ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(
        [sys.executable, "-c", _PAIR.format(pairs=pairs, pages=RING_PAGES)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"ring run in {tree} failed: {result['errors']}")
    if not result["src"].startswith(os.path.abspath(tree)):
        raise SystemExit(f"the run meant for {tree} imported {result['src']}")
    return result


_NOTIFY = (
    "import json, os, time; from xenlike.kernel.events import EventLoop, new_port_fd; "
    "loop = EventLoop('bench'); peer = new_port_fd(); loop.bind(1, new_port_fd(), peer); t = time.perf_counter()\n"
    "for _ in range({count}): loop.notify(1)\n"
    "print(json.dumps({{'rate': {count} / (time.perf_counter() - t)}}))"
)


def notify_in(tree: str, count: int) -> float:
    """Notifications per second through ``EventLoop.notify`` with ``tree``'s code, nobody tracing."""
    out = subprocess.run(
        [sys.executable, "-c", _NOTIFY.format(count=count)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.splitlines()[-1])["rate"])


def traced_pair(pairs: int) -> dict:
    """This tree's ring pair with a buffer per process and every class on, drained as it runs."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--traced-child", str(pairs)],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": HERE},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def _traced_child(pairs: int) -> None:
    from bench.ringpair import run_pair
    from xenlike.kernel import trace
    from xenlike.kernel.trace import TraceBuffer
    from xenlike.public.trace import ALL_CLASSES

    fds = [TraceBuffer.create(f"bench-{side}", 1, mask=ALL_CLASSES) for side in ("front", "back")]
    readers = [TraceBuffer(fd) for fd in fds]
    forked = [0]

    def attach_in_child() -> None:
        # run_pair forks the front end, then the back end: each gets its own buffer.
        trace.attach(os.dup(fds[min(forked[0], 1)]), 1)

    os.register_at_fork(after_in_parent=lambda: forked.__setitem__(0, forked[0] + 1), after_in_child=attach_in_child)
    counts = {"records": 0, "lost": 0}
    done = threading.Event()

    def drain() -> None:
        while not done.wait(0.01):
            for reader in readers:
                records, lost, _why = reader.read()
                counts["records"] += len(records)
                counts["lost"] += lost

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    result = run_pair(pairs, ring_pages=RING_PAGES, mode="echo")
    done.set()
    thread.join()
    if result.errors:
        raise SystemExit(f"traced ring run failed: {result.errors}")
    print(json.dumps({"rps": result.pairs_per_s, **counts}))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--traced-child":
        _traced_child(int(sys.argv[2]))
        return
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, metavar="DIR", help="a checkout of the code before the trace points")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three runs (default 3)")
    args = p.parse_args()
    pairs = 1_000_000 if args.quick else 10_000_000  # as bench/ring.py
    runs: dict[str, list[float]] = {"baseline": [], "off": [], "all": []}
    notifies: dict[str, list[float]] = {"baseline": [], "off": []}
    records = lost = 0
    for _ in range(args.rounds):
        notifies["baseline"].append(notify_in(args.baseline, pairs // 20))
        notifies["off"].append(notify_in(HERE, pairs // 20))
        runs["baseline"].append(pair_in(args.baseline, pairs)["rps"])
        runs["off"].append(pair_in(HERE, pairs)["rps"])
        traced = traced_pair(pairs)
        runs["all"].append(traced["rps"])
        records += traced["records"]
        lost += traced["lost"]
        time.sleep(0.5)
    figures = {f"ring_rps_{name}": statistics.median(values) for name, values in runs.items()}
    figures.update({f"notify_per_s_{name}": max(values) for name, values in notifies.items()})
    figures["records_per_pair_all"] = records / (pairs * args.rounds)
    figures["lost_records_all"] = lost
    ratios = {
        "ring_rps_off / ring_rps_baseline": figures["ring_rps_off"] / figures["ring_rps_baseline"],
        "ring_rps_all / ring_rps_baseline": figures["ring_rps_all"] / figures["ring_rps_baseline"],
        "notify_per_s_off / notify_per_s_baseline": figures["notify_per_s_off"] / figures["notify_per_s_baseline"],
    }
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
