"""A host's run directory: where its sockets, pid file and logs live.

Chosen with ``--run-dir`` or ``XENLIKE_RUN_DIR``; by default a per-user directory
(``$XDG_RUNTIME_DIR/xenlike``, else ``/tmp/xenlike-<uid>``). Several hosts run side
by side with different run directories. Layout::

    hypervisor.pid     pid of the running hypervisor
    toolstack.sock     dom0's toolstack API (zmq ipc)
    console.sock       console output stream (zmq ipc, PUB)
    logs/hypervisor.log, logs/dom0.log, logs/<domain>.log
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RunDir", "default_run_dir"]

SOCKETS = ("toolstack.sock", "console.sock")


def default_run_dir() -> Path:
    if os.environ.get("XENLIKE_RUN_DIR"):
        return Path(os.environ["XENLIKE_RUN_DIR"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "xenlike"
    return Path(f"/tmp/xenlike-{os.getuid()}")


class RunDir:
    """Paths inside a run directory, created on first use."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_run_dir()
        self.path = self.path.absolute()

    def ensure(self) -> "RunDir":
        (self.path / "logs").mkdir(parents=True, exist_ok=True)
        return self

    @property
    def pid_file(self) -> Path:
        return self.path / "hypervisor.pid"

    def endpoint(self, name: str) -> str:
        """The zmq address of socket ``name`` (``toolstack`` or ``console``)."""
        return f"ipc://{self.path / (name + '.sock')}"

    def log_path(self, name: str) -> Path:
        self.ensure()
        return self.path / "logs" / f"{name}.log"

    def write_pid(self, pid: int) -> None:
        self.ensure()
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(self.pid_file)

    def remove_pid(self) -> None:
        self.pid_file.unlink(missing_ok=True)

    def running_pid(self) -> int | None:
        """The pid of a live hypervisor for this run directory, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_live_hypervisor(pid) else None

    def clean_sockets(self) -> None:
        for name in SOCKETS:
            (self.path / name).unlink(missing_ok=True)


def _is_live_hypervisor(pid: int) -> bool:
    """Whether ``pid`` is a xenlike hypervisor that has not exited (read from /proc, Linux's own view).

    Plain /proc reads rather than psutil: every CLI verb asks this, and importing
    psutil would cost each one more than the rest of its work.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and b"xenlike.hypervisor" in cmdline
