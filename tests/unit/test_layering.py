"""The layers import one way (DESIGN.md "Layout", ARCHITECTURE.md "Layers").

Every ``import`` statement of every module of ``xenlike``, ``dom0`` and ``domu``
is read from its source (those under ``if TYPE_CHECKING:`` and inside functions
too), and an arrow against the layering fails the test, naming the file, the
line and the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("xenlike", "dom0", "domu")

# layer -> the layers it may import (itself included). Anything not named here
# (the standard library, zmq, msgpack, psutil) is free for every layer.
ALLOWED: dict[str, set[str]] = {
    "xenlike.public": {"xenlike.public"},
    "xenlike.kernel": {"xenlike.public", "xenlike.kernel"},
    "xenlike.hypervisor": {"xenlike.public", "xenlike.kernel", "xenlike.hypervisor"},
    # xl and the libraries it shares with dom0's daemons (config parser, output formats, console stream)
    "xenlike.tools": {"xenlike.public", "xenlike.kernel", "xenlike.tools"},
    # the toolstack, xenstored, xenconsoled and the back ends: Xen's tools/ daemons and dom0's drivers
    "dom0": {"xenlike.public", "xenlike.kernel", "xenlike.tools", "dom0"},
    # the guest kernel, its front ends and the workload API: Linux's drivers/xen in a domU
    "domu": {"xenlike.public", "xenlike.kernel", "domu"},
    "xenlike": {"xenlike.tools"},  # xenlike/__main__.py runs xl
}
LAYERS = sorted(ALLOWED, key=len, reverse=True)
OURS = tuple(ALLOWED)


def _layer(module: str) -> str | None:
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if node.module is None or module in OURS:  # `from . import x`: x may be a module
                found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_package_is_read() -> None:
    names = {_module_name(p) for p in _sources()}
    for expected in ("xenlike.public.ring", "xenlike.kernel.events", "xenlike.hypervisor.core",
                     "xenlike.tools.xl", "dom0.xenbus_backend", "domu.xenbus_frontend"):
        assert expected in names


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    here = _layer(_module_name(path))
    assert here is not None, f"{path} is in no layer"
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {here} imports {module} (it may import {', '.join(sorted(ALLOWED[here]))})"
        for line, module in _imports(path)
        if (there := _layer(module)) is not None and there not in ALLOWED[here]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_arrow(tmp_path: Path) -> None:
    """The rule table refuses what the layering forbids (so the test above can fail)."""
    for here, there in (("xenlike.public", "xenlike.kernel"), ("xenlike.tools", "dom0"), ("dom0", "domu"),
                        ("domu", "dom0"), ("domu", "xenlike.tools"), ("xenlike.kernel", "xenlike.hypervisor")):
        assert there not in ALLOWED[here]
