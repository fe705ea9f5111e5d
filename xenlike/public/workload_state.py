"""A guest's report of its workload starting: xenstore keys under its home.

xenlike's own protocol keys, kept here as Xen keeps the keys both ends of a
protocol share in its public headers (``io/xenbus.h``, and
``docs/misc/xenstore-paths.pandoc`` for the guest-writable ones such as
``control/feature-*`` and ``data/*``). The domain builder makes
``~/workload`` the guest's own, as libxl makes ``control/shutdown`` and ``data``
(``libxl_create.c``'s ``rwperm``); the guest kernel writes, the toolstack reads::

    ~/workload/error   the guest's one-line reason it did not start its workload
                       (written first, only with "failed")
    ~/workload/state   "started": the workload function is about to be called
                       "failed":  the kernel could not load it and shuts down
                                  with SHUTDOWN_crash

Each is written once per boot. A guest that dies without writing ``state`` died
before its workload started; the toolstack says so with the domain's exit.
"""

from __future__ import annotations

__all__ = ["WORKLOAD_DIR", "STATE", "ERROR", "STARTED", "FAILED", "ERROR_MAX", "one_line"]

WORKLOAD_DIR = "workload"  # the directory under the home the guest owns
STATE = f"{WORKLOAD_DIR}/state"
ERROR = f"{WORKLOAD_DIR}/error"

# The values of STATE.
STARTED = "started"
FAILED = "failed"

# What ERROR keeps of a reason (a node holds 2048 bytes with its permissions).
ERROR_MAX = 1000


def one_line(text: str) -> str:
    """``text`` as one line of at most ERROR_MAX printable characters, as ERROR holds it.

    The guest writes it so; dom0 reads it so again before it logs or answers with
    it, since a guest may write anything there (newlines that forge log lines,
    terminal escapes).
    """
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= ERROR_MAX else line[: ERROR_MAX - 3] + "..."
