"""A domU cannot reach what is not its own; each attempt gets a precise refusal and harms nobody."""

from __future__ import annotations

import re

import pytest

from xenlike.public.xs_wire import XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_SERVER_FEATURE_ERROR

from .conftest import console_json, wait_for, workload
from .test_lifecycle import write_cluster


def test_a_hostile_domu_is_refused_everything_and_the_victim_is_unharmed(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "victim", "workload": "ticker", "workload_args": ["--interval", "0.1"]}])))
    victim = host.domains()["victim"]["domid"]
    cfg = tmp_path / "attacker.cfg"
    cfg.write_text(f'name = "attacker"\nmemory = 16\nworkload = "{workload("attacker")}"\nworkload_args = ["{victim}"]\n')
    host.xl("create", str(cfg))
    results = console_json(host, "attacker", "ATTACKS", timeout=30)

    def refused(name, errno=None, text=None):
        outcome = results[name]
        assert outcome["allowed"] is False, f"{name} was allowed: {outcome}"
        if errno is not None:
            assert outcome["errno"] == errno, f"{name}: {outcome}"
        if text is not None:
            assert text in outcome["message"], f"{name}: {outcome}"

    refused("read_victim_name", "EACCES")
    refused("write_victim_data", "EACCES")
    refused("rm_victim_home", "EACCES")
    refused("write_dom0", "EACCES")
    refused("write_own_name", "EACCES")  # the guest may read its home, not rewrite it
    assert results["write_own_data"]["allowed"] is True
    refused("big_node", "ENOSPC")
    refused("node_quota", "ENOSPC")
    refused("domctl_destroy", text="privileged")
    refused("domctl_info", text="privileged")
    refused("sysctl", text="privileged")
    refused("bind_victim_port", 22)  # EINVAL: its ports are bound to dom0, not open to us
    refused("close_victim_port", text="only dom0 is privileged")
    refused("status_victim_port", text="only dom0 is privileged")
    refused("signal_unbound_port", text="port 99 is not bound here")
    refused("map_victim_xenstore_grant", text="is granted to d0, not to d")
    assert "GNTST" in results["map_victim_xenstore_grant"]["message"]
    refused("alloc_port_for_victim", text="only dom0 is privileged")
    copy = results["copy_from_victim_frame"]
    assert copy["allowed"] is True and "-8" in copy["result"]  # GNTST_permission_denied, per op
    # A datagram msgpack cannot build is refused as malformed: the next hypercall is answered as ever.
    assert results["unbuildable_hypercall"]["allowed"] is True, results["unbuildable_hypercall"]
    assert "malformed hypercall refused" in host.log("hypervisor")
    assert host.run_dir.running_pid() == host.hypervisor_pid

    # The victim runs on, its nodes intact, its name its own.
    domains = host.domains()
    assert domains["victim"]["domid"] == victim and domains["victim"]["state"] in ("-b----", "r-----")
    assert host.xs_read(f"/local/domain/{victim}/name") == "victim"
    assert host.xs_read(f"/local/domain/{victim}/data/owned") is None
    assert host.xs_read("/local/domain/0/name") == "Domain-0"
    ticks = int(host.xs_read(f"/local/domain/{victim}/data/ticks"))
    wait_for(lambda: int(host.xs_read(f"/local/domain/{victim}/data/ticks")) > ticks, what="the victim to keep ticking")


def test_hypercalls_of_every_odd_shape_are_refused_one_by_one_and_nobody_is_harmed(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "victim", "workload": "ticker", "workload_args": ["--interval", "0.1"]}])))
    victim = host.domains()["victim"]["domid"]
    cfg = tmp_path / "fuzzer.cfg"
    cfg.write_text(f'name = "fuzzer"\nmemory = 32\nworkload = "{workload("hypercall_fuzzer")}"\n'
                   'workload_args = ["1", "1500"]\n')
    host.xl("create", str(cfg))
    fuzz = console_json(host, "fuzzer", "FUZZ", timeout=60)
    assert fuzz["answered"] and sum(fuzz["outcomes"].values()) > 1400, fuzz
    assert set(fuzz["outcomes"]) - {"ok"}, fuzz  # some were refused, each with its errno
    # Every refusal was a handler's precise answer, not a handler that broke on what it was given.
    assert "raised in the hypervisor" not in host.log("hypervisor")
    assert host.run_dir.running_pid() == host.hypervisor_pid
    ticks = int(host.xs_read(f"/local/domain/{victim}/data/ticks"))
    wait_for(lambda: int(host.xs_read(f"/local/domain/{victim}/data/ticks")) > ticks, what="the victim to keep ticking")
    # Its calls may have closed its own ports (its xenstore one among them), so it may not hear a shutdown:
    # destroyed, as a guest that broke itself is.
    host.xl("destroy", "fuzzer")
    assert "fuzzer" not in host.domains()


@pytest.mark.parametrize(
    ("mode", "error", "named"),
    [("indices", XENSTORE_ERROR_RINGIDX, "XENSTORE_ERROR_RINGIDX"), ("too-long", XENSTORE_ERROR_PROTO, "XENSTORE_ERROR_PROTO")],
)
def test_a_guest_that_breaks_its_xenstore_ring_loses_its_own_connection_and_nobody_else_s(host, tmp_path, mode, error, named):
    host.up(str(write_cluster(tmp_path, [{"name": "prober", "workload": workload("xs_prober")}])))
    cfg = tmp_path / "vandal.cfg"
    cfg.write_text(f'name = "vandal"\nmemory = 16\nworkload = "{workload("xs_vandal")}"\nworkload_args = ["{mode}"]\n')
    host.xl("create", str(cfg))
    vandal = host.domains()["vandal"]["domid"]
    outcome = console_json(host, "vandal", "VANDAL", timeout=40)

    # xenstored stopped serving the ring, said why in the page (docs/misc/xenstore-ring.txt's
    # connection error feature, which it offers), and the guest's next call is refused at once.
    assert outcome["features"] & XENSTORE_SERVER_FEATURE_ERROR, outcome
    assert outcome["error"] == error, outcome
    assert outcome.get("refused") == "XsError" and outcome["errno"] == "EIO", outcome
    assert named in outcome["message"], outcome
    dropped = [line for line in host.log("dom0").splitlines() if "xenstore connection dropped" in line]
    assert dropped and f"d{vandal}" in dropped[-1] and named in dropped[-1], dropped

    # Every other connection is served as before: the prober's writes go on, dom0 answers.
    def probes() -> list[tuple[int, str]]:
        return [(int(n), what) for n, what in re.findall(r"^PROBE (\d+) (\S+)$", host.log("prober"), re.M)]

    seen = len(probes())
    wait_for(lambda: len(probes()) >= seen + 5, what="the prober to go on writing")
    assert all(what == "ok" for _n, what in probes()), probes()[-5:]
    assert host.xs_read(f"/local/domain/{vandal}/name") == "vandal"

    # The vandal is a domain like any other to the toolstack: it runs, and is destroyed cleanly.
    assert host.domains()["vandal"]["state"] in ("-b----", "r-----")
    host.xl("destroy", "vandal")
    assert "vandal" not in host.domains()
    assert host.xs_read(f"/local/domain/{vandal}") is None
