"""Virtual networks end to end: netfront in guests, netback and xenbr0 in dom0's back-end namespace.

Every packet here is a guest kernel's own (ICMP echo sockets, http.server, urllib) and crosses
real TAP devices and a real Linux bridge; the host reaches a guest only through a forward on
127.0.0.1. Nothing is sent anywhere else.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import urllib.request

import psutil
import pytest

from .conftest import console_json, wait_for, workload, write_cfg
from .test_lifecycle import write_cluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a vif needs root (TAP devices and bridges)")

DOM0 = "10.88.0.1"


def net_domain(name: str, *args: str, vif: list[str] | None = None, **extra) -> dict:
    domain = {"name": name, "memory": 32, "workload": workload("net"), "workload_args": list(args), **extra}
    if vif is not None:
        domain["vif"] = vif
    return domain


def network_namespaces() -> set[int]:
    """The inodes of every network namespace some process of this machine is in."""
    found = set()
    for proc in psutil.process_iter():
        try:
            found.add(os.stat(f"/proc/{proc.pid}/ns/net").st_ino)
        except OSError:
            continue
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def xs_int(host, domid: int, key: str) -> int:
    return int(host.xs_read(f"/local/domain/{domid}/data/{key}") or 0)


def test_guests_ping_each_other_and_dom0_and_a_guest_without_a_vif_has_only_lo(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        net_domain("a", "ping", "10.88.1.2", DOM0, vif=["ip=10.88.1.1"]),
        net_domain("b", "ping", "10.88.1.1", DOM0, vif=["ip=10.88.1.2, mac=00:16:3e:00:01:02"]),
        net_domain("c", "ifaces"),
        net_domain("d", "ifaces", vif=["mac=00:16:3e:00:01:04"]),
    ])))
    for name, peer in (("a", "10.88.1.2"), ("b", "10.88.1.1")):
        ping = console_json(host, name, "PING", timeout=30)
        assert ping[peer]["ok"], ping
        assert ping[DOM0]["ok"], ping
    assert console_json(host, "c", "IFACES")["names"] == ["lo"]
    d = console_json(host, "d", "IFACES", timeout=30)
    assert d["names"] == ["eth0", "lo"]
    d_domid = host.domains()["d"]["domid"]
    assert d["net"]["eth0"] == {"mac": "00:16:3e:00:01:04", "ip": f"10.88.0.{d_domid + 1}/16"}
    listing = host.xl("network-list", "b").stdout.splitlines()
    assert listing[0].split()[:5] == ["Idx", "BE", "Mac", "Addr.", "handle"]
    assert listing[1].split()[:5] == ["0", "0", "00:16:3e:00:01:02", "0", "4"]  # Connected


def test_a_guest_s_lookups_go_to_its_own_loopback_not_the_host_s_resolver(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [net_domain("n", "names", "example.com", vif=[""])])))
    names = console_json(host, "n", "NAMES", timeout=30)
    assert names["nameservers"] == ["127.0.0.1"]  # the host's resolver is an address no guest may reach
    assert names["hosts"] == [["127.0.0.1", "localhost"], ["::1", "localhost", "ip6-localhost", "ip6-loopback"]]
    assert names["hostname"] == names["fqdn"] == "n"  # what http.server asks at bind: answered, not waited for
    assert names["unknown"] in (socket.EAI_AGAIN, socket.EAI_NONAME)  # refused at once by the guest's loopback
    with open("/etc/resolv.conf") as host_file:  # the host's own file is as it was
        assert "xenlike" not in host_file.read()


def test_a_guest_serves_http_to_another_and_to_the_host_through_a_forward(host, tmp_path):
    port = free_port()
    host.up(str(write_cluster(tmp_path, [
        net_domain("web", "serve", "80", "7", "4", vif=["ip=10.88.2.1"], ports=[f"{port}:80"]),
        net_domain("client", "fetch", "http://10.88.2.1/", vif=["ip=10.88.2.2"]),
    ])))
    serving = console_json(host, "web", "SERVING", timeout=30)
    fetched = console_json(host, "client", "FETCH", timeout=60)
    assert fetched == {"status": 200, "length": 4 << 20, "sha256": serving["sha256"]}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
        body = reply.read()
    assert hashlib.sha256(body).hexdigest() == serving["sha256"]
    top = host.xl("top", "-b", "-i", "1").stdout.splitlines()
    columns = top[0].split()
    rows = {line.split()[0]: dict(zip(columns, line.split())) for line in top[1:] if line.strip()}
    assert rows["client"]["NETS"] == "1" and int(rows["client"]["NETRX(k)"]) >= 4096  # netback's counters
    assert int(rows["web"]["NETTX(k)"]) >= 2 * 4096  # the page to the client and through the forward


def test_network_attach_and_detach_while_the_guest_runs(host, tmp_path):
    host.up()
    cfg = write_cfg(tmp_path, "p", f'name = "p"\nmemory = 32\nworkload = "{workload("net")}"\n'
                                   f'workload_args = ["pinger", "{DOM0}"]\n')
    host.xl("create", str(cfg))
    domid = host.domains()["p"]["domid"]
    wait_for(lambda: xs_int(host, domid, "lost") > 2, timeout=20, what="pings lost without a vif")
    assert xs_int(host, domid, "pings") == 0
    host.xl("network-attach", "p", "mac=00:16:3e:00:02:01")
    wait_for(lambda: xs_int(host, domid, "pings") > 5, timeout=30, what="pings through the attached vif")
    assert "00:16:3e:00:02:01" in host.xl("network-list", "p").stdout
    host.xl("network-detach", "p", "0")
    answered = xs_int(host, domid, "pings")
    lost = xs_int(host, domid, "lost")
    wait_for(lambda: xs_int(host, domid, "lost") > lost + 3, timeout=20, what="pings lost after the detach")
    assert xs_int(host, domid, "pings") <= answered + 1
    assert host.xl("network-list", "p").stdout.splitlines()[1:] == []


def test_killing_a_netback_worker_closes_its_vif_the_guest_carries_on_and_reattaching_brings_it_back(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [net_domain("p", "pinger", DOM0, vif=["mac=00:16:3e:00:03:01"])])))
    domid = host.domains()["p"]["domid"]
    wait_for(lambda: xs_int(host, domid, "pings") > 5, timeout=30, what="pings")
    workers = {p.pid for p in host.processes_named(f"xl-net-{domid}-")}
    assert len(workers) == 1, [p.name() for p in host.processes()]
    os.kill(workers.pop(), signal.SIGKILL)
    back = f"/local/domain/0/backend/vif/{domid}/0/state"
    wait_for(lambda: host.xs_read(back) in ("5", "6"), timeout=20, what="the vif closing")
    lost = xs_int(host, domid, "lost")
    wait_for(lambda: xs_int(host, domid, "lost") > lost + 3, timeout=20, what="pings lost")
    state = host.domains()["p"]["state"]
    assert state[3:6] == "---", state  # the guest runs on: not shut down, crashed or dying
    # Both ends are Closed already: the detach has nothing to wait for, so nothing to force.
    assert "(forced)" not in host.xl("network-detach", "p", "0").stdout
    host.xl("network-attach", "p", "mac=00:16:3e:00:03:02")
    answered = xs_int(host, domid, "pings")
    wait_for(lambda: xs_int(host, domid, "pings") > answered + 5, timeout=30, what="pings after re-attaching")


def test_down_leaves_no_namespace_tap_or_bridge(host, tmp_path):
    host_links = sorted(name for _index, name in socket.if_nameindex())
    host.up(str(write_cluster(tmp_path, [net_domain("a", "ifaces", vif=[""]), net_domain("b", "ifaces", vif=[""])])))
    console_json(host, "a", "IFACES", timeout=30)
    console_json(host, "b", "IFACES", timeout=30)
    home = os.stat("/proc/self/ns/net").st_ino
    ours = {ns for ns in (_netns(p.pid) for p in host.processes()) if ns is not None} - {home}
    assert len(ours) >= 3  # each guest's, and each vif worker's own
    assert sorted(name for _index, name in socket.if_nameindex()) == host_links  # nothing in the host's
    host.xl("down")
    wait_for(lambda: not (ours & network_namespaces()), timeout=20, what="the host's namespaces to go")
    assert sorted(name for _index, name in socket.if_nameindex()) == host_links


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def test_a_vif_on_a_host_without_the_jail_is_refused_in_one_line(host, tmp_path):
    host.up("--no-jail")
    cfg = write_cfg(tmp_path, "n", 'name = "n"\nmemory = 32\nvif = [ "" ]\n')
    result = host.xl("create", str(cfg), check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "network namespace" in lines[0] and "--no-jail" in lines[0], lines
    assert "n" not in host.domains()


def test_the_built_in_httpd_answers_the_host_through_a_forward(host, tmp_path):
    port = free_port()
    host.up()
    cfg = write_cfg(tmp_path, "www", f'name = "www"\nmemory = 32\nworkload = "httpd"\nvif = [ "" ]\n'
                                     f'ports = [ "{port}:80" ]\n')
    host.xl("create", str(cfg))
    domid = host.domains()["www"]["domid"]
    wait_for(lambda: "www: serving http on port 80" in host.log("www"), timeout=20, what="httpd to listen")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
        page = reply.read().decode()
    assert page.startswith(f"Hello from www, domain {domid}: eth0 10.88.0.{domid + 1}/16"), page
    wait_for(lambda: host.xs_read(f"/local/domain/{domid}/data/requests") == "1", what="the request counted")
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        cfg2 = write_cfg(tmp_path, "www2", f'name = "www2"\nmemory = 32\nworkload = "httpd"\nvif = [ "" ]\n'
                                           f'ports = [ "{busy}:80" ]\n')
        result = host.xl("create", str(cfg2), check=False)
    finally:
        taken.close()
    assert result.returncode != 0 and f"127.0.0.1:{busy}: Address already in use" in result.stderr, result.stderr
    assert "www2" not in host.domains()


def test_a_guest_with_a_vif_is_saved_and_restored_with_its_address_and_forward(host, tmp_path):
    port = free_port()
    host.up()
    cfg = write_cfg(tmp_path, "www", f'name = "www"\nmemory = 32\nworkload = "httpd"\n'
                                     f'vif = [ "ip=10.88.4.4, mac=00:16:3e:00:04:04" ]\nports = [ "{port}:80" ]\n')
    host.xl("create", str(cfg))
    wait_for(lambda: "serving http on port 80" in host.log("www"), timeout=20, what="httpd to listen")

    def page() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            return reply.read().decode()

    assert "eth0 10.88.4.4/16 (00:16:3e:00:04:04)" in page()
    image = tmp_path / "www.save"
    host.xl("save", "www", str(image), timeout=120)
    assert "www" not in host.domains()
    host.xl("restore", str(image), timeout=120)
    domid = host.domains()["www"]["domid"]

    def served() -> str | None:
        try:
            return page()
        except OSError:
            return None

    answer = wait_for(served, timeout=30, what="the restored guest to serve again")
    assert answer.startswith(f"Hello from www, domain {domid}: eth0 10.88.4.4/16 (00:16:3e:00:04:04)"), answer
