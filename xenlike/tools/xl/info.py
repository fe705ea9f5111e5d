"""What xl reports (``tools/xl/xl_info.c``): list, info, uptime, dmesg; and the registered workloads."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec

from xenlike.kernel.rundir import RunDir
from xenlike.tools.xl.utils import call, registered
from xenlike.tools.xl_format import format_info, format_list, format_sharing, format_uptime

__all__ = [
    "WORKLOADS_GROUP",
    "WorkloadDoc",
    "main_list",
    "main_info",
    "main_uptime",
    "main_sharing",
    "main_dmesg",
    "main_workloads",
    "parse_workload_doc",
    "workload_doc",
    "format_workloads",
]

WORKLOADS_GROUP = "xenlike.workloads"
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def main_list(args: argparse.Namespace) -> int:
    """xl list [-l] [DOMAIN]: xl's columns, or with ``-l`` each domain's information and config as JSON, and
    ``disk_models``: each disk's device model and what it allows (``shareable``, ``hot_unplug``, ``migratable``)."""
    rows = call(args, "list", domain=args.domain, long=args.long)
    if args.long:
        keys = ("domid", "name", "info", "config", "disk_models")
        print(
            json.dumps(
                [{key: r[key] for key in keys if key in r} for r in rows],
                indent=4,
                default=str,
            )
        )
    else:
        print(format_list(rows))
    return 0


def main_info(args: argparse.Namespace) -> int:
    """xl info: the host's node information, physinfo and version, as ``key : value`` lines (``print_info``)."""
    physinfo = call(args, "info")
    uname = os.uname()
    node = {"host": uname.nodename, "release": uname.release, "version": uname.version, "machine": uname.machine}
    extra: dict[str, object] = {"run_dir": str(RunDir(args.run_dir).path)}
    migration = physinfo.get("migration")
    if migration:
        address = migration["listen"].removeprefix("tcp://")
        extra.update(
            migration_listen=migration["listen"],
            migration_key=migration["key"],
            migrate_here_with=f"xenlike migrate DOMAIN {address} --key {migration['key']}",
        )
    print(format_info(physinfo, node, extra))
    return 0


def main_sharing(args: argparse.Namespace) -> int:
    """xl sharing [DOMAIN]: each domain's memory and how much of it is shared with other domains, in MiB."""
    print(format_sharing(call(args, "sharing", domain=args.domain)))
    return 0


def main_uptime(args: argparse.Namespace) -> int:
    """xl uptime [-s] [DOMAIN]: ``Name ID Uptime``, or with ``-s`` one ``uptime(1)``-like line per domain."""
    print(format_uptime(call(args, "uptime", domain=args.domain), short=args.short))
    return 0


def main_dmesg(args: argparse.Namespace) -> int:
    """xl dmesg [-c]: the hypervisor's log; ``-c`` clears it after reading."""
    for line in call(args, "dmesg", clear=args.clear):
        print(line)
    return 0


def main_workloads(args: argparse.Namespace) -> int:
    """The workloads a ``workload =`` key may name: the ``xenlike.workloads`` entry points.

    One row per workload (``Name Function Summary``), and under it the
    ``workload_args`` it takes, each with what it means.
    """
    print(format_workloads({name: workload_doc(target) for name, target in registered(WORKLOADS_GROUP).items()}))
    return 0


@dataclass
class WorkloadDoc:
    """What a workload's docstring says: the entry point's target, its summary line and its arguments."""

    target: str
    summary: str = ""
    args: list[tuple[str, str]] = field(default_factory=list)  # (``--interval SECONDS``, what it means)


