"""README.md's five-minute tour, run as written against a real host.

The commands and sample outputs come from the README itself: in the tour's
section, every indented line ``$ COMMAND`` is a step, and the lines after it, up
to a blank line or the next ``$``, are what it prints. An indented block whose
first line is ``# NAME.EXT`` (``# counter.py``) is a file the reader saves; the
test writes it into the directory the commands run in.

Each step runs through ``bash -c`` (so ``$XENLIKE_RUN_DIR`` and trailing
comments mean what they mean at a prompt) with the reader's stdout and stderr
merged, as a terminal shows them, and its output is matched against the sample:
text exactly (runs of blanks inside a line may differ, as columns widen), while
numbers, dates, times and UUIDs may take any value, an inline ``...`` matches
anything and a line of ``...`` any number of lines. A command with no sample
must print nothing.

Two steps are set-up the test does its own way: activating the virtual
environment puts this interpreter's ``bin`` first on PATH, and
``export XENLIKE_RUN_DIR=...`` points at the test's own run directory (the
README's path is read as that directory in the samples). ``rm`` of the run
directory runs as written, and the directory must then be gone; no other
command than ``xenlike`` is run. The interactive steps run on a
pseudo-terminal: ``console`` is read until it shows its sample, gets the lines
of :data:`TYPED` typed at it once it has put the terminal in raw mode (keys
typed before that are discarded, as on a real terminal), and is detached with
Ctrl-]; ``top`` without ``-b`` redraws a full screen every second, so it is
only started and quit with q, its output not compared. The host is the
``host`` fixture's (taken down, its run directory removed, even when the test
fails), started by the tour's own ``xenlike up -d``.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import Host, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
TOUR_HEADING = "## A five-minute tour"
RUN_DIR_VAR = "XENLIKE_RUN_DIR"

# What the reader types at a console, per domain: each line is typed once the
# sample lines before it have appeared (the guest echoes it back, so the README
# shows it as a line of the console's output).
TYPED = {"echo": ["hi there"]}

STEP_TIMEOUT_S = 120.0  # a bound on a hung command, not a measure of anything
CONSOLE_WAIT_S = 30.0   # how long a console is watched for its sample before it is detached anyway
CTRL_RIGHT_BRACKET = b"\x1d"


# -- reading the tour ------------------------------------------------------------


@dataclass
class Step:
    command: str
    sample: list[str]
    line: int  # the command's line number in README.md


@dataclass
class Tour:
    steps: list[Step] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)


def parse_tour(text: str) -> Tour:
    """The steps and files of the README's tour section (up to the next ``## `` heading)."""
    lines = text.splitlines()
    try:
        start = lines.index(TOUR_HEADING) + 1
    except ValueError:
        raise AssertionError(f"README.md has no {TOUR_HEADING!r} section") from None
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    tour = Tour()
    i = start
    while i < end:
        if not lines[i].startswith("    "):
            i += 1
            continue
        block_start = i
        block: list[str] = []
        while i < end and lines[i].startswith("    "):
            block.append(lines[i][4:])
            i += 1
        file_name = re.fullmatch(r"# (\S+\.\w+)", block[0])
        if file_name:
            tour.files[file_name.group(1)] = "\n".join(block[1:]) + "\n"
        elif block[0].startswith("$ "):
            for offset, line in enumerate(block):
                if line.startswith("$ "):
                    tour.steps.append(Step(line[2:].strip(), [], block_start + offset + 1))
                else:
                    tour.steps[-1].sample.append(line)
        else:
            raise AssertionError(f"README.md line {block_start + 1}: a block in the tour that is neither "
                                 f"commands (`$ ...`) nor a file (`# name.ext`): {block[0]!r}")
    return tour


# -- matching outputs ------------------------------------------------------------

_TOKENS = re.compile(
    r"(?P<dots>\.\.\.)"
    r"|(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|(?P<date>\d{4}-\d{2}-\d{2})"
    r"|(?P<time>\d{2}:\d{2}:\d{2})"
    r"|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<blank>[ \t]+)"
)
_PATTERNS = {
    "dots": ".*?",
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "date": r"\d{4}-\d{2}-\d{2}",
    "time": r"\d{2}:\d{2}:\d{2}",
    "number": r"-?\d+(?:\.\d+)?",
    "blank": r"[ \t]+",
}
ANY_LINES = None  # a sample line of ``...``


def line_pattern(sample: str, literals: dict[str, str]) -> re.Pattern[str]:
    """The regular expression a sample line stands for; ``literals`` maps README text to what the test has instead."""
    indent = len(sample) - len(sample.lstrip(" "))
    body = sample[indent:].rstrip()
    out = [re.escape(sample[:indent])]
    pos = 0
    special = "|".join(re.escape(k) for k in sorted(literals, key=len, reverse=True))
    tokens = re.compile(f"(?P<literal>{special})|{_TOKENS.pattern}" if special else _TOKENS.pattern)
    for match in tokens.finditer(body):
        out.append(re.escape(body[pos:match.start()]))
        kind = match.lastgroup or ""
        out.append(re.escape(literals[match.group()]) if kind == "literal" else _PATTERNS[kind])
        pos = match.end()
    out.append(re.escape(body[pos:]))
    return re.compile("".join(out))


