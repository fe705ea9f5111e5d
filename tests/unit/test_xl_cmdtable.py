"""The xl command table (tools/xl/xl_cmdtable.c) and what the verb families share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xenlike.tools.xl import main
from xenlike.tools.xl.cmdtable import CMD_TABLE, build_parser
from xenlike.tools.xl.console import _forward_keys


def _subparsers(parser):
    return next(action for action in parser._actions if action.dest == "verb")


def test_every_row_is_a_verb_with_its_help_in_the_table_order():
    verbs = _subparsers(build_parser())
    assert list(verbs.choices) == [spec.name for spec in CMD_TABLE]
    helps = {choice.dest: choice.help for choice in verbs._choices_actions}
    for spec in CMD_TABLE:
        assert spec.desc and helps[spec.name] == spec.desc
        assert verbs.choices[spec.name].description == spec.desc


def test_a_parsed_verb_carries_its_row():
    args = build_parser().parse_args(["vcpu-pin", "web", "all", "0-3,^2"])
    assert args.cmd.name == "vcpu-pin" and (args.domain, args.vcpu, args.cpus) == ("web", "all", "0-3,^2")
    assert build_parser().parse_args(["uptime", "-s"]).short


def test_help_lists_every_verb_and_the_examples(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(spec.name in out for spec in CMD_TABLE)
    assert "xenlike shutdown -w web" in out


def test_the_tools_import_neither_dom0_nor_domu():
    code = ("import sys, pkgutil, importlib, xenlike.tools.xl as xl\n"
            "for m in pkgutil.iter_modules(xl.__path__): importlib.import_module('xenlike.tools.xl.' + m.name)\n"
            "import xenlike.tools.config\n"
            "xl.main(['workloads'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dom0', 'domu'}))\n"
            "print('xenlike.hypervisor' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *listing, guests, hypervisor = result.stdout.splitlines()
    assert guests == "[]" and hypervisor == "False"
    assert {"hello", "ticker", "idle"} <= {line.split()[0] for line in listing}  # the xenlike.workloads group


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def call(self, op: str, **args) -> None:
        assert op == "console_input"
        self.sent.append(args["data"])


class _Poller:
    def __init__(self) -> None:
        self.unregistered: list[int] = []

    def unregister(self, fd: int) -> None:
        self.unregistered.append(fd)


@pytest.mark.parametrize(
    "typed, sent, attached",
    [
        (b"ls\r", [b"ls\r"], True),
        (b"q\x1dmore", [b"q"], False),  # Ctrl-] detaches; what came before it still reaches the guest
        (b"\x1d", [], False),
    ],
)
def test_console_keys_go_to_the_guest_until_ctrl_right_bracket(typed, sent, attached):
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, typed)
        client = _Recorder()
        assert _forward_keys(client, "web", read_end, _Poller()) is attached
        assert client.sent == sent
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_end_of_stdin_keeps_the_console_attached_for_output():
    read_end, write_end = os.pipe()
    os.close(write_end)
    poller = _Poller()
    try:
        assert _forward_keys(_Recorder(), "web", read_end, poller) is True
        assert poller.unregistered == [read_end]
    finally:
        os.close(read_end)
