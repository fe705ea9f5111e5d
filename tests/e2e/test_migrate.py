"""Live migration between two hosts on 127.0.0.1, each with a run directory of its own."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest

from .conftest import WORKLOADS, Host, console_json, wait_for
from .test_save_restore import counter_guest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def target(request):
    h = Host()
    try:
        yield h
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            h.print_logs()
        h.teardown()


def _listen(target: Host) -> tuple[str, str]:
    port = _free_port()
    out = target.xl("up", "-d", "--memory", "1024", "--listen", f"127.0.0.1:{port}").stdout
    target.hypervisor_pid = target.run_dir.running_pid()
    assert f"accepting migrations on tcp://127.0.0.1:{port}" in out
    info = target.xl("info").stdout
    key = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("migration_key"))
    assert f"xenlike migrate DOMAIN 127.0.0.1:{port} --key {key}" in info
    return f"127.0.0.1:{port}", key


def _ticks(host: Host, name: str) -> list[int]:
    """The counters of the guest's TICK lines, [0] before the first."""
    ticks = [json.loads(line[5:])["counter"] for line in host.log(name).splitlines() if line.startswith("TICK ")]
    return ticks or [0]


def test_live_migration_carries_memory_disk_and_nodes(host, target, tmp_path):
    host.up()
    address, key = _listen(target)
    domid = counter_guest(host, tmp_path)
    host.xl("xenstore-write", f"/local/domain/{domid}/data/kept", "yes")
    wait_for(lambda: len(_ticks(host, "m")) >= 2, timeout=30, what="ticks")
    out = host.xl("migrate", "m", address, "--key", key, timeout=180).stdout
    assert "migrated m:" in out and "round(s)" in out and "downtime" in out and "of its memory" in out
    assert "m" not in host.domains()  # the source no longer has it
    resumed = console_json(target, "m", "RESUMED", timeout=30)
    assert resumed["memory_same"] and resumed["disk_bad"] == [] and resumed["acked"] == resumed["counter"] > 0
    new = target.domains()["m"]["domid"]
    assert target.xs_read(f"/local/domain/{new}/data/kept") == "yes"
    # Its console history came along: `xenlike console` at the target shows what it printed at the source.
    first_tick = next(line for line in host.log("m").splitlines() if line.startswith("TICK "))
    assert first_tick not in target.log("m")  # the target's log holds only what was printed there
    history = target.call("console_attach", domain="m")["history"].decode(errors="replace")
    assert history.index("STARTED ") < history.index(first_tick) < history.index("RESUMED ")
    wait_for(lambda: _ticks(target, "m")[-1] > resumed["counter"], timeout=30,
             what="ticks at the target")


def test_a_bad_key_is_refused_and_the_guest_runs_on(host, target, tmp_path):
    host.up()
    address, key = _listen(target)
    counter_guest(host, tmp_path)
    wrong = ("0" if key[0] != "0" else "1") + key[1:]
    result = host.xl("migrate", "m", address, "--key", wrong, check=False, timeout=120)
    assert result.returncode != 0
    assert "the target refused it: the key is wrong" in result.stderr and "it runs on here" in result.stderr
    assert "m" in host.domains() and "m" not in target.domains()
    before = _ticks(host, "m")[-1]
    wait_for(lambda: _ticks(host, "m")[-1] > before, timeout=30, what="ticks on the source")


def fill_guest(host, tmp_path, name="f"):
    """A 128 MiB guest whose memory is full: its first round alone takes a while."""
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = 128\nworkload = "{WORKLOADS / "migrating.py"}:run"\n'
                   'workload_args = ["fill"]\n')
    host.xl("create", str(cfg))
    console_json(host, name, "FILLED", timeout=60)


def _in_log(host: Host, text: str, log: str = "dom0") -> bool:
    return text in (host.path / "logs" / f"{log}.log").read_text(errors="replace")


def _migrate_while(host, target, address, key, name, *extra, when, then):
    """``xenlike migrate NAME`` on ``host``, doing ``then()`` once ``when()`` holds (from another process)."""
    actor = os.fork()
    if actor == 0:
        try:
            wait_for(when, timeout=60)
            then()
        finally:
            os._exit(0)
    try:
        return host.xl("migrate", name, address, "--key", key, *extra, check=False, timeout=180)
    finally:
        os.waitpid(actor, 0)


def test_a_target_that_dies_mid_stream_leaves_the_guest_running(host, target, tmp_path):
    host.up()
    address, key = _listen(target)
    fill_guest(host, tmp_path)
    # The target's host is killed once pages are on their way to it.
    result = _migrate_while(
        host, target, address, key, "f",
        when=lambda: _in_log(target, "(f--incoming): created", "hypervisor"), then=lambda: os.killpg(target.hypervisor_pid, signal.SIGKILL))
    assert result.returncode != 0, result.stdout
    # Its connection closed with it: the source says so at once rather than wait out a silence.
    assert "f was not migrated: the target (tcp://" in result.stderr and "closed the connection" in result.stderr
    assert "it runs on here" in result.stderr
    assert host.domains()["f"]["state"][3] != "s"
    before = _ticks(host, "f")[-1]
    wait_for(lambda: _ticks(host, "f")[-1] > before, timeout=30, what="ticks on the source after the failure")


def test_a_target_that_stalls_after_the_suspend_has_the_guest_resumed_on_the_source(host, target, tmp_path):
    host.up()
    address, key = _listen(target)
    fill_guest(host, tmp_path)
    dom0 = next(row["info"]["pid"] for row in target.call("list", long=True) if row["domid"] == 0)
    domid = host.domains()["f"]["domid"]
    # Stop and copy at once; the target's dom0 is stopped once the guest here has suspended.
    result = _migrate_while(
        host, target, address, key, "f", "--stop-and-copy",
        when=lambda: _in_log(host, f"d{domid} (f): suspend requested"), then=lambda: os.kill(dom0, signal.SIGSTOP))
    os.kill(dom0, signal.SIGCONT)
    assert result.returncode != 0, result.stdout
    assert "did not answer" in result.stderr and "it runs on here" in result.stderr
    wait_for(lambda: host.domains()["f"]["state"][3] != "s", timeout=30, what="the guest resumed on the source")
    before = _ticks(host, "f")[-1]
    wait_for(lambda: _ticks(host, "f")[-1] > before, timeout=30, what="ticks on the source after the failure")
    # The target, running again, never starts a second copy: it had no GO.
    wait_for(lambda: not any(n.startswith("f") for n in target.domains()), timeout=30,
             what="the target to have no copy of the guest")


def test_a_guest_with_two_vcpus_is_said_to_go_by_stop_and_copy(host, target, tmp_path):
    host.up()
    address, key = _listen(target)
    cfg = tmp_path / "v.cfg"
    cfg.write_text(f'name = "v"\nmemory = 32\nvcpus = 2\nworkload = "{WORKLOADS / "migrating.py"}:run"\n'
                   'workload_args = ["fill"]\n')
    host.xl("create", str(cfg))
    console_json(host, "v", "FILLED", timeout=60)
    result = host.xl("migrate", "v", address, "--key", key, timeout=180)
    assert "live migration is not available (d" in result.stderr and "has 2 vCPUs" in result.stderr
    assert "stopping and copying" in result.stderr
    assert "migrated v: 1 round(s)" in result.stdout
    assert "v" not in host.domains() and "v" in target.domains()
    wait_for(lambda: "TICK" in target.log("v"), timeout=30, what="the guest to tick at the target")
