"""What trace points cost: bench/ring.py's ring pair and bench/blk.py's split disk, tracing off and with
every class on, against a tree without the trace points, measured in the same run.

The baseline is a directory holding the code without the trace points (``--baseline DIR``);
``--make-baseline DIR`` builds one: this commit's tree (``git archive HEAD``) with the trace points
of the modules the two benchmarks run per request cut out of their syntax trees
(:data:`DATA_PATH_MODULES`: the rings, the event channels, blkback's data path). A trace point is
an ``if`` whose test reads the trace mask (``trace.mask``, the ring's ``_tmask``) or a local set
from it (blkback's ``io_traced``): its body goes and its ``else`` stays; the assignment of such a
local goes too. So the baseline is this tree, speed-ups included, less the tests of the mask and
the branches they guard (and what rides on the same test: ``EventLoop.notify``'s fault check).
Comments do not survive the cut; the code is otherwise this tree's.

Rounds run each configuration once, in an order that turns every round; figures are medians
over the rounds, ratios the median of each round's ratio (a slow round slows all three).

``ring_rps_*``: pairs per second of ``bench/ringpair.py`` (16 pages, echo) run from each tree,
``ring_per_cpu_s_*`` pairs per CPU second of its processes (the reader's included);
``all``: this tree with a trace buffer per process, every class on, and a reader draining both
buffers every 10 ms as ``xenlike trace`` does. The ring pair meets a trace point at every push,
consume and re-arm (a few per batch of 256 pairs) and at each notify and wait; ``notify_per_s_*``
times ``EventLoop.notify`` (an eventfd write) alone in a loop from each tree, nobody tracing.

``blk_*``: ``bench/blk_workload.py`` in a guest with a split disk (blkfront, a blkback worker)
on a host run from each tree (``xenlike up``), the figures its guest reports; ``all``: with
``xenlike trace --record`` running on the host from before the guest is created, every class
on, so each request is decoded and answered in the trace and each ring operation recorded,
and the reader competes for the CPUs. ``blk_*_req_per_cpu_s_*``: a pass's requests per CPU
second of the guest, its blkback worker, dom0 and the hypervisor (bench/blk.py's per-process
counts), which other load on the host disturbs less than wall time (the reader is not in it).

    python bench/trace.py --baseline DIR [--json] [--quick] [--rounds N] [--only ring|blk]
    python bench/trace.py --make-baseline DIR
"""

from __future__ import annotations

import ast
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import parser, report  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING_PAGES = 16  # as bench/ring.py
CONFIGS = ("baseline", "off", "all")
BLK_KEYS = ("seq_write_mbps", "seq_read_mbps", "rand4k_qd1_iops", "rand4k_qd32_iops", "rand4k_batch32_iops")
# The modules a ring pair or a split-disk request runs through, whose trace points the baseline cuts out.
DATA_PATH_MODULES = ("xenlike/public/ring.py", "xenlike/kernel/events.py", "dom0/blkback/blkback.py")
_MASKS = ("_tmask",)  # module-level names of the trace mask besides ``trace.mask``


def _is_trace_mask(node: ast.AST) -> bool:
    """``trace.mask``: the mask word as the modules that import ``xenlike.kernel.trace`` name it."""
    return isinstance(node, ast.Attribute) and node.attr == "mask" and getattr(node.value, "id", None) == "trace"


def _reads_mask(node: ast.AST, guards: set[str]) -> bool:
    """Whether an expression reads the trace mask, or a local set from it (``guards``)."""
    for sub in ast.walk(node):
        if _is_trace_mask(sub) or (isinstance(sub, ast.Name) and (sub.id in _MASKS or sub.id in guards)):
            return True
    return False


