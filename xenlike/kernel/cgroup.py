"""A control group per domain: a memory limit, a process limit, and one call that kills them all.

Linux offers two cgroup interfaces and a host may mix them: controllers bound to
a v1 hierarchy (one mount per controller, ``/sys/fs/cgroup/memory``) are absent
from the v2 tree (``cgroup2``, often ``/sys/fs/cgroup`` or
``/sys/fs/cgroup/unified``). For each limit this module picks the hierarchy
that has its controller: v2 ``memory.max`` and ``pids.max``
(``Documentation/admin-guide/cgroup-v2.rst``), else v1
``memory.limit_in_bytes`` (``cgroup-v1/memory.rst``) and ``pids.max``
(``cgroup-v1/pids.rst``).

A domain's cgroup is made beneath the cgroup the calling process is in, in each
hierarchy used, so it stays inside whatever the host gave the caller. That needs
write access there: root, or a delegated subtree. In v2, a controller must be
enabled in the parent's ``cgroup.subtree_control``, which the kernel refuses
(EBUSY) while the parent itself holds processes, unless it is the root: on such
a host the v2 limits are not available and :func:`probe` says so.

Memory is charged to the cgroup of the process that first touches a page: guest
memory first written by the hypervisor or dom0 is not the guest's.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass, field

from xenlike.kernel.namespaces import JailError, Mechanism

__all__ = ["CgroupError", "Hierarchy", "DomainCgroup", "hierarchies", "probe"]

_CONTROLLERS = ("memory", "pids")


class CgroupError(JailError):
    """A cgroup could not be found, made, limited, joined or removed."""

    mechanism = "cgroup"


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and the calling process's place in it."""

    version: int  # 1 or 2
    mount: str  # where it is mounted, e.g. /sys/fs/cgroup/memory
    controllers: frozenset[str]  # v1: the mount's controllers; v2: those the caller's cgroup offers
    own: str  # the caller's cgroup directory in it

    def writable(self) -> bool:
        """Whether the caller may make cgroups beneath its own one."""
        return os.access(self.own, os.W_OK | os.X_OK)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup and cgroup2 mount, from ``/proc/self/mountinfo``."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            found.append((fields[4], tail[0], set(tail[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller list (``"memory"``, ``"cpu,cpuacct"``; ``""`` for v2) -> the caller's cgroup path."""
    own: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f.read().splitlines():
                _, controllers, path = line.split(":", 2)
                own[controllers] = path
    except (OSError, ValueError):
        pass
    return own


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def hierarchies() -> list[Hierarchy]:
    """Every cgroup hierarchy mounted in the caller's mount namespace, with the caller's cgroup in it. Never raises."""
    own = _own_cgroups()
    found: list[Hierarchy] = []
    for mount, fstype, options in _mounts():
        if fstype == "cgroup2":
            path = os.path.normpath(os.path.join(mount, own.get("", "/").lstrip("/")))
            try:
                controllers = frozenset(_read(os.path.join(path, "cgroup.controllers")).split())
            except OSError:
                controllers = frozenset()
            found.append(Hierarchy(2, mount, controllers, path))
            continue
        controllers = frozenset(options) & {key for entry in own for key in entry.split(",") if key}
        entry = next((e for e in own if e and set(e.split(",")) == set(controllers)), None)
        if controllers and entry is not None:
            path = os.path.normpath(os.path.join(mount, own[entry].lstrip("/")))
            found.append(Hierarchy(1, mount, controllers, path))
    return found


def _can_delegate(hierarchy: Hierarchy, controller: str) -> bool:
    """v2: whether ``controller`` is, or may be, enabled for the children of the caller's cgroup.

    Enabling it in ``cgroup.subtree_control`` is refused while the cgroup holds
    processes itself, unless it is the root (the no-internal-process rule).
    """
    try:
        if controller in _read(os.path.join(hierarchy.own, "cgroup.subtree_control")).split():
            return True
        return (
            os.path.samefile(hierarchy.own, hierarchy.mount)
            or not _read(os.path.join(hierarchy.own, "cgroup.procs")).split()
        )
    except OSError:
        return False


def _hierarchy_for(controller: str, found: list[Hierarchy]) -> Hierarchy | None:
    """The hierarchy where ``controller`` can limit a child of the caller's cgroup: v2 first, then v1."""
    for version in (2, 1):
        for hierarchy in found:
            if hierarchy.version != version or controller not in hierarchy.controllers or not hierarchy.writable():
                continue
            if version == 1 or _can_delegate(hierarchy, controller):
                return hierarchy
    return None


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    except OSError as exc:
        raise CgroupError(exc.errno or errno.EIO, f"writing {value!r} to {path}") from None


