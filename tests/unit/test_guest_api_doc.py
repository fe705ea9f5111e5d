"""docs/guest-api.md documents every public member of what a workload is handed.

Each class below has one section in the reference: a heading naming it in
backquotes (``### `XenbusClient` ...``), running to the next heading of the same
or a higher level. A member counts as documented when that section, outside
code blocks, has a heading naming it or a backquoted span that starts with it,
bare or qualified (`` `read(path, tx=0) -> bytes` ``, `` `ctx.xenstore` ``).
Public means no leading underscore: methods, properties and class attributes of
the class and of its xenlike bases, dataclass and named-tuple fields, and the
attributes its methods assign on ``self``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from pathlib import Path

import pytest

from domu import workload
from domu.blkfront.blkfront import BlkBatch, BlkBuffer, BlkFuture, BlockDevice, BlockIOError, DiskFile
from domu.console import ConsoleFront, ConsoleStream
from domu.vchan import Vchan, VchanDriver
from domu.vcpu import Vcpu, VcpuCall, VcpuError
from domu.workload import WorkloadContext
from domu.xenbus import Transaction, XenbusClient
from xenlike.kernel.events import EventChannel, EventLoop
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import HypercallClient, HypercallError
from xenlike.kernel.memory import GuestMemory, OutOfFrames, PageAllocator
from xenlike.public.grant_table import GrantEntry, GrantError
from xenlike.public.xs_wire import Permission, XsError

DOC = Path(__file__).resolve().parents[2] / "docs" / "guest-api.md"

CLASSES = [
    WorkloadContext,
    XenbusClient, Transaction, XsError, Permission,
    BlockDevice, BlkFuture, BlkBatch, BlkBuffer, DiskFile, BlockIOError,
    Vcpu, VcpuCall, VcpuError,
    ConsoleFront, ConsoleStream,
    GuestMemory, PageAllocator, OutOfFrames,
    GrantTable, GrantEntry, GrantError,
    EventLoop, EventChannel,
    VchanDriver, Vchan,
    HypercallClient, HypercallError,
]

_OURS = ("xenlike", "domu")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*)$", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+)`")


def public_members(cls: type) -> set[str]:
    """The public names of ``cls``: see the module docstring."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in _OURS:
            continue
        names.update(name for name in vars(klass) if not name.startswith("_"))
        names.update(getattr(klass, "_fields", ()))  # a NamedTuple's
        names.update(_self_attributes(klass))
    if dataclasses.is_dataclass(cls):
        names.update(f.name for f in dataclasses.fields(cls))
    return {name for name in names if not name.startswith("_")}


def _self_attributes(klass: type) -> set[str]:
    """Attributes the class's own methods assign on ``self`` (``self.x = ...``, ``self.a, self.b = ...``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError):
        return set()
    found: set[str] = set()

    def targets(node: ast.expr) -> None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            found.add(node.attr)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                targets(element)

    for node in ast.walk(tree.body[0]):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                targets(target)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets(node.target)
    return found


def _prose(text: str) -> str:
    """The document without its fenced code blocks (whose ``#`` lines are no headings)."""
    return _FENCE.sub("", text)


def class_sections(text: str) -> dict[str, list[str]]:
    """Each backquoted name in a heading -> the sections headed by it."""
    text = _prose(text)
    headings = list(_HEADING.finditer(text))
    sections: dict[str, list[str]] = {}
    for index, heading in enumerate(headings):
        level = len(heading.group(1))
        end = next((h.start() for h in headings[index + 1 :] if len(h.group(1)) <= level), len(text))
        for name in _SPAN.findall(heading.group(2)):
            sections.setdefault(name, []).append(text[heading.start() : end])
    return sections


def documented(section: str, member: str) -> bool:
    """Whether ``member`` has a heading in ``section`` or a backquoted span starting with it."""
    starts = re.compile(rf"^(?:[^\s`(]*\.)?{re.escape(member)}(?!\w)")
    for heading in _HEADING.finditer(section):
        if re.search(rf"(?<![\w.]){re.escape(member)}(?!\w)", heading.group(2)):
            return True
    return any(starts.match(span) for span in _SPAN.findall(section))


@pytest.fixture(scope="module")
def sections() -> dict[str, list[str]]:
    return class_sections(DOC.read_text())


def test_every_class_has_exactly_one_section(sections):
    counts = {cls.__name__: len(sections.get(cls.__name__, [])) for cls in CLASSES}
    assert {name: n for name, n in counts.items() if n != 1} == {}, (
        f"{DOC.name} needs one heading naming each class in backquotes (0: missing, 2+: ambiguous)")


def test_every_public_member_is_documented_in_its_class_section(sections):
    missing = [f"{cls.__name__}.{member}"
               for cls in CLASSES
               for section in sections.get(cls.__name__, [])[:1]
               for member in sorted(public_members(cls))
               if not documented(section, member)]
    assert missing == [], f"{DOC.name} does not document: {', '.join(missing)}"


def test_the_workload_module_names_are_documented():
    prose = _prose(DOC.read_text())
    spans = set(_SPAN.findall(prose))
    missing = [name for name in workload.__all__ if not any(re.match(rf"(?:\w+\.)*{name}(?!\w)", s) for s in spans)]
    assert missing == []


def test_the_member_lists_are_what_a_reader_expects():
    # The check above is only as good as these lists: they must see fields,
    # assigned attributes, properties and inherited members.
    assert {"name", "xenstore", "disks", "vcpus", "sleep"} <= public_members(WorkloadContext)
    assert {"read", "read_str", "directory", "watch", "loop_thread", "interface"} <= public_members(XenbusClient)
    assert {"read_str", "id", "client"} <= public_members(Transaction)
    assert {"sectors", "readonly", "size", "vdev", "closing"} <= public_members(BlockDevice)
    assert {"grant_access", "memory", "nr_entries", "free_refs"} <= public_members(GrantTable)
    assert {"domid", "access"} <= public_members(Permission)
    assert {"errno_name", "errno"} <= public_members(XsError)
    assert not any(name.startswith("_") for cls in CLASSES for name in public_members(cls))
    assert "count" not in public_members(Permission) and "readline" not in public_members(DiskFile)  # not ours


def test_the_checker_reads_sections_and_spans_as_intended():
    text = ("# Top\n\n### `Alpha` (`ctx.alpha`)\n\n- `alpha.run(x) -> int`: runs.\n- `size`\n\n"
            "```python\n# not a heading\nalpha.hidden()\n```\n\n#### `stop()`\n\n## `Beta`\n\n`rest` and `run`\n")
    found = class_sections(text)
    assert set(found) >= {"Alpha", "Beta", "ctx.alpha"}
    alpha = found["Alpha"][0]
    assert documented(alpha, "run") and documented(alpha, "size") and documented(alpha, "stop")
    assert not documented(alpha, "hidden") and not documented(alpha, "rest")
    assert not documented(alpha, "al") and documented(found["Beta"][0], "rest")
