"""Kernel samepage merging: the page sharing under ``xenlike up --page-sharing``.

Xen shares identical guest frames through ``mem_sharing`` (``xl sharing``,
``xl info``'s ``sharing_freed_memory``/``sharing_used_memory``); KVM hosts do it
with the kernel's KSM, as VMware ESX did with transparent page sharing. Here a
domain is a process forked from the zygote, and most of what an idle guest owns
alone is pages the interpreter copied on write, the same bytes in every guest
(reference counts moved by the same amounts, the same bytecode quickened).
``ksmd`` finds pages of equal content and maps one write-protected copy for all.

What this module uses of the kernel (Documentation/admin-guide/mm/ksm.rst):

* ``prctl(PR_SET_MEMORY_MERGE, 1)`` (Linux 6.4): every anonymous mapping of the
  calling process is mergeable, now and later, and the setting is inherited
  across ``fork``: set in the zygote, it covers every domain;
* ``/sys/kernel/mm/ksm/``: ``run`` (1 while ``ksmd`` merges), ``pages_to_scan``
  and ``sleep_millisecs`` (how fast it scans), ``pages_shared`` (frames that hold
  shared pages) and ``pages_sharing`` (the mappings of them beyond the first: the
  frames saved), ``full_scans``;
* ``/proc/PID/ksm_merging_pages`` (Linux 5.19): the process's pages that are
  mapped to a shared frame.

Sharing costs ``ksmd``'s CPU, and it is a side channel between guests: a write to
a shared page takes a copy-on-write fault that a guest can time, so a guest can
learn whether another holds a page it guesses (the "memory deduplication"
attacks). That is why it is off unless asked for.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import time
from dataclasses import dataclass

__all__ = [
    "KSM_DIR",
    "KsmError",
    "KsmCounters",
    "Ksmd",
    "available",
    "counters",
    "merge_this_process",
    "this_process_merges",
    "merging_pages",
    "others_merging",
]

KSM_DIR = "/sys/kernel/mm/ksm"
PR_SET_MEMORY_MERGE = 67  # include/uapi/linux/prctl.h
PR_GET_MEMORY_MERGE = 68
# When xenlike starts ksmd itself: pages per wake-up and the sleep between (the kernel's defaults are
# 100 and 20 ms, 20 MB/s, which takes minutes over a thousand guests' interpreters).
SCAN_PAGES = 1000
SCAN_SLEEP_MS = 20
SETTINGS = ("run", "pages_to_scan", "sleep_millisecs")  # what xenlike may change, and puts back
SAVED_PATH = "/run/xenlike-ksmd.json"  # the settings a xenlike host found before it started ksmd

_libc = ctypes.CDLL(None, use_errno=True)


class KsmError(OSError):
    """Page sharing cannot be had here; the message names what is missing and what to do."""


@dataclass(frozen=True)
class KsmCounters:
    """``/sys/kernel/mm/ksm``'s counters, machine-wide (every process that uses KSM)."""

    running: bool
    pages_shared: int  # frames holding shared pages: Xen's sharing_used_frames
    pages_sharing: int  # mappings of those frames beyond the first: Xen's sharing_freed_pages
    full_scans: int


def available() -> str | None:
    """None if this kernel gives process-wide KSM; else why not, in one line."""
    if not os.path.isdir(KSM_DIR):
        return f"this kernel has no KSM ({KSM_DIR} is missing: CONFIG_KSM)"
    current = _libc.prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0)
    if current < 0:
        why = os.strerror(ctypes.get_errno())
        return f"this kernel has no process-wide KSM (PR_GET_MEMORY_MERGE: {why}; it needs Linux 6.4)"
    return None


def merge_this_process(enabled: bool = True) -> None:
    """``PR_SET_MEMORY_MERGE``: make (or stop making) every anonymous page of this process mergeable.

    The setting is inherited by children forked afterwards; clearing it unmerges
    this process's pages. Raises :class:`KsmError` if the kernel refuses.
    """
    if _libc.prctl(PR_SET_MEMORY_MERGE, 1 if enabled else 0, 0, 0, 0) != 0:
        code = ctypes.get_errno() or errno.EINVAL
        raise KsmError(code, f"prctl(PR_SET_MEMORY_MERGE, {int(enabled)}): {os.strerror(code)}")


