"""A real xenlike host per test: hypervisor, dom0 and domUs as OS processes, driven by the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from xenlike.kernel.rundir import RunDir
from xenlike.tools.toolstack_client import ToolstackClient

WORKLOADS = Path(__file__).parent / "workloads"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Host:
    """A xenlike host in its own short run directory (zmq ipc paths must stay short)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="xl-", dir="/tmp"))
        self.run_dir = RunDir(self.path)
        self.hypervisor_pid: int | None = None

    def xl(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``xenlike --run-dir DIR ARGS...`` and return the finished process."""
        result = subprocess.run(
            [sys.executable, "-m", "xenlike", "--run-dir", str(self.path), *args],
            capture_output=True, text=True, timeout=timeout, input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"xenlike {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def up(self, *args: str) -> subprocess.CompletedProcess:
        result = self.xl("up", "-d", "--memory", "1024", *args)
        self.hypervisor_pid = self.run_dir.running_pid()
        return result

    def client(self) -> ToolstackClient:
        return ToolstackClient(self.run_dir, timeout=30)

    def call(self, op: str, **args: Any) -> Any:
        with self.client() as client:
            return client.call(op, **args)

    def domains(self) -> dict[str, dict]:
        return {row["name"]: row for row in self.call("list")}

    def log(self, name: str) -> str:
        path = self.path / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def xs_read(self, path: str) -> str | None:
        try:
            value = self.call("xenstore_read", path=path)
        except Exception:
            return None
        return value.decode() if isinstance(value, bytes) else value

    def processes(self) -> list[psutil.Process]:
        """Every live process of this host: those whose command line names its run directory,
        and their descendants. One pass over the process table, so it stays cheap with
        thousands of guests."""
        children: dict[int, list[psutil.Process]] = {}
        roots = []
        for proc in psutil.process_iter(["cmdline", "status", "ppid"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            children.setdefault(proc.info["ppid"], []).append(proc)
            if str(self.path) in " ".join(proc.info["cmdline"] or []):
                roots.append(proc)
        found: dict[int, psutil.Process] = {}
        pending = roots
        while pending:
            proc = pending.pop()
            if proc.pid not in found:
                found[proc.pid] = proc
                pending.extend(children.get(proc.pid, []))
        return list(found.values())

    def processes_named(self, prefix: str) -> list[psutil.Process]:
        """This host's live processes whose name starts with ``prefix`` (one that exits while
        it is looked at is left out, not an error)."""
        found = []
        for proc in self.processes():
            try:
                if proc.name().startswith(prefix):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def print_logs(self, tail: int = 3000) -> None:
        """Show the end of every log of the host (for a failed test's report)."""
        for log in sorted((self.path / "logs").glob("*.log")):
            print(f"===== {log.name} =====\n{log.read_text(errors='replace')[-tail:]}")

    def teardown(self) -> None:
        if self.run_dir.running_pid() is not None:
            self.xl("down", check=False, timeout=60)
        for proc in self.processes():
            try:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def host(request):
    h = Host()
    try:
        yield h
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            h.print_logs()
        h.teardown()


def write_cfg(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.cfg"
    path.write_text(text)
    return path


def workload(name: str) -> str:
    """The spec of a test workload file in tests/e2e/workloads."""
    return f"{WORKLOADS / name}.py:run"


def console_json(host: Host, name: str, key: str, timeout: float = 10.0) -> dict:
    """The JSON object a test workload printed on its console as ``key {...}``."""
    def find():
        for line in host.log(name).splitlines():
            if line.startswith(key + " "):
                return json.loads(line[len(key) + 1 :])
        return None

    return wait_for(find, timeout, f"{key} on the console of {name}")
