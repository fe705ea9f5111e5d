"""vchan end to end: two guests stream both ways, dom0's policy refuses a third, a killed peer is an end of stream."""

from __future__ import annotations

import errno
import os
import signal

from xenlike.public.xen import PAGE_SIZE

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster

GIB = 1 << 30
PORT = 5000


def vchan_domain(name: str, *args: str, **extra) -> dict:
    return {"name": name, "memory": 64, "workload": workload("vchan"), "workload_args": list(args), **extra}


def _pid(host, name: str) -> int:
    return next(r["info"]["pid"] for r in host.call("list", long=True) if r["name"] == name)


def test_two_guests_stream_a_gib_both_ways_with_checksums(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        vchan_domain("server", "serve", str(PORT), str(GIB), vchan=[f"client:{PORT}"]),
        vchan_domain("client", "connect", "server", str(PORT), str(GIB)),
    ])))
    server = console_json(host, "server", "vchan-result", timeout=60)
    client = console_json(host, "client", "vchan-result", timeout=60)
    assert server["sent"] == client["received"] == GIB and client["sent"] == server["received"] == GIB
    assert server["sent_crc"] == client["received_crc"]
    assert client["sent_crc"] == server["received_crc"]
    mb_s = 2 * GIB / 1e6 / max(server["seconds"], client["seconds"])
    print(f"vchan: 1 GiB each way in {max(server['seconds'], client['seconds']):.2f}s, {mb_s:.0f} MB/s together")


def test_a_client_the_policy_does_not_name_is_refused_with_eacces(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        vchan_domain("server", "serve", str(PORT), "1024", vchan=[f"client:{PORT}"]),
        vchan_domain("client", "connect", "server", str(PORT), "1024"),
        vchan_domain("intruder", "refused", "server", str(PORT)),
        vchan_domain("wrongport", "refused", "server", str(PORT + 1)),
    ])))
    for name, port in (("intruder", PORT), ("wrongport", PORT + 1)):
        refused = console_json(host, name, "vchan-refused", timeout=20)
        assert refused["errno"] == errno.EACCES and refused["type"] == "PermissionError"
        assert f"port {port}" in refused["message"] and "server" in refused["message"]
    assert console_json(host, "client", "vchan-result", timeout=20)["received"] == 1024  # the allowed one works


def test_a_domu_reaches_only_the_pages_of_the_vchan(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        vchan_domain("server", "probe-serve", str(PORT), vchan=[f"client:{PORT}"]),
        vchan_domain("client", "probe-connect", "server", str(PORT)),
    ])))
    probe = console_json(host, "client", "vchan-probe", timeout=20)
    pages = 1 + probe["read_size"] // PAGE_SIZE + probe["write_size"] // PAGE_SIZE
    assert probe["page_fd_bytes"] == pages * PAGE_SIZE  # a memfd of the vchan's pages alone
    assert probe["shrink"] == f"PermissionError {errno.EPERM}"  # sealed: it cannot be shrunk under the server
    assert probe["ordinary_errno"] == errno.EPERM and "may not map" in probe["ordinary_frame"]
    # The client closed, so did the server: its nodes are gone, dom0's policy directory stays.
    sid, cid = host.domains()["server"]["domid"], host.domains()["client"]["domid"]
    base = f"/local/domain/{sid}/data/vchan/{cid}/{PORT}"
    wait_for(lambda: host.xs_read(f"{base}/event-channel") is None, what="the server's nodes to go")
    assert host.xs_read(base) == "" and host.xs_read(f"/local/domain/{cid}/vchan/server") == str(sid)


def test_a_peer_killed_mid_stream_is_an_end_of_stream_not_a_hang(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [
        vchan_domain("writer", "flood-serve", str(PORT), vchan=[f"reader:{PORT}"]),
        vchan_domain("reader", "drain-connect", "writer", str(PORT)),
        vchan_domain("sink", "drain-serve", str(PORT + 1), vchan=[f"source:{PORT + 1}"]),
        vchan_domain("source", "flood-connect", "sink", str(PORT + 1)),
    ])))
    console_json(host, "reader", "vchan-progress", timeout=20)
    os.kill(_pid(host, "writer"), signal.SIGKILL)  # the server dies while it writes
    end = console_json(host, "reader", "vchan-end", timeout=10)
    assert end["how"] == "eof" and end["bytes"] > 0 and end["open"] == 0
    console_json(host, "source", "vchan-progress", timeout=20)
    os.kill(_pid(host, "sink"), signal.SIGKILL)  # the server dies while the client writes
    end = console_json(host, "source", "vchan-end", timeout=10)
    assert end["how"] == "BrokenPipeError" and end["bytes"] > 0
    wait_for(lambda: "writer" not in host.domains() and "sink" not in host.domains(), what="the killed to go")