def parse_workload_doc(docstring: str | None) -> tuple[str, list[tuple[str, str]]]:
    """A workload docstring's summary (its first line) and the items of its ``Args:`` section.

    The convention (``docs/guest-api.md``): the first line says what the
    workload does; an ``Args:`` section lists the ``workload_args`` it takes, one
    ``NAME: meaning`` item each, more indented lines continuing the item, up to a
    blank line or a line indented no more than ``Args:``. reST double backquotes
    are dropped, and each text's final full stop, so the texts read as columns.
    """
    lines = (docstring or "").expandtabs().splitlines()
    if not lines:
        return "", []
    summary = _plain(lines[0].strip())
    items: list[tuple[str, str]] = []
    section: int | None = None  # the indent of the ``Args:`` line, while inside its section
    item_indent: int | None = None
    for line in lines[1:]:
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        if section is None:
            if text == "Args:":
                section, item_indent = indent, None
            continue
        if not text or indent <= section:
            break
        if item_indent is None or indent <= item_indent:
            item_indent = indent
            name, _, meaning = text.partition(": ")
            items.append((_plain(name.rstrip(":")), _plain(meaning)))
        else:
            name, meaning = items[-1]
            items[-1] = (name, f"{meaning} {_plain(text)}".strip())
    return _column(summary), [(name, _column(meaning)) for name, meaning in items]


def _plain(text: str) -> str:
    return text.replace("``", "")


def _column(text: str) -> str:
    """``text`` without its final full stop (an ellipsis is kept)."""
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


def workload_doc(target: str) -> WorkloadDoc:
    """What ``module:function``'s docstring says, read from the module's source with :mod:`ast`.

    The module is found as the import system would find it, but neither it nor
    its packages are imported: the tools do not run guest code. A module that
    cannot be found or parsed, or a function without a docstring, gives an
    empty summary.
    """
    entry = importlib.metadata.EntryPoint(name="", value=target, group=WORKLOADS_GROUP)
    source = _module_source(entry.module)
    if source is None:
        return WorkloadDoc(target)
    try:
        node: ast.AST = ast.parse(source)
    except (SyntaxError, ValueError):
        return WorkloadDoc(target)
    for part in (entry.attr or "").split("."):
        body = getattr(node, "body", [])
        found = [n for n in body if isinstance(n, _DEFINITIONS) and n.name == part]
        if not found:
            return WorkloadDoc(target)
        node = found[-1]  # the last definition wins, as at import
    assert isinstance(node, _DEFINITIONS)
    summary, items = parse_workload_doc(ast.get_docstring(node))
    return WorkloadDoc(target, summary, items)


def _module_source(name: str) -> str | None:
    """The source of module ``name``, found through ``sys.meta_path`` without importing it or its packages."""
    path: Sequence[str] | None = None
    spec: ModuleSpec | None = None
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        if depth > 1:
            path = spec.submodule_search_locations if spec is not None else None
            if path is None:
                return None  # the parent is a module, not a package
        spec = _find_spec(".".join(parts[:depth]), path)
        if spec is None:
            return None
    get_source = getattr(spec.loader, "get_source", None) if spec is not None else None
    if get_source is None:
        return None
    try:
        return get_source(name)
    except (ImportError, OSError, UnicodeDecodeError):
        return None


def _find_spec(name: str, path: Sequence[str] | None) -> ModuleSpec | None:
    """Ask each meta-path finder, as the import system does, but stop at the spec."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, path)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            return spec
    return None


def format_workloads(docs: dict[str, WorkloadDoc]) -> str:
    """``Name Function Summary``, a row per workload by name; its arguments under the summary, indented.

    Columns widen to fit, as xentop's do.
    """
    name_width = max([4, *(len(name) for name in docs)])
    target_width = max([8, *(len(doc.target) for doc in docs.values())])
    arg_width = max([0, *(len(arg) for doc in docs.values() for arg, _ in doc.args)])
    indent = " " * (name_width + target_width + 4)
    lines = [f"{'Name':<{name_width}}  {'Function':<{target_width}}  Summary"]
    for name in sorted(docs):
        doc = docs[name]
        lines.append(f"{name:<{name_width}}  {doc.target:<{target_width}}  {doc.summary or '-'}".rstrip())
        for arg, meaning in doc.args:
            lines.append(f"{indent}  {arg:<{arg_width}}  {meaning}".rstrip())
    return "\n".join(lines)