@dataclass
class DomainCgroup:
    """A domain's cgroup directories, one per hierarchy used; made by :meth:`create`."""

    name: str
    paths: dict[str, str] = field(default_factory=dict)  # controller ("memory", "pids", "core") -> directory

    @classmethod
    def create(cls, name: str, *, memory_bytes: int | None = None, pids_max: int | None = None) -> DomainCgroup:
        """Make cgroup ``name`` beneath the caller's own, in each hierarchy a limit asked for needs, and set them.

        ``memory_bytes``: v2 ``memory.max`` or v1 ``memory.limit_in_bytes`` (and
        ``memory.memsw.limit_in_bytes``, so swap is no way round it); past it the
        cgroup's OOM killer ends a process. ``pids_max``: ``pids.max``; past it
        ``fork`` gets EAGAIN. A writable v2 hierarchy, if any, is joined too, for
        :meth:`kill`. A limit no writable hierarchy can set is a
        :class:`CgroupError` (ENOTSUP), and what was made is removed. A
        directory left by an earlier run under the same name is reused: make
        ``name`` unique to the hypervisor (``xenlike-<pid>-d3``).
        """
        if not name or "/" in name or name in (".", ".."):
            raise CgroupError(errno.EINVAL, f"{name!r} is not a cgroup name")
        group = cls(name)
        found = hierarchies()
        try:
            for controller, value in (("memory", memory_bytes), ("pids", pids_max)):
                if value is not None:
                    group._limit(controller, value, found)
            core = next((h for h in found if h.version == 2 and h.writable()), None)
            if core is not None:
                group.paths["core"] = group._make(core)
        except BaseException:
            group.remove()
            raise
        return group

    def _make(self, hierarchy: Hierarchy) -> str:
        path = os.path.join(hierarchy.own, self.name)
        for known in self.paths.values():
            if os.path.dirname(known) == hierarchy.own:
                return known  # a hierarchy that holds two of the controllers asked for
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CgroupError(exc.errno or errno.EIO, f"making {path}") from None
        return path

    def _limit(self, controller: str, value: int, found: list[Hierarchy]) -> None:
        hierarchy = _hierarchy_for(controller, found)
        if hierarchy is None:
            raise CgroupError(errno.ENOTSUP, f"no writable cgroup hierarchy has the {controller} controller")
        path = self.paths[controller] = self._make(hierarchy)
        if hierarchy.version == 2:
            if controller not in _read(os.path.join(hierarchy.own, "cgroup.subtree_control")).split():
                _write(os.path.join(hierarchy.own, "cgroup.subtree_control"), f"+{controller}")
            _write(os.path.join(path, f"{controller}.max"), str(value))
        elif controller == "memory":
            _write(os.path.join(path, "memory.limit_in_bytes"), str(value))
            memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, str(value))
        else:
            _write(os.path.join(path, "pids.max"), str(value))

    def limit(self, *, memory_bytes: int | None = None, pids_max: int | None = None) -> None:
        """Change limits :meth:`create` set, in the directories it made (the caller may be in them by now)."""
        for controller, value in (("memory", memory_bytes), ("pids", pids_max)):
            path = self.paths.get(controller)
            if value is None or path is None:
                continue
            if os.path.exists(os.path.join(path, f"{controller}.max")):  # v2
                _write(os.path.join(path, f"{controller}.max"), str(value))
            elif controller == "memory":
                memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
                # v1 refuses a memory limit above the memory+swap one: raise that first, lower it last.
                if os.path.exists(memsw) and value > int(_read(memsw)):
                    _write(memsw, str(value))
                _write(os.path.join(path, "memory.limit_in_bytes"), str(value))
                if os.path.exists(memsw):
                    _write(memsw, str(value))
            else:
                _write(os.path.join(path, "pids.max"), str(value))

    @classmethod
    def existing(cls, name: str, found: list[Hierarchy] | None = None) -> DomainCgroup:
        """The directories named ``name`` beneath the caller's cgroups that exist now (to remove them);
        ``found`` is :func:`hierarchies`, when the caller looked them up once for many names."""
        group = cls(name)
        for hierarchy in hierarchies() if found is None else found:
            path = os.path.join(hierarchy.own, name)
            if os.path.isdir(path):
                group.paths[f"v{hierarchy.version}:{','.join(sorted(hierarchy.controllers))}"] = path
        return group

    @staticmethod
    def names(prefix: str) -> set[str]:
        """The names of the cgroups beneath the caller's own that start with ``prefix``, in any hierarchy."""
        found: set[str] = set()
        for hierarchy in hierarchies():
            try:
                found.update(n for n in os.listdir(hierarchy.own) if n.startswith(prefix))
            except OSError:
                pass
        return found

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into every directory of this cgroup (``cgroup.procs``)."""
        for path in sorted(set(self.paths.values())):
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def pids(self) -> set[int]:
        """The processes in this cgroup (any of its directories). Never raises."""
        found: set[int] = set()
        for path in set(self.paths.values()):
            try:
                found.update(int(p) for p in _read(os.path.join(path, "cgroup.procs")).split())
            except (OSError, ValueError):
                pass
        return found

    def kill(self) -> None:
        """SIGKILL every process in the cgroup: v2 ``cgroup.kill`` if joined, else each pid of ``cgroup.procs``."""
        core = self.paths.get("core")
        if core is not None and os.path.exists(os.path.join(core, "cgroup.kill")):
            _write(os.path.join(core, "cgroup.kill"), "1")
            return
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        """Remove every directory made; EBUSY (a :class:`CgroupError`) while a process is still in one."""
        for controller, path in sorted(self.paths.items()):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CgroupError(exc.errno or errno.EIO, f"removing {path}") from None
            del self.paths[controller]


def probe() -> Mechanism:
    """Which per-domain limits a writable cgroup hierarchy gives here, for ``xenlike info``. Never raises."""
    found = hierarchies()
    limits = []
    for controller in _CONTROLLERS:
        hierarchy = _hierarchy_for(controller, found)
        if hierarchy is not None:
            limits.append(f"{controller} (v{hierarchy.version})")
    if not limits:
        return Mechanism("cgroup", False, "no writable cgroup: guest memory and processes are bounded by rlimits only")
    return Mechanism("cgroup", True, "per-domain limits: " + ", ".join(limits))
