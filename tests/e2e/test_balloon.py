"""The balloon end to end: mem-set moves a guest's memory back to the host and back again."""

from __future__ import annotations

from .conftest import WORKLOADS, console_json, wait_for, write_cfg


def _mem(host, name):
    return host.domains()[name]["mem"]


def _free_mib(host):
    return int(next(line.split(":", 1)[1] for line in host.xl("info").stdout.splitlines()
                    if line.startswith("free_memory")))


def test_mem_set_gives_memory_back_and_takes_it_again(host, tmp_path):
    host.up()
    host.xl("create", str(write_cfg(tmp_path, "b", 'name = "b"\nmemory = 64\nworkload = "ticker"\n')))
    domid = host.domains()["b"]["domid"]
    free = _free_mib(host)
    assert _mem(host, "b") == 64
    host.xl("mem-set", "b", "32m")
    wait_for(lambda: _mem(host, "b") == 32, what="the guest at 32 MiB")
    assert host.xs_read(f"/local/domain/{domid}/memory/target") == str(32 * 1024)
    wait_for(lambda: host.xs_read(f"/local/domain/{domid}/memory/balloon") == "reached", what="reached")
    assert _free_mib(host) == free + 32  # the host's pool has it back
    host.xl("mem-set", "b", "64")
    wait_for(lambda: _mem(host, "b") == 64, what="the guest at 64 MiB again")
    assert _free_mib(host) == free
    ticks = int(host.xs_read(f"/local/domain/{domid}/data/ticks") or 0)
    wait_for(lambda: int(host.xs_read(f"/local/domain/{domid}/data/ticks") or 0) > ticks, what="ticks")


def test_a_target_out_of_reach_is_met_as_far_as_it_can_be_and_refusals_name_the_limit(host, tmp_path):
    host.up()
    host.xl("create", str(write_cfg(tmp_path, "b", 'name = "b"\nmemory = 16\nworkload = "ticker"\n')))
    domid = host.domains()["b"]["domid"]
    result = host.xl("mem-set", "b", "128", check=False)
    assert result.returncode != 0 and "above its maximum of 16384 KiB" in result.stderr
    result = host.xl("mem-set", "b", "1k", check=False)
    assert result.returncode != 0 and "is too little" in result.stderr
    result = host.xl("mem-max", "b", "12m", check=False)
    assert "holds 16 MiB; its maximum cannot be less" in result.stderr
    host.xl("mem-set", "b", "10m")
    wait_for(lambda: _mem(host, "b") == 10, what="the guest at 10 MiB")
    host.xl("mem-max", "b", "12m")
    result = host.xl("mem-set", "b", "14m", check=False)
    assert "above its maximum of 12288 KiB" in result.stderr
    # A guest whose memory is in use gives what it can spare, and says how far it got.
    host.xl("create", str(write_cfg(tmp_path, "f", f'name = "f"\nmemory = 32\nworkload = "{WORKLOADS}/migrating.py:run"\n'
                                    'workload_args = ["fill"]\n')))
    console_json(host, "f", "FILLED", timeout=60)
    f = host.domains()["f"]["domid"]
    host.xl("mem-set", "f", "8m")
    wait_for(lambda: (host.xs_read(f"/local/domain/{f}/memory/balloon") or "").startswith("short "),
             what="the balloon saying how far it got")
    short_kb = int(host.xs_read(f"/local/domain/{f}/memory/balloon").split()[1])
    held_kb = host.call("list", domain="f", long=True)[0]["info"]["memory_kb"]
    assert held_kb == 8 * 1024 + short_kb and held_kb < 32 * 1024