def this_process_merges() -> bool:
    """``PR_GET_MEMORY_MERGE``: whether this process's pages are mergeable (False where the kernel cannot say)."""
    return _libc.prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) == 1


def counters() -> KsmCounters:
    """The machine's KSM counters now (all zero where the kernel has no KSM)."""
    if not os.path.isdir(KSM_DIR):
        return KsmCounters(False, 0, 0, 0)
    return KsmCounters(
        running=_read_int("run") == 1,
        pages_shared=_read_int("pages_shared"),
        pages_sharing=_read_int("pages_sharing"),
        full_scans=_read_int("full_scans"),
    )


def merging_pages(pid: int) -> int:
    """``/proc/PID/ksm_merging_pages``: pages of process ``pid`` mapped to a shared frame (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/ksm_merging_pages", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


class Ksmd:
    """``ksmd`` for the life of a host: started if it is not running, and put back as it was at :meth:`restore`.

    Starting it writes ``run`` (root only), and then also the scan rate
    (:data:`SCAN_PAGES` per :data:`SCAN_SLEEP_MS`). A ksmd that already runs is
    left as its owner tuned it. Several hosts may share one ksmd: the settings
    found by the first are kept in :data:`SAVED_PATH`, and whichever host stops
    last, with no other process on the machine still asking for merging, puts
    them back. A host that was killed leaves the file for the next one to finish.
    """

    def __init__(self, saved_path: str | None = None) -> None:
        self.saved_path = saved_path or SAVED_PATH

    def ensure_running(self) -> bool:
        """Make sure ksmd merges; True if this call started it. :class:`KsmError` if it is off and cannot be started."""
        if _read_int("run") == 1:
            return False
        try:
            found = {name: _read(name) for name in SETTINGS}
            if not os.path.exists(self.saved_path):  # else a host that was killed saved the settings before it
                _write_file(self.saved_path, json.dumps(found))
            _write("pages_to_scan", str(SCAN_PAGES))
            _write("sleep_millisecs", str(SCAN_SLEEP_MS))
            _write("run", "1")
        except OSError as exc:
            self.restore(wait_s=0)
            raise KsmError(
                exc.errno or errno.EPERM,
                f"ksmd is not running and cannot be started ({exc.filename}: {exc.strerror}); "
                f"run as root, or `echo 1 > {os.path.join(KSM_DIR, 'run')}` first",
            ) from None
        return True

    def restore(self, wait_s: float = 2.0) -> bool:
        """Put back what a xenlike host changed, once no other process merges (our dying domains get
        ``wait_s`` to go); True if it did. ``run`` goes last, so nothing scans at the wrong rate."""
        try:
            with open(self.saved_path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return False  # no xenlike host started ksmd: it is its owner's
        deadline = time.monotonic() + wait_s
        while others_merging():
            if time.monotonic() >= deadline:
                return False  # another host still shares pages: the last one to stop puts ksmd back
            time.sleep(0.05)
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            if isinstance(saved, dict) and isinstance(saved.get(name), str):
                try:
                    _write(name, saved[name])
                except OSError:
                    pass  # as it is: nothing better to do on the way out
        try:
            os.unlink(self.saved_path)
        except OSError:
            pass
        return True


def others_merging() -> bool:
    """Whether any process but this one has asked for all its pages to be merged (``ksm_merge_any``)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/ksm_stat", "rb") as f:
                if b"ksm_merge_any: yes" in f.read():
                    return True
        except OSError:
            continue  # gone, or not ours to read
    return False


def _read(name: str) -> str:
    with open(os.path.join(KSM_DIR, name)) as f:
        return f.read().strip()


def _read_int(name: str) -> int:
    try:
        return int(_read(name))
    except (OSError, ValueError):
        return 0


def _write(name: str, value: str) -> None:
    _write_file(os.path.join(KSM_DIR, name), value)


def _write_file(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
