"""Guest-to-guest networking against two network namespaces joined by a veth pair, in the same run.

Two guests on xenbr0 (netfront in each, netback and the bridge in dom0's back-end namespace)
run a TCP stream of 64 KiB writes and 1-byte UDP request/responses (``bench/net_workload.py``);
then two processes of this one, each in a namespace of its own made here and joined by a veth
pair, run the same code: the kernel's own virtual link, with no ring, grant or copy of ours. A
packet between the guests crosses eight copies' worth of path the veth pair does not: the
sender's TAP, its netfront and tx ring, netback and its TAP, the bridge, the other vif's TAP,
its netback, rx ring and netfront, and the receiver's TAP.

    python bench/net.py [--json] [--quick]

``--json`` adds ``vchan_mbps`` and ``vchan_rtt_us`` where the vchan benchmark is present.
"""

from __future__ import annotations

import ipaddress
import json
import os
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


def guests(seconds: float, count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="xl-net-", dir="/tmp") as tmp:
        xl = [sys.executable, "-m", "xenlike", "--run-dir", tmp]
        subprocess.run([*xl, "up", "-d", "--memory", "1024", "/dev/null"], check=True, stdout=subprocess.DEVNULL)
        try:
            with ToolstackClient(RunDir(tmp)) as client:
                for name, ip, args in (
                    ("netserver", SERVER_IP, ["server"]),
                    ("netclient", CLIENT_IP, ["client", SERVER_IP, str(seconds), str(count)]),
                ):
                    config = {"name": name, "memory": 64, "workload": WORKLOAD, "workload_args": args,
                              "vif": [{"devid": 0, "mac": f"00:16:3e:09:00:0{len(args)}", "bridge": "xenbr0",
                                       "vifname": None, "ip": ip, "rate": None, "rate_bytes_per_interval": 0,
                                       "rate_interval_us": 0, "mtu": 1500, "backend": "0", "trusted": True}]}
                    client.call("create", config=config)
            line = _console_line(Path(tmp) / "logs" / "netclient.log", "NETBENCH", 120 + seconds)
            return json.loads(line)
        finally:
            subprocess.run([*xl, "down"], stdout=subprocess.DEVNULL)


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
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    seconds, count = (2.0, 2_000) if args.quick else (5.0, 20_000)
    figures = guests(seconds, count)
    figures.update(veth(seconds, count))
    figures.update(vchan_figures(args.quick))
    ordered = {key: figures[key] for key in ("tcp_stream_mbps", "veth_tcp_stream_mbps", "udp_rr_us",
                                             "veth_udp_rr_us", "vchan_mbps", "vchan_rtt_us") if key in figures}
    ratios = {
        "tcp_stream_mbps / veth": ordered["tcp_stream_mbps"] / ordered["veth_tcp_stream_mbps"],
        "udp_rr_us / veth": ordered["udp_rr_us"] / ordered["veth_udp_rr_us"],
    }
    report(ordered, ratios, args.json)


if __name__ == "__main__":
    main()
