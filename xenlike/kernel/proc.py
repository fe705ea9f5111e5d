"""What every xenlike process sets up about itself: prctl(2) settings and its log file.

A domain, the zygote, a back-end worker and the hypervisor are each a Linux
process; these are the few calls that make one behave as its role needs: a
``comm`` name ``ps`` shows (``xl-d3-web``), death with its parent
(``PR_SET_PDEATHSIG``), adopting orphaned descendants (``PR_SET_CHILD_SUBREAPER``),
and log records in its file of the run directory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

__all__ = ["set_process_name", "die_with_parent", "become_subreaper", "log_to_file", "LOG_FORMAT"]

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_TASK_COMM_LEN = 16  # the kernel keeps 15 bytes of a name and a NUL
_libc = ctypes.CDLL(None, use_errno=True)

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
