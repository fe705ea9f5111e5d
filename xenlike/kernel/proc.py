"""What every xenlike process sets up about itself: prctl(2) settings and its log file.

A domain, the zygote, a back-end worker and the hypervisor are each a Linux
process; these are the few calls that make one behave as its role needs: a
``comm`` name ``ps`` shows (``xl-d3-web``), death with its parent
(``PR_SET_PDEATHSIG``), adopting orphaned descendants (``PR_SET_CHILD_SUBREAPER``),
and log records in its file of the run directory.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import random
import resource
import signal
import threading

__all__ = [
    "close_fds_except",
    "set_process_name",
    "die_with_parent",
    "become_subreaper",
    "log_to_file",
    "LOG_FORMAT",
    "raise_fd_limit",
    "FdBudget",
    "fork_single_threaded",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_TASK_COMM_LEN = 16  # the kernel keeps 15 bytes of a name and a NUL
_libc = ctypes.CDLL(None, use_errno=True)
# A PyDLL keeps the GIL across the call, as os.fork does: the child starts holding it.
_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def set_process_name(name: str) -> None:
    """Set the kernel's name for this process (``/proc/PID/comm``, 15 bytes)."""
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[: _TASK_COMM_LEN - 1]), 0, 0, 0)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def become_subreaper() -> None:
    """Have this process, not init, adopt (and so reap) its orphaned descendants."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def log_to_file(path: str | os.PathLike[str], fmt: str = LOG_FORMAT) -> None:
    """Send this process's log records, INFO and up, to ``path`` and nowhere else.

    The handlers a forked process inherited are dropped without being closed:
    their files belong to the parent (a back-end worker has already closed its
    copies of their fds).
    """
    logging.root.handlers.clear()
    logging.basicConfig(filename=path, level=logging.INFO, format=fmt)


def fork_single_threaded() -> int:
    """``fork(2)`` from a single-threaded process, without the interpreter's at-fork hooks; as ``os.fork``.

    ``os.fork`` runs the hooks that ``threading``, ``logging`` and ``random``
    register (``os.register_at_fork``): they make the child's locks and thread
    records consistent after a fork from a process with other threads. In the
    child they are Python code run on the parent's objects, and each page they
    touch is copied: some 190 pages in a child that does nothing else, some 60 of
    them pages an idle guest would not otherwise touch (CPython 3.11). From a
    process with one thread, holding no lock, there is nothing for them to
    repair, so this forks through libc alone, keeping glibc's own fork handlers,
    and does in the child the one hook that matters there: reseeding ``random``,
    so no two children share its sequence. Raises
    RuntimeError if another thread runs, OSError if fork fails.
    """
    if threading.active_count() != 1:
        raise RuntimeError(f"fork_single_threaded with {threading.active_count()} threads running")
    pid = _libc_holding_gil.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork: {os.strerror(err)}")
    if pid == 0:
        # What random's at-fork hook does (Random.seed()), in C: fresh OS entropy.
        generator = random._inst
        super(random.Random, generator).seed()
        generator.gauss_next = None  # type: ignore[attr-defined]
    return pid


def raise_fd_limit() -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one: each domain costs the hypervisor and dom0 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class FdBudget:
    """A process's file descriptors against its RLIMIT_NOFILE, checked before each domain it takes on.

    ``per_domain`` is what one domain costs the process. Since Linux 6.2 the
    kernel gives the count as the size of ``/proc/self/fd`` (one ``stat``, 53 us
    with 16,000 fds open), and every create is checked against the real count.
    On an older kernel the count means listing that directory (53 ms with
    16,000 entries, the hypervisor's with 2,000 guests), so it is listed only
    when an estimate, the last count plus the cost of each create since (an
    over-estimate: destroys are not subtracted), comes within :meth:`slack` of
    the limit, or every :attr:`RECOUNT_EVERY` creates.
    """

    RECOUNT_EVERY = 64
    # Kept free below the limit for what the process opens besides domains, for a while:
    # the fd that counting itself opens, a client's socket, a back-end worker's channel.
    RESERVE = 16

    def __init__(self, per_domain: int, where: str) -> None:
        self.per_domain = per_domain
        self.where = where
        self.counts_cheaply = self._stated_fds() > 0
        self._estimate = self.open_fds()
        self._since_count = 0

    @staticmethod
    def limit() -> int:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    @classmethod
    def open_fds(cls) -> int:
        """How many fds this process holds: the kernel's count where it gives one, else a listing's."""
        return cls._stated_fds() or cls._listed_fds()

    @staticmethod
    def _stated_fds() -> int:
        """``/proc/self/fd``'s size: the count of open fds since Linux 6.2 (fs/proc/fd.c); 0 before."""
        try:
            return os.stat("/proc/self/fd").st_size
        except OSError:
            return 0

    @classmethod
    def _listed_fds(cls) -> int:
        """The fds listed in /proc/self/fd (listing it opens one more, not counted); at the limit
        itself, where that one cannot be opened, the limit."""
        try:
            return len(os.listdir("/proc/self/fd")) - 1
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return cls.limit()
            raise

    def headroom(self) -> int:
        """How many more domains this process's fds allow."""
        return max(0, (self.limit() - self.RESERVE - self.open_fds()) // self.per_domain)

    def slack(self, limit: int) -> int:
        """The fds kept in hand for what is opened besides domains between two counts."""
        return max(self.RECOUNT_EVERY, limit // 32)

    def refusal(self, name: str) -> str | None:
        """Why creating ``name`` would pass the limit, in one line; None if it fits."""
        limit = self.limit()
        self._since_count += 1
        fits_estimate = self._estimate + self.per_domain <= limit - self.slack(limit)
        if not self.counts_cheaply and fits_estimate and self._since_count < self.RECOUNT_EVERY:
            self._estimate += self.per_domain
            return None
        held = self.open_fds()
        self._estimate, self._since_count = held + self.per_domain, 0
        if held + self.per_domain + self.RESERVE <= limit:
            return None
        return (
            f"creating {name!r} needs about {self.per_domain} more file descriptors in {self.where} "
            f"but it holds {held} of its {limit} (RLIMIT_NOFILE, {self.RESERVE} kept in reserve); raise the "
            "host's limit (ulimit -n) "
            "before xenlike up, or destroy a domain"
        )


def close_fds_except(keep: list[int]) -> None:
    """Close every fd above stderr but ``keep`` (a forked child that must hold only what it was given)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own fd, already gone