class _CutTracePoints(ast.NodeTransformer):
    """Drop every ``if`` on the trace mask (keeping its ``else``) and every local assigned from the mask."""

    def __init__(self) -> None:
        self.guards: set[str] = set()
        self.cut = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        outer, self.guards = self.guards, set()
        self.generic_visit(node)
        self.guards = outer
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | None:
        if _reads_mask(node.value, self.guards) and all(isinstance(t, ast.Name) for t in node.targets):
            self.guards.update(t.id for t in node.targets if isinstance(t, ast.Name))
            self.cut += 1
            return None
        return node

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt] | None:
        if _reads_mask(node.test, self.guards):
            self.cut += 1
            kept: list[ast.stmt] = []
            for statement in node.orelse:  # an else may hold trace points of its own
                visited = self.visit(statement)
                kept += visited if isinstance(visited, list) else [visited] if visited is not None else []
            return kept or None
        self.generic_visit(node)
        return node


def cut_trace_points(source: str, path: str) -> tuple[str, int]:
    """``source`` without its trace points, and how many statements were cut; refuses if a test of the mask is left."""
    cutter = _CutTracePoints()
    tree = ast.fix_missing_locations(cutter.visit(ast.parse(source, path)))
    for node in ast.walk(tree):  # a block whose only statement was a trace point keeps a pass
        body = getattr(node, "body", None)
        if isinstance(body, list) and not body:
            body.append(ast.Pass())
    cut = ast.unparse(tree)
    compile(cut, path, "exec")
    tests = [node for node in ast.walk(ast.parse(cut)) if isinstance(node, (ast.If, ast.IfExp))]
    left = [node.lineno for node in tests if _reads_mask(node.test, set())]
    if left:
        raise SystemExit(f"{path}: a test of the trace mask the cut does not know how to take out (lines {left})")
    return cut, cutter.cut


def make_baseline(target: str) -> None:
    """This tree without its data-path trace points, in ``target`` (see the module's docstring)."""
    os.makedirs(target, exist_ok=False)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=HERE, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    for path in DATA_PATH_MODULES:
        with open(os.path.join(target, path)) as f:
            cut, count = cut_trace_points(f.read(), path)
        with open(os.path.join(target, path), "w") as f:
            f.write(cut + "\n")
        print(f"{path}: {count} trace points cut")
    print(f"baseline in {target}")


