"""`xenlike workloads`: each registered workload's name, function, summary and arguments, read from its source."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from domu import workloads
from xenlike.tools.xl import main
from xenlike.tools.xl.info import WorkloadDoc, format_workloads, parse_workload_doc, workload_doc

BUILT_INS = ("burn", "crash", "echo", "hello", "idle", "journal", "ticker")


def test_the_listing_shows_every_built_in_with_its_summary_and_arguments(capsys):
    assert main(["workloads"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["Name", "Function", "Summary"]
    summary_column = header.index("Summary")
    by_name: dict[str, list[str]] = {}
    for row in rows:
        if not row.startswith(" "):
            by_name[row.split()[0]] = [row]
        else:
            assert row[:summary_column].strip() == ""  # arguments sit under the summary
            by_name[list(by_name)[-1]].append(row)
    assert set(BUILT_INS) <= set(by_name)
    for name in BUILT_INS:
        row, *args = by_name[name]
        assert row.split()[1] == f"domu.workloads:{name}"
        first_line = inspect.getdoc(getattr(workloads, name)).splitlines()[0]
        assert row[summary_column:] == first_line.replace("``", "").rstrip(".")
        expected = {"ticker": ["--interval SECONDS"], "journal": ["--interval SECONDS"], "crash": ["--after SECONDS"]}
        assert [" ".join(arg.split()[:2]) for arg in args] == expected.get(name, [])
    assert "seconds between heartbeats (default 10)" in by_name["journal"][1]
    assert "seconds before the crash (default 1)" in by_name["crash"][1]


def test_the_listing_runs_no_guest_code():
    code = ("import sys\n"
            "from xenlike.tools.xl import main\n"
            "main(['workloads'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'domu'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"
    assert "Count until shut down" in result.stdout


def test_an_args_section_gives_one_item_per_argument_continuations_joined():
    summary, args = parse_workload_doc(textwrap.dedent("""\
        Serve ``GET`` requests on a port.

        More text, not an argument: here.

        Args:
            --port N: the TCP port
                (default 8080).
            --root DIR: what it serves.
            VERBOSE:

        Returns:
            nothing: ignored.
        """))
    assert summary == "Serve GET requests on a port"
    assert args == [("--port N", "the TCP port (default 8080)"), ("--root DIR", "what it serves"), ("VERBOSE", "")]


@pytest.mark.parametrize("docstring, summary", [(None, ""), ("", ""), ("Just a summary.", "Just a summary"),
                                                ("Summary...\n\nArgs:\n", "Summary...")])
def test_a_docstring_without_arguments(docstring, summary):
    assert parse_workload_doc(docstring) == (summary, [])


def test_a_package_module_is_read_without_being_imported(tmp_path: Path, monkeypatch):
    package = tmp_path / "wlpkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('the package was imported')\n")
    (package / "jobs.py").write_text(textwrap.dedent('''\
        raise RuntimeError("the module was imported")

        class Jobs:
            def nightly(ctx):
                """Run the nightly job.

                Args:
                    --at HH:MM: when.
                """

        def run(ctx):
            """An early definition."""

        def run(ctx):
            """The definition that counts."""
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert workload_doc("wlpkg.jobs:run") == WorkloadDoc("wlpkg.jobs:run", "The definition that counts")
    assert workload_doc("wlpkg.jobs:Jobs.nightly") == WorkloadDoc("wlpkg.jobs:Jobs.nightly", "Run the nightly job",
                                                                 [("--at HH:MM", "when")])
    assert "wlpkg" not in sys.modules


@pytest.mark.parametrize("target", ["no_such_module_anywhere:run", "json:no_such_function", "json.decoder.x:run"])
def test_what_cannot_be_found_has_no_summary(target):
    assert workload_doc(target) == WorkloadDoc(target)


def test_columns_widen_to_fit():
    text = format_workloads({"a-long-workload-name": WorkloadDoc("pkg.module:function", "", [("--n N", "count")]),
                             "b": WorkloadDoc("m:f", "Does b")})
    header, first, arg, second = text.splitlines()
    assert header.index("Function") == first.index("pkg.module:function") == second.index("m:f")
    assert first.endswith("-") and second.endswith("Does b")
    assert arg.index("--n N") == header.index("Summary") + 2


def test_a_guest_s_reason_reaches_dom0_s_log_and_replies_as_one_printable_line():
    """A guest writes what it likes into ~/workload/error: newlines would forge dom0's log lines."""
    from xenlike.public.workload_state import ERROR_MAX, one_line

    forged = "boom\n2026-01-01 00:00:00,000 CRITICAL dom0: the host is compromised\x1b[2J\x07" + "x" * 5000
    line = one_line(forged)
    assert "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert line.startswith("boom 2026-01-01") and len(line) == ERROR_MAX and line.endswith("...")
