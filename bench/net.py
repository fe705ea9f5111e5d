"""Guest-to-guest networking against two network namespaces joined by a veth pair, in the same run.

Two guests on xenbr0 (netfront in each, netback and the bridge in dom0's back-end namespace)
run a TCP stream of 64 KiB writes and 1-byte UDP request/responses (``bench/net_workload.py``);
then two processes of this one, each in a namespace of its own made here and joined by a veth
pair, run the same code: the kernel's own virtual link, with no ring, grant or copy of ours. A
packet between the guests crosses eight copies' worth of path the veth pair does not: the
sender's TAP, its netfront and tx ring, netback and its TAP, the bridge, the other vif's TAP,
its netback, rx ring and netfront, and the receiver's TAP.

    python bench/net.py [--json] [--quick] [--hops]

``--json`` adds ``vchan_mbps`` and ``vchan_rtt_us`` where the vchan benchmark is present.
``--hops`` runs the guests once more with the ``io`` trace class on (``xenlike trace``) and
prints where a 1-byte UDP request and its response spend their time, hop by hop (medians of
netfront's and netback's ``net-tx``/``net-rx`` records); the figures come from the untraced run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import net_workload  # noqa: E402
from bench.common import parser, report  # noqa: E402
from xenlike.kernel import netdev  # noqa: E402
from xenlike.kernel.rtnetlink import Rtnetlink  # noqa: E402
from xenlike.kernel.rundir import RunDir  # noqa: E402
from xenlike.tools.toolstack_client import ToolstackClient  # noqa: E402

WORKLOAD = f"{Path(__file__).parent / 'net_workload.py'}:run"
SERVER_IP, CLIENT_IP = "10.88.9.1", "10.88.9.2"


def _console_line(log: Path, key: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith(key + " "):
                return line[len(key) + 1 :]
        time.sleep(0.2)
    raise RuntimeError(f"no {key} on {log}")


def guests(seconds: float, count: int, trace_to: Path | None = None) -> dict[str, float]:
    """Two guests' figures; with ``trace_to``, the ``io`` trace records of the client's run go there as JSON lines."""
    with tempfile.TemporaryDirectory(prefix="xl-net-", dir="/tmp") as tmp:
        xl = [sys.executable, "-m", "xenlike", "--run-dir", tmp]
        subprocess.run([*xl, "up", "-d", "--memory", "1024", "/dev/null"], check=True, stdout=subprocess.DEVNULL)
        tracer: subprocess.Popen[bytes] | None = None
        try:
            with ToolstackClient(RunDir(tmp)) as client:
                for name, ip, args in (
                    ("netserver", SERVER_IP, ["server"]),
                    ("netclient", CLIENT_IP, ["client", SERVER_IP, str(seconds), str(count)]),
                ):
                    if trace_to is not None and name == "netclient":
                        with open(trace_to, "wb") as out:
                            tracer = subprocess.Popen(
                                [*xl, "trace", "--class", "io", "--json"], stdout=out, stderr=subprocess.DEVNULL
                            )
                        time.sleep(1.0)  # the tracer has the buffers before the first packet
                    config = {"name": name, "memory": 64, "workload": WORKLOAD, "workload_args": args,
                              "vif": [{"devid": 0, "mac": f"00:16:3e:09:00:0{len(args)}", "bridge": "xenbr0",
                                       "vifname": None, "ip": ip, "rate": None, "rate_bytes_per_interval": 0,
                                       "rate_interval_us": 0, "mtu": 1500, "backend": "0", "trusted": True}]}
                    client.call("create", config=config)
            line = _console_line(Path(tmp) / "logs" / "netclient.log", "NETBENCH", 120 + seconds)
            return json.loads(line)
        finally:
            if tracer is not None:
                tracer.terminate()
                tracer.wait()
            subprocess.run([*xl, "down"], stdout=subprocess.DEVNULL)


# A request's path and back, as (end, guest, op) of the records it leaves: netfront's in the guest
# (``dev``: its eth0), netback's in the worker of that guest's vif (``vif``, and the guest's domid).
_PATH = [
    ("front", "netclient", "net-tx"), ("back", "netclient", "net-tx"),
    ("back", "netserver", "net-rx"), ("front", "netserver", "net-rx"),
    ("front", "netserver", "net-tx"), ("back", "netserver", "net-tx"),
    ("back", "netclient", "net-rx"), ("front", "netclient", "net-rx"),
]
_HOPS = [  # (what, record index, its start or end; record index, its start or end)
    ("client netfront: frame read from eth0 -> netback takes it off the tx ring", 0, 0, 1, 0),
    # The bridge runs inside netback's write to its TAP and wakes the other vif's worker, which may run
    # before that write returns: the two are one hop.
    ("client's netback: tx decoded -> its TAP, the bridge -> server's netback reads", 1, 0, 2, 0),
    ("server's netback: read -> rx responses pushed", 2, 0, 2, 1),
    ("event channel: pushed -> server netfront takes the response", 2, 1, 3, 0),
    ("server netfront: response taken -> frame written to eth0", 3, 0, 3, 1),
    ("server guest: its stack and the echo workload", 3, 1, 4, 0),
    ("server netfront: echo read from eth0 -> netback takes it", 4, 0, 5, 0),
    ("server's netback: tx decoded -> its TAP, the bridge -> client's netback reads", 5, 0, 6, 0),
    ("client's netback: read -> rx responses pushed", 6, 0, 6, 1),
    ("event channel: pushed -> client netfront takes the response", 6, 1, 7, 0),
    ("client netfront: response taken -> frame written to eth0", 7, 0, 7, 1),
]
RR_FRAME = 43  # Ethernet, IPv4 and UDP headers and one byte


def hop_profile(records: Path) -> list[tuple[str, float]]:
    """Median microseconds of each hop of the UDP request/responses in ``records`` (a traced run)."""
    by_hop: dict[tuple[str, str, str], list[dict]] = {key: [] for key in _PATH}
    frames = [json.loads(line) for line in records.read_text().splitlines() if line.startswith("{")]
    frames = [r for r in frames if r.get("event") == "io_request" and r.get("bytes") == RR_FRAME]
    guest_of = {r["domid"]: r["src"] for r in frames if "dev" in r}  # a guest's own records name it
    for record in frames:
        end = "front" if "dev" in record else "back"
        key = (end, guest_of.get(record["domid"], ""), record.get("op", ""))
        if key in by_hop:
            by_hop[key].append(record)
    lists = [sorted(by_hop[key], key=lambda r: r["ns"]) for key in _PATH]
    trips = min(len(records_) for records_ in lists)
    if trips < 100:
        raise RuntimeError(f"{records}: {trips} traced round trips, too few for a profile")

    def at(record: dict, end: int) -> int:
        return record["ns"] + (record["dur"] if end else 0)

    rows = []
    for what, a, a_end, b, b_end in _HOPS:
        gaps = [at(lists[b][i], b_end) - at(lists[a][i], a_end) for i in range(trips // 10, trips)]
        rows.append((what, statistics.median(gaps) / 1000))
    totals = [at(lists[7][i], 1) - lists[0][i]["ns"] for i in range(trips // 10, trips)]
    rows.append(("request read in the client guest -> response written there", statistics.median(totals) / 1000))
    return rows


def _in_namespace(netns: int, role: str, seconds: float, count: int, pipe: int) -> None:
    netdev.setns(netns)
    if role == "server":
        net_workload.start_servers()
        os.write(pipe, b"ready")
        time.sleep(3600)
    figures = net_workload.measure(SERVER_IP, seconds, count)
    os.write(pipe, json.dumps(figures).encode())


def veth(seconds: float, count: int) -> dict[str, float]:
    """The same two ends in two namespaces joined by a veth pair (made here, gone with this process)."""
    spaces = [netdev.new_netns(), netdev.new_netns()]
    with netdev.in_netns(spaces[0]):
        rt_server = Rtnetlink()
    with netdev.in_netns(spaces[1]):
        rt_client = Rtnetlink()
    _veth_pair(rt_server, rt_client, spaces[1])
    children = []
    result: dict[str, float] = {}
    try:
        for netns, role in ((spaces[0], "server"), (spaces[1], "client")):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(read)
                    _in_namespace(netns, role, seconds, count, write)
                finally:
                    os._exit(0)
            os.close(write)
            children.append(pid)
            data = os.read(read, 4096)
            if role == "client":
                while not data.endswith(b"}"):
                    data += os.read(read, 4096)
                result = json.loads(data)
            os.close(read)
    finally:
        for pid in children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        rt_server.close()
        rt_client.close()
        for fd in spaces:
            os.close(fd)
    return {"veth_tcp_stream_mbps": result["tcp_stream_mbps"], "veth_udp_rr_us": result["udp_rr_us"]}


def _veth_pair(rt_server: Rtnetlink, rt_client: Rtnetlink, client_netns: int) -> None:
    rt_server.add_veth("xlv0", "xlv1", peer_netns=client_netns)
    for rt, name, ip in ((rt_server, "xlv0", SERVER_IP), (rt_client, "xlv1", CLIENT_IP)):
        index = rt.link_index(name)
        rt.add_address(index, ipaddress.IPv4Interface(f"{ip}/16"))
        rt.set_link(index, up=True)
        rt.set_link(rt.link_index("lo"), up=True)


def vchan_figures(quick: bool) -> dict[str, float]:
    try:
        from bench import vchan as vchan_bench  # the vchan benchmark, where present
    except ImportError:
        return {}
    measure = getattr(vchan_bench, "measure", None)
    return measure(quick) if measure is not None else {}


def main() -> None:
    cli = parser(__doc__.split("\n\n")[0])
    cli.add_argument("--hops", action="store_true", help="a traced run more: where a UDP round trip's time goes")
    args: argparse.Namespace = cli.parse_args()
    seconds, count = (2.0, 2_000) if args.quick else (5.0, 20_000)
    load_before = os.getloadavg()[0]
    figures = guests(seconds, count)
    figures.update(veth(seconds, count))
    figures.update(vchan_figures(args.quick))
    ordered = {key: figures[key] for key in ("tcp_stream_mbps", "veth_tcp_stream_mbps", "udp_rr_us",
                                             "veth_udp_rr_us", "vchan_mbps", "vchan_rtt_us") if key in figures}
    # The host's load changes both sides (a busy host wakes an idle CPU less often): it goes with the figures.
    ordered["load_average"] = round(max(load_before, os.getloadavg()[0]), 2)
    if args.hops:
        with tempfile.TemporaryDirectory(prefix="xl-net-trace-", dir="/tmp") as tmp:
            records = Path(tmp) / "io.jsonl"
            guests(0.5, 3_000, trace_to=records)
            for what, us in hop_profile(records):
                print(f"{us:9.1f} us  {what}")
    ratios = {
        "tcp_stream_mbps / veth": ordered["tcp_stream_mbps"] / ordered["veth_tcp_stream_mbps"],
        "udp_rr_us / veth": ordered["udp_rr_us"] / ordered["veth_udp_rr_us"],
    }
    report(ordered, ratios, args.json)


if __name__ == "__main__":
    main()
