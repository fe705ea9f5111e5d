"""Mistakes a new user makes against a running host, each answered in one line that names it and the fix."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import wait_for
from .test_lifecycle import write_cluster


def _one_line(result) -> str:
    """The single line a refused verb wrote to stderr (after any warnings), checking it exited 1."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("xenlike: warning:")]
    assert result.returncode == 1 and len(lines) == 1, (result.returncode, result.stderr)
    return lines[0]


def test_a_disk_image_in_a_missing_directory_is_named_with_the_fix(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "web", "workload": "idle"}])))
    target = tmp_path / "nosuch" / "web.img"
    cfg = tmp_path / "d.cfg"
    cfg.write_text(f'name = "d"\ndisk = ["vdev=xvdb, size=4M, target={target}"]\n')
    why = (f"cannot create disk image {target}: directory {target.parent} does not exist "
           "(create it, or put the image in another directory)")
    assert _one_line(host.xl("create", str(cfg), check=False)) == f"xenlike create: {why}"
    assert _one_line(host.xl("block-attach", "web", f"vdev=xvdb, size=4M, target={target}", check=False)) == (
        f"xenlike block-attach: {why}")
    assert "d" not in host.domains() and not target.parent.exists()


def test_xenstore_tools_name_the_path_they_could_not_use(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    assert _one_line(host.xl("xenstore-read", "/nosuch", check=False)) == (
        "xenlike xenstore-read: cannot read /nosuch: ENOENT (no such node)")
    assert _one_line(host.xl("xenstore-ls", "/nosuch", check=False)) == (
        "xenlike xenstore-ls: cannot list /nosuch: ENOENT (no such node)")
    assert _one_line(host.xl("xenstore-write", "/local//x", "1", check=False)) == (
        "xenlike xenstore-write: cannot write /local//x: EINVAL "
        "(not a valid path: letters, digits and -/_@, single slashes, none at the end)")


def test_too_little_memory_is_the_hypervisor_s_sentence_and_dom0_logs_which_call(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    cfg = tmp_path / "big.cfg"
    cfg.write_text('name = "big"\nmemory = 4000\n')
    line = _one_line(host.xl("create", str(cfg), check=False))
    assert re.fullmatch(r"xenlike create: domain 'big' needs 4000 MiB but only \d+ MiB of the host's 1024 MiB are free "
                        r"\(start the host with a larger --memory, or destroy a domain\)", line), line
    logged = [row for row in host.log("dom0").splitlines() if "create for 'big' refused" in row]
    assert len(logged) == 1 and logged[0].endswith("(call 0 of a multicall, domctl createdomain)"), logged


def test_domain_0_is_never_destroyed_even_with_f(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "web", "workload": "idle"}])))
    refusal = ("xenlike destroy: Domain-0 runs the toolstack and cannot be destroyed, even with -f (xl's -f needs a "
               "hardware domain apart from domain 0); `xenlike down` stops the host")
    for argv in (["Domain-0"], ["-f", "Domain-0"], ["-f", "0"]):
        assert _one_line(host.xl("destroy", *argv, check=False)) == refusal
    host.xl("destroy", "-f", "web")  # for any other domain -f changes nothing, as in xl
    assert set(host.domains()) == {"Domain-0"}


def test_domain_0_is_refused_as_the_target_of_a_domu_s_verbs_saying_why(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [])))
    why = ("Domain-0 runs xenlike's toolstack: it is not shut down, rebooted, paused, renamed, given devices "
           "or attached to on its own; `xenlike down` stops the host")
    for verb, *argv in (["pause", "Domain-0"], ["shutdown", "0"], ["rename", "Domain-0", "x"]):
        assert _one_line(host.xl(verb, *argv, check=False)) == f"xenlike {verb}: {why}"
    assert host.domains()["Domain-0"]["state"] != "--p---" and set(host.domains()) == {"Domain-0"}


def test_a_relative_block_attach_target_is_the_caller_s(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "web", "workload": "idle"}])))
    here = tmp_path / "here"
    here.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "block-attach", "web",
         "vdev=xvdb, size=4M, target=scratch.img"],
        capture_output=True, text=True, timeout=60, cwd=here,
    )
    assert result.returncode == 0, result.stderr
    assert (here / "scratch.img").stat().st_size == 4 << 20  # where the caller stood, not where dom0 runs
    with host.client() as client:
        rows = client.call("block_list", domain="web")
    assert [row["target"] for row in rows] == [str(here / "scratch.img")]


def test_shutdown_and_reboot_take_xl_s_options(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "a", "workload": "hello"}, {"name": "b", "workload": "hello"}])))
    old = {name: row["domid"] for name, row in host.domains().items()}
    result = host.xl("reboot", "-a", "-w", "-F")
    assert result.stdout == f"xenlike: domains {old['a']}, {old['b']} rebooted\n"
    new = host.domains()
    assert set(new) == {"Domain-0", "a", "b"} and new["a"]["domid"] not in (old["a"], old["b"])
    assert host.xl("shutdown", "-F", "-w", "a").stdout == "xenlike: a shut down\n"
    assert set(host.domains()) == {"Domain-0", "b"}


def test_console_t_pv_n_0_and_e_attach_to_the_one_console(host, tmp_path):
    host.up(str(write_cluster(tmp_path, [{"name": "e", "workload": "echo"}])))
    wait_for(lambda: "type a line" in host.log("e"), what="the echo prompt")
    # ^A detaches; what was typed before it reaches the guest.
    result = host.xl("console", "-t", "pv", "-n", "0", "-e", "^a", "e", input="hello xen\n\x01", timeout=30)
    assert "type a line" in result.stdout
    wait_for(lambda: "echo: hello xen" in host.log("e"), what="the line typed before the escape")
    assert _one_line(host.xl("console", "-t", "serial", "e", check=False)) == (
        "xenlike console: -t serial: xenlike guests have one pv console (use -t pv, or no -t)")