def expected_lines(sample: list[str], literals: dict[str, str]) -> list[re.Pattern[str] | None]:
    return [ANY_LINES if line.strip() == "..." else line_pattern(line, literals) for line in sample]


def matches(expected: list[re.Pattern[str] | None], actual: list[str]) -> bool:
    """Whether the output lines ``actual`` are what the sample ``expected`` describes."""

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(expected):
            return j == len(actual)
        pattern = expected[i]
        if pattern is ANY_LINES:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and pattern.fullmatch(actual[j]) is not None and match(i + 1, j + 1)

    return match(0, 0)


def output_lines(text: str) -> list[str]:
    """Output as a reader sees it: without carriage returns, trailing blanks, or blank lines at the end."""
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def drift(step: Step, actual: list[str], why: str = "its output is not the README's sample") -> str:
    sample = "\n".join(f"    {line}" for line in step.sample) or "    (nothing)"
    shown = "\n".join(f"    {line}" for line in actual) or "    (nothing)"
    return (f"README.md line {step.line}: `{step.command}`: {why}\n"
            f"  README shows:\n{sample}\n  xenlike printed:\n{shown}")


# -- running the steps -----------------------------------------------------------


class PtyCommand:
    """A command on a pseudo-terminal of its own, as a reader's terminal runs it."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True)
        os.close(slave)
        self.output = b""

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def read_until(self, done: Callable[[str], bool], timeout: float) -> bool:
        """Collect output until ``done(text so far)`` or ``timeout`` seconds; whether ``done`` held."""
        deadline = time.monotonic() + timeout
        while not done(self.text()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if select.select([self.master], [], [], min(left, 0.2))[0]:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the command has exited and closed the terminal
                    data = b""
                if not data:
                    return done(self.text())
                self.output += data
        return True

    def raw(self) -> bool:
        """Whether the command has put the terminal in raw mode (the pty's two ends share one termios).

        Keys typed before that are not read as keys: switching to raw mode
        discards pending input (``tty.setraw``'s ``TCSAFLUSH``).
        """
        return not termios.tcgetattr(self.master)[3] & termios.ICANON

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = STEP_TIMEOUT_S) -> int:
        """Wait for the command to exit, collecting the rest of its output; its exit status."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.read_until(lambda _: False, 0.5)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


class TourRunner:
    def __init__(self, host: Host, workdir: Path) -> None:
        self.host = host
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if k not in (RUN_DIR_VAR, "VIRTUAL_ENV")}
        # A newcomer's shell, with no xenlike on PATH until the tour activates the virtual environment.
        path = [d for d in self.env.get("PATH", "").split(os.pathsep) if d and not shutil.which("xenlike", path=d)]
        self.env["PATH"] = os.pathsep.join(path)
        self.env.setdefault("TERM", "xterm")
        self.literals: dict[str, str] = {}
        self.drifts: list[str] = []

    def expected(self, step: Step) -> list[re.Pattern[str] | None]:
        return expected_lines(step.sample, self.literals)

    def check(self, step: Step, output: str, status: int) -> None:
        actual = output_lines(output)
        if status != 0:
            pytest.fail(drift(step, actual, f"exited with status {status}; the tour cannot go on"))
        if not matches(self.expected(step), actual):
            self.drifts.append(drift(step, actual))

    def run(self, step: Step) -> None:
        argv = shlex.split(step.command, comments=True)
        if argv in ([".", ".venv/bin/activate"], ["source", ".venv/bin/activate"]):
            self.activate()
        elif argv and argv[0] == "export":
            self.export(step, argv[1:])
        elif argv and argv[0] == "rm" and [a for a in argv[1:] if not a.startswith("-")] == [f"${RUN_DIR_VAR}"]:
            assert self.env.get(RUN_DIR_VAR) == str(self.host.path), "rm before the tour exported its run directory"
            self.plain(step)
            if self.host.path.exists():
                self.drifts.append(drift(step, [], "the run directory is still there"))
        elif argv[:1] != ["xenlike"]:
            pytest.fail(f"README.md line {step.line}: `{step.command}` is a step this test does not know how to run")
        elif argv[1:2] == ["console"]:
            self.console(step, argv[-1])
        elif argv[1:2] == ["top"] and "-b" not in argv:
            self.top(step)
        else:
            self.plain(step)
            if argv[1:3] == ["up", "-d"]:
                # A reader takes more than the ticker's first second to get to the
                # xenstore step; the test waits for that tick rather than for a time.
                wait_for(lambda: self.host.xs_read("/local/domain/2/data/ticks"), 20, "ticker's first tick")

    def activate(self) -> None:
        bin_dir = Path(sys.executable).parent
        assert shutil.which("xenlike", path=str(bin_dir)), f"no xenlike in {bin_dir}: install the project first"
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(bin_dir.parent)

    def export(self, step: Step, assignments: list[str]) -> None:
        for assignment in assignments:
            name, _, value = assignment.partition("=")
            if name != RUN_DIR_VAR:
                pytest.fail(f"README.md line {step.line}: the tour exports {name}, which this test does not know")
            self.literals[value] = str(self.host.path)
            self.env[RUN_DIR_VAR] = str(self.host.path)
        if step.sample:
            self.drifts.append(drift(step, [], "a shell assignment prints nothing"))

    def plain(self, step: Step) -> None:
        result = subprocess.run(["bash", "-c", step.command], cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=STEP_TIMEOUT_S)
        self.check(step, result.stdout, result.returncode)

    def console(self, step: Step, domain: str) -> None:
        """Watch the console until it shows the sample, typing :data:`TYPED` lines as their turn comes; Ctrl-]."""
        typed = TYPED.get(domain, [])
        for line in typed:
            assert line in step.sample, f"README.md line {step.line}: the tour no longer types {line!r} at {domain}"
        term = PtyCommand(step.command, self.workdir, self.env)

        def showing(expected: list[re.Pattern[str] | None]) -> Callable[[str], bool]:
            return lambda text: term.raw() and matches(expected, output_lines(text))

        try:
            for index, line in enumerate(step.sample):
                if line in typed:
                    before = self.expected(Step(step.command, step.sample[:index], step.line)) + [ANY_LINES]
                    term.read_until(showing(before), CONSOLE_WAIT_S)
                    term.type(line.encode() + b"\r")
            term.read_until(showing(self.expected(step)), CONSOLE_WAIT_S)
            term.type(CTRL_RIGHT_BRACKET)
            status = term.finish()
            self.check(step, term.text(), status)
        finally:
            term.close()

    def top(self, step: Step) -> None:
        """Full-screen frames, redrawn every second: start it, wait for a frame, quit with q."""
        term = PtyCommand(step.command, self.workdir, self.env)
        try:
            shown = term.read_until(lambda text: term.raw() and "Domain-0" in text, CONSOLE_WAIT_S)
            term.type(b"q")
            status = term.finish()
            if status != 0 or not shown:
                why = f"did not show a frame and quit on q (status {status})"
                pytest.fail(drift(step, output_lines(term.text()), why))
        finally:
            term.close()


# -- the tests -------------------------------------------------------------------


def test_matcher_reads_samples_as_the_readme_says() -> None:
    """Numbers, dates, times, UUIDs and ``...`` vary; everything else is the text itself."""
    literals = {"/tmp/xenlike-tour": "/tmp/xl-abc"}
    sample = ["xenlike: host running in /tmp/xenlike-tour (hypervisor pid 4242); ...",
              "  boot 1 at 2026-11-24 10:27:18, then 6 heartbeat(s)",
              "...",
              'vm = "/vm/0e98b54c-07e9-47b3-985f-d2350964b29e"',
              "Domain-0     0    32"]
    good = ["xenlike: host running in /tmp/xl-abc (hypervisor pid 17); `xenlike list` shows it",
            "  boot 12 at 2027-01-02 03:04:05, then 0 heartbeat(s)",
            "anything", "at all",
            'vm = "/vm/11111111-2222-3333-4444-555555555555"',
            "Domain-0   0  1024"]
    assert matches(expected_lines(sample, literals), good)
    assert matches(expected_lines(sample, literals), good[:2] + good[4:])  # ``...`` may stand for no line
    for index, wrong in [(0, "xenlike: host running in /tmp/xenlike-tour (hypervisor pid 17); x"),
                         (1, "boot 12 at 2027-01-02 03:04:05, then 0 heartbeat(s)"),  # indentation is kept
                         (1, "  boot 12 at 2027-01-02 03:04:05, then 0 heartbeats"),
                         (5, "Domain-0   0")]:
        assert not matches(expected_lines(sample, literals), good[:index] + [wrong] + good[index + 1:]), wrong
    assert not matches(expected_lines(["a", "b"], {}), ["a", "b", "c"])  # no line may be left over
    assert matches(expected_lines([], {}), [])
    assert not matches(expected_lines([], {}), ["output where the README shows none"])


def test_tour_parses() -> None:
    tour = parse_tour(README.read_text())
    commands = [step.command for step in tour.steps]
    assert any(command.startswith("xenlike up") for command in commands), commands
    assert commands[-1].startswith("rm ") or any(command.startswith("xenlike down") for command in commands)
    assert "counter.py" in tour.files and "counter.cfg" in tour.files, sorted(tour.files)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The reader's current directory, where the tour's files are saved (removed even when the test fails)."""
    path = Path(tempfile.mkdtemp(prefix="xl-tour-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(300)  # the whole tour, one step after another
def test_readme_tour_runs_as_written(host: Host, workdir: Path) -> None:
    tour = parse_tour(README.read_text())
    for name, text in tour.files.items():
        (workdir / name).write_text(text)
    runner = TourRunner(host, workdir)
    for step in tour.steps:
        runner.run(step)
    assert not runner.drifts, "the README's tour and xenlike disagree:\n\n" + "\n\n".join(runner.drifts)
