"""Mistakes a new user makes at the prompt, each answered in one line that names it and the fix."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import msgpack
import pytest

from dom0.blkback.vbd import open_image
from xenlike.kernel.hypercall import HypercallClient, HypercallError
from xenlike.tools.config import load_domain_config
from xenlike.tools.suggest import did_you_mean
from xenlike.tools.xl import main
from xenlike.tools.xl.cmdtable import CMD_TABLE, XL_VERBS, verb_of
from xenlike.tools.xl.console import parse_escape


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    """``xenlike ARGV`` in-process: its exit status and the lines it wrote to stderr."""
    status = main(list(argv))
    return status, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("verb", ["pci-attach", "cd-insert", "remus", "cd-eject", "vtpm-attach"])
def test_a_verb_of_xl_that_xenlike_lacks_is_named_as_xl_s(capsys, verb):
    assert _run(capsys, verb, "web", "64") == (2, [f"xenlike: xl has '{verb}'; xenlike does not (yet)"])


def test_a_mistyped_verb_gets_the_verb_most_like_it(capsys):
    assert _run(capsys, "lsit") == (2, ["xenlike: unknown verb 'lsit'; did you mean 'list'?"])
    assert _run(capsys, "--run-dir", "/nonexistent", "destory", "web") == (
        2, ["xenlike: unknown verb 'destory'; did you mean 'destroy'?"])


def test_an_unknown_verb_like_none_points_at_help(capsys):
    assert _run(capsys, "frobnicate") == (2, ["xenlike: unknown verb 'frobnicate'; `xenlike --help` lists the verbs"])


def test_the_verb_is_the_first_word_after_the_global_options():
    assert verb_of(["--run-dir", "/r", "console", "-t", "pv", "web"]) == "console"
    assert verb_of(["--run-dir=/r", "list", "-l"]) == "list"
    assert verb_of(["-h"]) is None and verb_of([]) is None
    assert verb_of(["--run-dir"]) is None  # the parser then says what is missing


def test_xl_verbs_are_xl_cmdtable_s_and_hold_xenlike_s_xl_verbs():
    assert len(set(XL_VERBS)) == len(XL_VERBS)
    ours = {spec.name for spec in CMD_TABLE}
    assert {"create", "list", "console", "block-attach", "vcpu-pin", "sched-credit"} <= ours & set(XL_VERBS)
    assert not {"up", "down", "workloads", "xenstore-ls"} & set(XL_VERBS)  # xenlike's own, or xenstore's tools


def test_help_of_a_verb_is_its_options(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["help", "console"])
    assert exited.value.code == 0
    assert "-t TYPE" in capsys.readouterr().out
    assert _run(capsys, "help", "lsit") == (1, ["xenlike help: unknown verb 'lsit'; did you mean 'list'?"])


@pytest.mark.parametrize("options, message", [
    (["-t", "serial"], "-t serial: xenlike guests have one pv console (use -t pv, or no -t)"),
    (["-t", "vuart"], "-t vuart: xenlike guests have one pv console (use -t pv, or no -t)"),
    (["-t", "tty"], "-t tty: console types are pv, serial, vuart"),
    (["-t", "pv", "-n", "1"], "-n 1: xenlike guests have one pv console, number 0"),
    (["-e", "^]x"], "-e ^]x: expected one character, or ^ and a letter for a control character (e.g. ^])"),
])
def test_console_options_xenlike_has_no_use_for_are_refused_in_one_line(capsys, tmp_path, options, message):
    assert _run(capsys, "--run-dir", str(tmp_path), "console", *options, "web") == (1, [f"xenlike console: {message}"])


def test_the_console_escape_is_read_as_xenconsole_reads_it():
    assert parse_escape(None) == b"\x1d" and parse_escape("^]") == b"\x1d"
    assert parse_escape("^a") == b"\x01" and parse_escape("q") == b"q"


@pytest.mark.parametrize("argv", [
    ["console", "-t", "pv", "-n", "0", "web"], ["destroy", "-f", "web"], ["shutdown", "-a", "-w", "-F"],
    ["reboot", "-a", "-w", "-F"], ["reboot", "-F", "web"],
])
def test_xl_s_options_are_accepted(capsys, tmp_path, argv):
    status, err = _run(capsys, "--run-dir", str(tmp_path), *argv)
    assert status == 3 and len(err) == 1 and "no xenlike host is running" in err[0]


def test_reboot_needs_a_domain_or_all(capsys, tmp_path):
    assert _run(capsys, "--run-dir", str(tmp_path), "reboot") == (
        1, ["xenlike reboot: reboot needs a domain (or -a for all)"])


def test_a_mistyped_config_key_warns_with_the_key_meant(tmp_path: Path):
    cfg = tmp_path / "web.cfg"
    cfg.write_text('name = "web"\nmemroy = 64\nfoo = 1\n')
    assert load_domain_config(cfg).warnings == [
        f"unknown key 'memroy' in {cfg} line 2, ignored; did you mean 'memory'?",
        f"unknown key 'foo' in {cfg} line 3, ignored",
    ]


def test_did_you_mean_offers_only_a_close_name():
    assert did_you_mean("wieght", ["weight", "cap"]) == "; did you mean 'weight'?"
    assert did_you_mean("foo", ["memory", "oos"]) == ""


def test_a_disk_image_in_a_missing_directory_names_the_directory(tmp_path: Path):
    target = tmp_path / "nosuch" / "x.img"
    with pytest.raises(OSError) as refused:
        open_image(str(target), readonly=False, create_size=1 << 20)
    assert refused.value.errno == errno.ENOENT
    assert refused.value.strerror == (f"cannot create disk image {target}: directory {target.parent} does not exist "
                                      "(create it, or put the image in another directory)")
    with pytest.raises(OSError) as missing:
        open_image(str(tmp_path / "y.img"), readonly=False)
    assert missing.value.strerror == (f"cannot open disk image {tmp_path / 'y.img'}: No such file or directory "
                                      "(size= in the disk spec creates it)")


def test_a_refused_multicall_keeps_the_hypervisor_s_sentence_and_says_which_call_in_str():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        theirs.send(msgpack.packb({"id": 1, "ok": True, "result": {"results": [], "error": {
            "index": 0, "op": "domctl", "errno": "ENOMEM", "message": "domain 'm' needs 4000 MiB"}}}))
        with pytest.raises(HypercallError) as refused:
            HypercallClient(ours, on_event=lambda message, fds: None).multicall(
                [{"op": "domctl", "args": {"cmd": "createdomain"}}])
    finally:
        ours.close()
        theirs.close()
    exc = refused.value
    assert (exc.errno, exc.strerror) == (errno.ENOMEM, "domain 'm' needs 4000 MiB")
    assert (exc.call_index, exc.call_op) == (0, "domctl createdomain")
    assert str(exc) == f"[Errno {errno.ENOMEM}] domain 'm' needs 4000 MiB (call 0 of a multicall, domctl createdomain)"
