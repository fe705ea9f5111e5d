"""Guest workloads: how a domain finds the Python function it runs, and what it gets.

A workload is named in the domain config by ``workload =``:

* a name registered in the entry-point group ``xenlike.workloads``
  (``[project.entry-points."xenlike.workloads"] web = "mypkg.web:run"``),
* ``module:function``, imported from the guest's ``sys.path``,
* ``path/to/file.py:function``, loaded from that file.

The function is called with one :class:`WorkloadContext`. Returning is a
poweroff; an exception is a crash (``on_crash`` applies). ``docs/guest-api.md``
documents the context and everything it hands out.

For save, restore and migration a workload may carry hooks as attributes of its
function: ``run.suspend = f`` (``f(ctx) -> bytes``: what it keeps outside guest
memory; raising :class:`SuspendRefused` refuses the suspend), ``run.resume = g``
(``g(ctx, state)``: called with those bytes when the guest runs again, after a
restore before ``run`` is called again with ``ctx.resumed`` set), and
``run.suspendable = False`` for one that can never be suspended.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xenlike.kernel.events import EventLoop
    from xenlike.kernel.gnttab import GrantTable
    from xenlike.kernel.hypercall import HypercallClient
    from xenlike.kernel.memory import GuestMemory, PageAllocator

    from .console import ConsoleFront
    from .vchan import VchanDriver
    from .xenbus import XenbusClient

__all__ = [
    "ENTRY_POINT_GROUP",
    "WorkloadError",
    "SuspendRefused",
    "WorkloadContext",
    "load_workload",
    "available_workloads",
]

ENTRY_POINT_GROUP = "xenlike.workloads"

Workload = Callable[["WorkloadContext"], Any]


class WorkloadError(Exception):
    """The workload named in the config cannot be found or loaded."""


class SuspendRefused(Exception):
    """Raised by a workload's ``suspend`` hook: it cannot be suspended now; the message says why."""


@dataclass
class WorkloadContext:
    """What a workload is given: its domain, devices, xenstore, memory and a shutdown signal.

    ``shutdown`` is set when the toolstack asks the domain to shut down
    (``xenlike shutdown``/``reboot``: ``control/shutdown`` in xenstore);
    ``shutdown_reason`` then says which. A workload should return soon after.

    ``hypercall`` and ``events`` are the kernel's own hypercall channel and event
    loop, for workloads that experiment below the driver level (binding event
    channels, granting pages); the hypervisor checks everything they do.

    ``vcpus`` are the domain's vCPUs 1..N-1 (``vcpus = N`` in the config; the
    workload itself runs on vCPU 0): ``ctx.vcpus[0].submit(f, *args)`` runs a
    module-level function there and returns a call whose ``result()`` waits.

    ``args`` are the config's ``workload_args``; ``config`` is what the builder
    handed the guest (``name``, ``uuid``, ``workload``, ``workload_args``,
    ``extra``, ``vcpus``, ``disks``), not the whole xl.cfg. ``disks`` maps each
    connected disk's vdev to its ``domu.blkfront.BlockDevice``, live: hotplugged
    disks appear, detached ones go. ``net`` maps each connected vif's interface
    name (``eth0``) to its ``domu.netfront.NetInterface`` (``name``, ``mac``,
    ``ip``, ``mtu``, ``stats``), live as ``disks``; the workload reaches the
    network with Python's own ``socket`` module, through the guest's own stack;
    ``log`` is the logger ``workload.<name>``, on the console. ``vchan`` opens
    byte streams to other domains (``ctx.vchan.listen(port)``,
    ``ctx.vchan.connect(domain, port)``), as far as dom0's policy allows.

    ``resumed`` is True when the guest was restored from a save or a migration:
    its memory is what it was at the suspend, and the function runs again on it.
    """

    name: str
    domid: int
    args: list[str]
    config: dict[str, Any]
    xenstore: XenbusClient
    memory: GuestMemory
    pages: PageAllocator
    grant_table: GrantTable
    console: ConsoleFront
    hypercall: HypercallClient
    events: EventLoop
    shutdown: threading.Event = field(default_factory=threading.Event)
    shutdown_reason: str | None = None
    disks: dict[str, Any] = field(default_factory=dict)
    net: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("workload"))
    vcpus: list[Any] = field(default_factory=list)
    vchan: VchanDriver | None = None
    resumed: bool = False

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on a shutdown request; True if one came."""
        return self.shutdown.wait(seconds)


@functools.lru_cache(maxsize=1)
def _registered() -> dict[str, importlib.metadata.EntryPoint]:
    # Scanning every installed distribution costs milliseconds: the zygote does it
    # once and each domain inherits the result.
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_workloads() -> dict[str, str]:
    """Registered workload names and the ``module:function`` each stands for."""
    return {name: ep.value for name, ep in _registered().items()}


def load_workload(spec: str) -> Workload:
    """Resolve a workload spec to its function (see the module docstring).

    WorkloadError says in one line why it cannot be: ``workload 'SPEC': ...``,
    with the name meant when the spec is close to one.
    """
    if not spec:
        raise WorkloadError("no workload given")
    if ":" not in spec:
        return _load_registered(spec)
    target, _, function = spec.rpartition(":")
    if target.endswith(".py"):
        module = _load_file(Path(target), spec)
        where = Path(target).name
    else:
        module = _import(target, spec)
        where = f"module {target}"
    obj = getattr(module, function, None)
    if obj is None:
        functions = [
            name for name, value in vars(module).items() if inspect.isfunction(value) and not name.startswith("_")
        ]
        raise WorkloadError(
            f"workload {spec!r}: {where} has no function {function!r}{_did_you_mean(function, functions)}"
        )
    return _callable(obj, spec)


def _load_registered(name: str) -> Workload:
    """A name of the ``xenlike.workloads`` group; a mistyped one is told the name it is like."""
    ep = _registered().get(name)
    if ep is None:
        known = sorted(available_workloads())
        listed = f"registered: {', '.join(known) or 'none'}"
        meant = _did_you_mean(name, known)
        if meant:
            raise WorkloadError(f"workload {name!r} is not registered{meant} ({listed})")
        raise WorkloadError(
            f"workload {name!r} is not registered ({listed}); name one of them, "
            "or give module:function or path/to/file.py:function"
        )
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:
        raise WorkloadError(
            f"workload {name!r} (registered as {ep.value}): loading it raised {_exception_line(exc)}"
        ) from exc
    return _callable(obj, name)


def _import(target: str, spec: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise WorkloadError(f"workload {spec!r}: no module named {target!r} on the guest's sys.path") from exc
        raise WorkloadError(f"workload {spec!r}: importing {target} raised {_exception_line(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise WorkloadError(f"workload {spec!r}: importing {target} raised {_exception_line(exc)}") from exc


def _load_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise WorkloadError(f"workload {spec!r}: no such file")
    module_spec = importlib.util.spec_from_file_location(f"workload_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise WorkloadError(f"workload {spec!r}: {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise WorkloadError(f"workload {spec!r}: loading {path.name} raised {_exception_line(exc)}") from exc
    return module


def _exception_line(exc: BaseException) -> str:
    """``Type: message`` on one line, as the last line of a traceback names an exception."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _did_you_mean(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _callable(obj: Any, spec: str) -> Workload:
    if not callable(obj):
        raise WorkloadError(f"workload {spec!r} is not a function")
    return obj
