"""bench/trace.py's baseline: the data-path modules with their trace points cut out, and nothing else."""

from __future__ import annotations

import ast
import os
import textwrap

import pytest

from bench.trace import DATA_PATH_MODULES, cut_trace_points

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_trace_point_goes_and_its_else_stays() -> None:
    source = textwrap.dedent(
        """
        def notify(port):
            if trace.mask[0]:
                watched(port)
            else:
                write(port)

        def serve(batch):
            io_traced = trace.mask[0] & IO
            for request in batch:
                if io_traced:
                    record(request)
                answer(request)
        """
    )
    cut, count = cut_trace_points(source, "example.py")
    assert count == 3
    assert ast.dump(ast.parse(cut)) == ast.dump(
        ast.parse(
            textwrap.dedent(
                """
                def notify(port):
                    write(port)

                def serve(batch):
                    for request in batch:
                        answer(request)
                """
            )
        )
    )


def test_a_block_left_empty_keeps_a_pass() -> None:
    cut, _ = cut_trace_points("def push():\n    if _tmask[0] & RING:\n        record()\n", "example.py")
    assert ast.dump(ast.parse(cut)) == ast.dump(ast.parse("def push():\n    pass\n"))


@pytest.mark.parametrize("path", DATA_PATH_MODULES)
def test_each_data_path_module_loses_every_test_of_the_mask(path: str) -> None:
    with open(os.path.join(ROOT, path)) as f:
        source = f.read()
    cut, count = cut_trace_points(source, path)
    assert count > 0
    assert "trace.mask" not in cut and "_tmask[0]" not in cut

    # Everything but the trace points is kept: the same functions and classes, by name.
    def names(text: str) -> set[str]:
        return {n.name for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}

    assert names(cut) == names(source)


def test_trace_points_in_an_else_of_a_trace_point_are_cut_too() -> None:
    source = "def f():\n    if trace.mask[0]:\n        a()\n    elif _tmask[0]:\n        b()\n    else:\n        c()\n"
    cut, count = cut_trace_points(source, "example.py")
    assert count == 2
    assert ast.dump(ast.parse(cut)) == ast.dump(ast.parse("def f():\n    c()\n"))
