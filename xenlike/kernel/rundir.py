"""A host's run directory: where its lock, sockets, pid file and logs live.

Chosen with ``--run-dir`` or ``XENLIKE_RUN_DIR``; by default a per-user directory
(``$XDG_RUNTIME_DIR/xenlike``, else ``/tmp/xenlike-<uid>``). Several hosts run side
by side with different run directories; one run directory has one host at most,
which :class:`HostLock` enforces. Layout::

    hypervisor.lock    flock(2)ed by the running hypervisor, which writes its pid in it
    hypervisor.pid     pid of the running hypervisor
    toolstack.sock     dom0's toolstack API (zmq ipc)
    console.sock       console output stream (zmq ipc, PUB)
    logs/hypervisor.log, logs/dom0.log, logs/<domain>.log
    guest-etc/hosts, guest-etc/resolv.conf    the guests' own, bound over the host's in each guest (the jail)
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

__all__ = ["RunDir", "HostLock", "HostRunning", "default_run_dir"]

SOCKETS = ("toolstack.sock", "console.sock")
# How long a hypervisor keeps trying a lock that is held: a CLI checking the lock
# (``RunDir.check_unlocked``) holds it for a moment, a host for its whole life.
LOCK_GRACE_S = 0.5
# How long a refused hypervisor or CLI waits for the holder to write its pid in the lock file.
HOLDER_PID_WAIT_S = 1.0


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

    def ensure(self) -> RunDir:
        """Create the directory if need be (mode 0700: its sockets are the host's controls) and its ``logs``."""
        if not self.path.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)  # not the umask's: nobody but its owner may reach the toolstack
        (self.path / "logs").mkdir(exist_ok=True)
        return self

    @property
    def pid_file(self) -> Path:
        return self.path / "hypervisor.pid"

    @property
    def lock_path(self) -> Path:
        return self.path / "hypervisor.lock"

    def take_lock(self) -> HostLock:
        """Lock the run directory for this process's life (the hypervisor's first act); HostRunning if held."""
        return HostLock.take(self)

    def check_unlocked(self) -> None:
        """Raise HostRunning if a host holds the run directory's lock (``up`` asks before it starts one).

        The check takes the lock and lets it go at once; a hypervisor starting at
        that moment waits :data:`LOCK_GRACE_S` for it rather than take the check
        for a host.
        """
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if not _try_flock(fd):
                raise HostRunning(self.path, _holder_pid(fd))
        finally:
            os.close(fd)  # and with it the lock, if this took it

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


class HostRunning(Exception):
    """The run directory's lock is held: a host runs there (its hypervisor's pid, when it wrote it)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(f"a host already runs in {path}{holder}; `xenlike down` stops it, or --run-dir picks another")


class HostLock:
    """A run directory's ``hypervisor.lock``, ``flock``ed (LOCK_EX) by its hypervisor for as long as it lives.

    One run directory, one host: a second hypervisor is refused, whether it
    starts long after the first or at the same instant. The lock belongs to
    the open file, so it goes when the hypervisor does, however it ends, and
    no pid file can outlive it. The fd is opened ``O_CLOEXEC`` and closed in
    every child forked after it was taken (``os.register_at_fork``), so the
    zygote and the domains, which outlive the hypervisor by a moment
    (``PR_SET_PDEATHSIG``), never hold the host's lock: a child's close leaves
    the parent's lock alone (``flock(2)``: it is released when *every* fd of the
    open file is closed), and only the hypervisor's own end releases it.
    The file is never removed: a process that opened it before the removal
    would lock a file nobody else sees.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        os.register_at_fork(after_in_child=self._close_in_child)

    @classmethod
    def take(cls, run_dir: RunDir, grace_s: float = LOCK_GRACE_S) -> HostLock:
        """Take ``run_dir``'s lock and write this process's pid in it; HostRunning if another process holds it."""
        run_dir.ensure()
        fd = os.open(run_dir.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + grace_s
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                pid = _holder_pid(fd)
                os.close(fd)
                raise HostRunning(run_dir.path, pid)
            time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, run_dir.lock_path)

    def _close_in_child(self) -> None:
        # A forked child's copy of the fd, closed once: its own children inherit fd = -1.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Let the lock go (the hypervisor is exiting; its exit would release it too)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _try_flock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False if another open file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _holder_pid(fd: int) -> int | None:
    """The pid the lock's holder wrote in the file (``fd``, the same file), once it has written it.

    The pid counts only if that process has the file open: until a holder that
    has just taken the lock writes its own, the file holds the previous host's.
    None if no such pid appears within :data:`HOLDER_PID_WAIT_S`.
    """
    deadline = time.monotonic() + HOLDER_PID_WAIT_S
    lock = os.fstat(fd)
    while True:
        try:
            pid = int(os.pread(fd, 32, 0).decode().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            pid = None
        if pid is not None and _has_open(pid, lock):
            return pid
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _has_open(pid: int, file: os.stat_result) -> bool:
    """Whether process ``pid`` holds an fd of ``file`` (the same device and inode)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (file.st_dev, file.st_ino):
            return True
    return False


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
