"""`create` and `up` say why a guest did not start its workload, in one line on stderr, and fail.

The guest kernel reports ``~/workload/state`` (``xenlike.public.workload_state``);
the toolstack's ``create`` answers with it, or with what on_crash did next.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from dom0.toolstack.lifecycle import MAX_RESTARTS, RESTART_WINDOW_S

from .conftest import WORKLOADS, Host, wait_for, write_cfg
from .test_lifecycle import write_cluster

REGISTERED = ", ".join(sorted(ep.name for ep in importlib.metadata.entry_points(group="xenlike.workloads")))
TIKCER = f"workload 'tikcer' is not registered; did you mean 'ticker'? (registered: {REGISTERED})"


def up(host: Host, tmp_path: Path) -> None:
    """A host with one idle domain, for a create to add to."""
    host.up(str(write_cluster(tmp_path, [{"name": "idle", "workload": "idle"}])))


def did_not_start(verb: str, name: str, reason: str) -> str:
    """The exact line: ``xenlike VERB: NAME (domain N) did not start: REASON``, N any domid."""
    return rf"xenlike {verb}: {re.escape(name)} \(domain \d+\) did not start: {re.escape(reason)}"


def create_fails(host: Host, cfg: Path, *args: str) -> str:
    result = host.xl("create", str(cfg), *args, check=False, input="")
    assert result.returncode == 1, result
    assert "created" not in result.stdout
    return result.stderr.strip()


@pytest.mark.parametrize("name, workload, reason", [
    ("nofile", "nosuch.py:run", "workload '{dir}/nosuch.py:run': no such file"),
    ("nofunc", f"{WORKLOADS}/greeter.py:rnu",
     f"workload '{WORKLOADS}/greeter.py:rnu': greeter.py has no function 'rnu'; did you mean 'run'?"),
    ("typo", "tikcer", TIKCER),
    ("nomod", "nosuch_module_xl:run", "workload 'nosuch_module_xl:run': no module named 'nosuch_module_xl' "
                                      "on the guest's sys.path"),
    ("raises", f"{WORKLOADS}/raises_at_import.py:run",
     f"workload '{WORKLOADS}/raises_at_import.py:run': loading raises_at_import.py raised "
     "RuntimeError: raises_at_import fails on purpose"),
])
def test_create_says_why_the_guest_did_not_start(host: Host, tmp_path: Path, name: str, workload: str,
                                                 reason: str) -> None:
    up(host, tmp_path)
    cfg = write_cfg(tmp_path, name, f'name = "{name}"\nmemory = 16\nworkload = "{workload}"\n')
    line = create_fails(host, cfg)
    assert re.fullmatch(did_not_start("create", name, reason.format(dir=tmp_path)), line), line
    assert name not in host.domains()  # on_crash = destroy, xl's default


def test_create_c_does_not_attach_to_a_guest_that_did_not_start(host: Host, tmp_path: Path) -> None:
    up(host, tmp_path)
    cfg = write_cfg(tmp_path, "attach", 'name = "attach"\nmemory = 16\nworkload = "nosuch.py:run"\n')
    line = create_fails(host, cfg, "-c")
    assert re.fullmatch(did_not_start("create", "attach", f"workload '{tmp_path}/nosuch.py:run': no such file"),
                        line), line
    assert "no domain" not in line


def test_an_on_crash_restart_loop_is_told_by_create(host: Host, tmp_path: Path) -> None:
    up(host, tmp_path)
    cfg = write_cfg(tmp_path, "loop", 'name = "loop"\nmemory = 16\nworkload = "tikcer"\non_crash = "restart"\n')
    line = create_fails(host, cfg)
    tail = (f"; on_crash restarted it {MAX_RESTARTS} times and it failed again each time; the toolstack "
            f"stopped restarting it: {MAX_RESTARTS} restarts within {RESTART_WINDOW_S:g}s is the most it allows")
    assert re.fullmatch(did_not_start("create", "loop", TIKCER + tail), line), line
    assert "loop" not in host.domains()


def test_a_good_guest_still_creates_and_prints_its_domain(host: Host, tmp_path: Path) -> None:
    up(host, tmp_path)
    cfg = write_cfg(tmp_path, "fine", f'name = "fine"\nmemory = 16\nworkload = "{WORKLOADS}/greeter.py:run"\n')
    result = host.xl("create", str(cfg))
    assert re.fullmatch(r"xenlike: created fine \(domain \d+\)", result.stdout.strip()), result.stdout
    assert result.stderr == ""
    wait_for(lambda: "greetings from fine" in host.log("fine"), what="the guest's greeting")


def test_up_refuses_a_cluster_with_a_guest_that_does_not_start_and_leaves_no_host(host: Host, tmp_path: Path) -> None:
    cluster = write_cluster(tmp_path, [{"name": "good", "workload": "idle"}, {"name": "bad", "workload": "tikcer"}])
    result = host.xl("up", "-d", "--memory", "1024", str(cluster), check=False)
    assert result.returncode == 1, result
    assert re.search(r"^xenlike: created good \(domain \d+\)$", result.stdout, re.M), result.stdout
    line = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(did_not_start("up", "bad", TIKCER) + "; stopping the host", line), line
    assert host.run_dir.running_pid() is None
    wait_for(lambda: not host.processes(), what="every process of the refused host to exit")