def _child(tree: str, code: str, timeout: float, argv: list[str] | None = None) -> dict:
    """Run ``code`` (or the script ``argv``) in a fresh interpreter importing ``tree``'s code; its last line as JSON."""
    out = subprocess.run(
        [sys.executable, *(argv or ["-c", code])],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode:
        raise SystemExit(f"a run in {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.splitlines()[-1])
    if not result.pop("src").startswith(os.path.abspath(tree)):
        raise SystemExit(f"the run meant for {tree} imported another tree's xenlike")
    return result


# -- the ring pair ---------------------------------------------------------------------------


def _cpu_s() -> float:
    """User + system CPU seconds of this process and of its children waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_PAIR = (
    "import json, resource, xenlike; from bench.ringpair import run_pair\n"
    "def _cpu_s():\n"
    "    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime\n"
    "c = _cpu_s(); r = run_pair({pairs}, ring_pages={pages}, mode='echo')\n"
    "print(json.dumps({{'rps': r.pairs_per_s, 'cpu_s': _cpu_s() - c, 'errors': r.errors, 'src': xenlike.__file__}}))"
)
_NOTIFY = (
    "import json, time, xenlike; from xenlike.kernel.events import EventLoop, new_port_fd; "
    "loop = EventLoop('bench'); peer = new_port_fd(); loop.bind(1, new_port_fd(), peer); t = time.process_time()\n"
    "for _ in range({count}): loop.notify(1)\n"
    "print(json.dumps({{'rate': {count} / (time.process_time() - t), 'src': xenlike.__file__}}))"
)


def ring_pair(tree: str, pairs: int, traced: bool) -> dict:
    """One ring pair run from ``tree`` (``traced``: this tree, every class on): ``rps`` and ``per_cpu_s``."""
    if traced:
        result = _child(tree, "", 600, [os.path.abspath(__file__), "--traced-child", str(pairs)])
    else:
        result = _child(tree, _PAIR.format(pairs=pairs, pages=RING_PAGES), 600)
    if result["errors"]:
        raise SystemExit(f"ring run in {tree} failed: {result['errors']}")
    return {"rps": result["rps"], "per_cpu_s": pairs / result["cpu_s"]}


def _traced_child(pairs: int) -> None:
    import xenlike
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
    started = _cpu_s()
    thread.start()
    result = run_pair(pairs, ring_pages=RING_PAGES, mode="echo")
    done.set()
    thread.join()
    cpu_s = _cpu_s() - started
    print(
        json.dumps(
            {"rps": result.pairs_per_s, "cpu_s": cpu_s, "errors": result.errors, **counts, "src": xenlike.__file__}
        )
    )


# -- the split disk ----------------------------------------------------------------------------

_BLK = r"""
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path
import xenlike
from bench.blk import WORKLOAD, _allocate, _follow
from xenlike.kernel.rundir import RunDir
from xenlike.tools.toolstack_client import ToolstackClient

import threading

traced, total_mib, random_ops = {traced}, {total_mib}, {random_ops}


def watch(tmp, hypervisor):
    # The host's logs are how the guest's figures arrive: a run directory removed under us would
    # leave this run waiting for ever, so it ends the run, and the host, at once.
    while os.path.isdir(tmp):
        time.sleep(0.5)
    print(f"the run directory {{tmp}} was removed under the run", file=sys.stderr, flush=True)
    if hypervisor:
        os.kill(hypervisor, signal.SIGTERM)
    os._exit(3)


with tempfile.TemporaryDirectory(prefix="tracebench-", dir="/tmp") as tmp:
    image = os.path.join(tmp, "bench.img")
    _allocate(image, total_mib)
    xl = [sys.executable, "-m", "xenlike", "--run-dir", tmp]
    subprocess.run(xl + ["up", "-d", "--memory", "1024", "/dev/null"], check=True, stdout=subprocess.DEVNULL)
    reader, recording = None, os.path.join(tmp, "bench.trace")
    try:
        hypervisor = RunDir(tmp).running_pid()
        threading.Thread(target=watch, args=(tmp, hypervisor), daemon=True).start()
        if traced:
            # Its notices go to a file: a pipe nobody reads would fill and stop the reader.
            notices = open(os.path.join(tmp, "trace.err"), "w+")
            reader = subprocess.Popen(xl + ["trace", "--record", recording], stderr=notices, text=True)
            while not notices.seek(0) and not notices.read().startswith("tracing"):
                assert reader.poll() is None, "xenlike trace ended"
                time.sleep(0.05)
        config = {{"name": "blkbench", "memory": 256, "workload": WORKLOAD,
                   "workload_args": [str(total_mib), str(random_ops)],
                   "disk": [{{"target": image, "vdev": "xvda", "devid": 51712, "format": "raw", "access": "rw",
                              "devtype": "disk", "backend": "0", "discard": True, "direct_io_safe": False,
                              "trusted": True, "size": None, "model": "split"}}]}}
        with ToolstackClient(RunDir(tmp)) as client:
            client.call("create", config=config)
        result = _follow(tmp, Path(tmp) / "logs" / "blkbench.log", hypervisor, timeout=300)
    finally:
        if reader is not None:
            reader.send_signal(signal.SIGINT)
            reader.communicate(timeout=120)
        subprocess.run(xl + ["down"], stdout=subprocess.DEVNULL, timeout=120)
    records = lost = 0
    if traced:
        from xenlike.tools.xentrace import read_recording
        for record in read_recording(Path(recording)).records:
            if record["event"] == "lost_records":
                lost += record["n"]
            else:
                records += 1
print(json.dumps({{"figures": result["figures"], "cpu_s": result["cpu_s"], "records": records, "lost": lost,
                  "src": xenlike.__file__}}))
"""


def _requests(key: str, total_mib: int, random_ops: int) -> int:
    """How many requests a pass of bench/blk_workload.py makes (1 MiB each for the sequential ones)."""
    if key.startswith("seq_"):
        return total_mib
    return random_ops // 4 if key == "rand4k_qd1_iops" else random_ops


def blk_run(tree: str, total_mib: int, random_ops: int, traced: bool) -> dict:
    """The split disk's figures from a guest on a host run from ``tree`` (``traced``: a recording reader on)."""
    return _child(tree, _BLK.format(traced=traced, total_mib=total_mib, random_ops=random_ops), 600)


# -- the run ---------------------------------------------------------------------------------


def _order(round_number: int) -> list[str]:
    """The three configurations, turned by one each round."""
    shift = round_number % len(CONFIGS)
    return list(CONFIGS[shift:] + CONFIGS[:shift])


def _ratios(per_round: list[dict[str, float]], name: str) -> dict[str, float]:
    return {
        f"{name}_{config} / {name}_baseline": statistics.median(r[config] / r["baseline"] for r in per_round)
        for config in ("off", "all")
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--traced-child":
        _traced_child(int(sys.argv[2]))
        return
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--baseline", metavar="DIR", help="a tree of the code before the trace points")
    p.add_argument("--make-baseline", metavar="DIR", help="build that tree from git in DIR (a new directory) and stop")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the three configurations (default 5)")
    p.add_argument("--only", choices=("ring", "blk"), help="one benchmark of the two")
    args = p.parse_args()
    if args.make_baseline:
        make_baseline(args.make_baseline)
        return
    if not args.baseline:
        p.error("--baseline DIR is needed (build one with --make-baseline DIR)")
    trees = {"baseline": os.path.abspath(args.baseline), "off": HERE, "all": HERE}
    pairs = 1_000_000 if args.quick else 10_000_000  # as bench/ring.py
    total_mib, random_ops = (
        (32, 5_000) if args.quick else (128, 40_000)
    )  # bench/blk.py's passes, shorter sequential ones: rounds repeat them
    figures: dict[str, float] = {}
    ratios: dict[str, float] = {}
    if args.only != "blk":
        runs, notify_rounds = [], []
        for number in range(args.rounds):
            runs.append({config: ring_pair(trees[config], pairs, config == "all") for config in _order(number)})
            notify_rounds.append(
                {
                    config: _child(trees[config], _NOTIFY.format(count=pairs // 20), 120)["rate"]
                    for config in CONFIGS[:2]
                }
            )
            time.sleep(0.5)
        for figure in ("rps", "per_cpu_s"):
            per_round = [{config: run[config][figure] for config in CONFIGS} for run in runs]
            for config in CONFIGS:
                figures[f"ring_{figure}_{config}"] = statistics.median(r[config] for r in per_round)
            ratios.update(_ratios(per_round, f"ring_{figure}"))
        for config in CONFIGS[:2]:
            figures[f"notify_per_s_{config}"] = statistics.median(r[config] for r in notify_rounds)
        ratios["notify_per_s_off / notify_per_s_baseline"] = statistics.median(
            r["off"] / r["baseline"] for r in notify_rounds
        )
    if args.only != "ring":
        blk_rounds: list[dict[str, dict]] = []
        for number in range(args.rounds):
            blk_rounds.append(
                {config: blk_run(trees[config], total_mib, random_ops, config == "all") for config in _order(number)}
            )
        for key in BLK_KEYS:
            per_round = [{config: run[config]["figures"][key] for config in CONFIGS} for run in blk_rounds]
            for config in CONFIGS:
                figures[f"blk_{key}_{config}"] = statistics.median(r[config] for r in per_round)
            ratios.update(_ratios(per_round, f"blk_{key}"))
        for key in BLK_KEYS:  # requests per CPU second of the guest, its back-end worker, dom0 and the hypervisor
            name = f"blk_{key.rsplit('_', 1)[0]}_req_per_cpu_s"
            count = _requests(key, total_mib, random_ops)
            per_round = [
                {config: count / max(sum(run[config]["cpu_s"].get(key, {}).values()), 1e-9) for config in CONFIGS}
                for run in blk_rounds
            ]
            for config in CONFIGS:
                figures[f"{name}_{config}"] = statistics.median(r[config] for r in per_round)
            ratios.update(_ratios(per_round, name))
        figures["blk_records_all"] = statistics.median(run["all"]["records"] for run in blk_rounds)
        figures["blk_lost_records_all"] = max(run["all"]["lost"] for run in blk_rounds)
    report(figures, ratios, args.json)


if __name__ == "__main__":
    main()
