"""The jail around every domU process (after Firecracker's jailer and crosvm's minijail).

In Xen the hardware keeps a guest to what it was given; here the kernel must.
All code in a domU is hostile: it may use its hypercall socket, its memory, its
event-channel fds and the fds of devices assigned to it, and nothing else. The
zygote applies the jail to each shell in two steps, so a create waits for none
of the slow parts:

* :meth:`ShellJail.prepare`, ahead of need, while the shell is still one thread
  and does not know which domain it will be: new network (only ``lo``), mount,
  IPC and UTS namespaces (inside a user namespace of the host's own uid when
  xenlike does not run as root), a private ``/proc`` that hides every other
  process (``hidepid=invisible``; an empty one in a user namespace), the run
  directory hidden under an empty tmpfs, the guests' own ``/etc/hosts`` and
  ``/etc/resolv.conf`` (:func:`write_name_service_files`), and the Landlock
  ruleset of what every Python guest must read (the interpreter, the standard
  library, site-packages, xenlike's guest packages);
* :meth:`ShellJail.enter`, once the boot message names the domain, before any of
  its code runs: the hostname is the domain's name; the workload's own file or
  package is added to the ruleset; rlimits (open files, processes, file size 0,
  no core dumps, address space); as root, a uid and gid of the domain's own
  (``uid_base + domid``) with no supplementary group and no capability, else no
  capability; ``no_new_privs`` and the seccomp filter
  (:func:`xenlike.kernel.seccomp.guest_policy`) on every thread; then Landlock
  (no file written anywhere, only the allowance read, signals and abstract UNIX
  sockets scoped to the domain) on the calling thread. TCP is left to the
  network namespace: a guest's TCP reaches its own loopback and, through its
  vifs, its bridge, and nothing of the host's. It returns
  the same confinement for the shell's other thread, which the guest kernel
  applies on its event-loop thread before it serves anything
  (Landlock binds one thread at a time on this kernel).

What the kernel lacks is left out and said once, at ``up``
(:func:`missing`); :func:`mechanisms` lists every mechanism as on or off for
``xenlike info``. ``up --no-jail`` runs guests without any of this, for
experiments, and says so loudly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import resource
import signal
from dataclasses import dataclass
from importlib import metadata

from xenlike.kernel import cgroup, landlock, namespaces, seccomp
from xenlike.kernel.namespaces import Mechanism
from xenlike.public.start_info import START_INFO_PFN, StartInfo
from xenlike.public.xen import PAGE_SIZE

__all__ = [
    "JailPolicy",
    "ShellJail",
    "mechanisms",
    "missing",
    "jail_report",
    "log_jail",
    "write_name_service_files",
    "DEFAULT_UID_BASE",
]

log = logging.getLogger("xenlike.jail")

# A domain's uid and gid when xenlike runs as root: this plus its domid. Above the
# ranges distributions hand out (and below 2**31), so no host account shares it.
DEFAULT_UID_BASE = 200_000_000
# The limits of one guest. Threads count as processes for RLIMIT_NPROC.
NOFILE = 256
NPROC_BASE, NPROC_PER_VCPU = 32, 16
# Address space beyond the guest's memory: the interpreter, its libraries and heap,
# thread stacks and glibc's per-thread malloc arenas (64 MiB of address space each).
ADDRESS_SPACE_SLACK = 1024 << 20
# What a guest may have resident beyond its memory (the interpreter and its heap), under its cgroup.
CGROUP_MEMORY_SLACK = 256 << 20
WORKLOAD_GROUP = "xenlike.workloads"
CGROUP_PREFIX = "xenlike-"


@dataclass(frozen=True)
class JailPolicy:
    """How the host jails its guests (``xenlike up``'s ``--no-jail`` and ``--jail-uid-base``)."""

    enabled: bool = True
    uid_base: int = DEFAULT_UID_BASE  # used when the host runs as root
    run_dir: str = ""  # hidden from every guest
    available: frozenset[str] = frozenset()  # the mechanisms this kernel gives (:func:`mechanisms`)

    @classmethod
    def probe(cls, *, enabled: bool, uid_base: int, run_dir: str) -> tuple[JailPolicy, list[Mechanism]]:
        """The policy for this host, with what the kernel gives; and the mechanisms, for ``info`` and ``up``."""
        found = mechanisms() if enabled else []
        return cls(enabled, uid_base, run_dir, frozenset(m.name for m in found if m.available)), found

    def has(self, mechanism: str) -> bool:
        return mechanism in self.available

    @property
    def as_root(self) -> bool:
        """Root with the capabilities to give each domain its own uid."""
        return self.has("uid-per-domain")

    def uid_of(self, domid: int) -> int:
        return self.uid_base + domid


def mechanisms() -> list[Mechanism]:
    """Every mechanism of the jail as this kernel and this user give it (``xenlike info``). Never raises."""
    return [
        *namespaces.probe(),
        landlock.probe(),
        cgroup.probe(),
        Mechanism(
            "seccomp",
            seccomp.supported(),
            "a seccomp filter on every guest thread"
            if seccomp.supported()
            else "seccomp unavailable: guests can make any system call",
        ),
    ]


def missing(found: list[Mechanism] | None = None) -> list[str]:
    """One line per mechanism the jail cannot use here (what ``up`` prints once)."""
    return [m.detail for m in (found if found is not None else mechanisms()) if not m.available]


def jail_report(policy: JailPolicy, found: list[Mechanism]) -> dict:
    """What ``xenlike info`` and ``up`` show of the jail: on or off, and each mechanism."""
    return {
        "enabled": policy.enabled,
        "uid_base": policy.uid_base if policy.as_root else None,
        "mechanisms": [[m.name, m.available, m.detail] for m in found],
    }


def log_jail(policy: JailPolicy, found: list[Mechanism]) -> None:
    """Say once, in the hypervisor's log, how guests are jailed and what the kernel lacks."""
    if not policy.enabled:
        log.warning("THE JAIL IS OFF (--no-jail): every guest can reach what this host's user can")
        return
    log.info("guests are jailed: %s", ", ".join(m.name for m in found if m.available))
    for line in missing(found):
        log.warning("jail: %s", line)


@functools.cache
def _base_allowance() -> tuple[tuple[str, int], ...]:
    """What every Python guest must read, computed once in the zygote (it costs a millisecond or two)."""
    return tuple(landlock.python_allowance())


@functools.cache
def _registered_workloads() -> dict[str, str]:
    """Registered workload name -> its module, read once in the zygote."""
    return {ep.name: ep.value.partition(":")[0] for ep in metadata.entry_points(group=WORKLOAD_GROUP)}


# What the guests' seccomp policy refuses that the jail itself still calls once the shell knows its
# domain (bind mounts of the workload's view, the hostname): kept for a second, small filter.
LATE_CALLS = frozenset(
    {
        "mount",
        "umount2",
        "pivot_root",
        "open_tree",
        "move_mount",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "sethostname",
        "setdomainname",
    }
)


@functools.cache
def _seccomp_program(late: bool = False) -> bytes:
    """The guests' seccomp filters, assembled once in the zygote (building one costs a millisecond or more).

    The early one, everything but :data:`LATE_CALLS`, goes on ahead of need with the
    shell still one thread; the late one, those calls alone, once the domain is
    known. The kernel applies both to every call: together they are
    :func:`~xenlike.kernel.seccomp.guest_policy`.
    """
    policy = seccomp.guest_policy(only=LATE_CALLS) if late else seccomp.guest_policy(without=LATE_CALLS)
    return policy.build()


@functools.cache
def _base_view_plan(uid: int) -> dict[str, list[str]]:
    """Where the base allowance needs a covered directory for a guest uid like ``uid`` (computed once)."""
    return _View(uid).plan([path for path, _access in _base_allowance()])


def warm_up(policy: JailPolicy | None = None) -> None:
    """Compute in the zygote, before it forks, what every shell's jail reads.

    Each shell then runs only system calls and code the zygote has already run:
    code first run after the fork would be specialised there, in pages the
    shell then owns alone (CPython 3.11 writes into the bytecode it quickens).
    """
    _base_allowance()
    _registered_workloads()
    if seccomp.supported():
        _seccomp_program()
        _seccomp_program(late=True)
    if policy is not None and policy.as_root:
        _base_view_plan(policy.uid_of(1))
    if policy is not None and policy.has("landlock"):
        os.close(_guest_ruleset().allow_all(_base_allowance()).create())


def _guest_ruleset() -> landlock.Ruleset:
    """A guest's Landlock ruleset: every file-system right, signals and abstract sockets; not TCP.

    A guest's sockets live in its own network namespace, which holds ``lo`` and
    its vifs' ``eth<devid>``: that is the boundary of what its TCP reaches (its
    loopback, its bridge), and a workload serving or fetching over its vif
    needs ``bind``/``connect`` on any port.
    """
    return landlock.Ruleset(tcp=False)


def workload_target(workload: str) -> str | None:
    """The file, package or module name a workload spec reads from (None: nothing beyond the base).

    ``path/to/file.py:function`` is the file, ``module:function`` the module,
    a registered name its entry point's module.
    """
    target = workload.rpartition(":")[0] if ":" in workload else _registered_workloads().get(workload)
    return target or None


def _unsearchable_ancestor(path: str, uid: int) -> str | None:
    """The outermost directory above ``path`` that ``uid`` (owner of nothing there, in no group) cannot enter."""
    current = "/"
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return None
        if st.st_uid != uid and not st.st_mode & 0o001:
            return current
    return None


class _View:
    """The guest's view of directories its uid may not enter (``/root``, say, 0700), where its allowance lies.

    Each such directory is covered with a tmpfs that holds only bind mounts of
    the allowed paths beneath it, so the interpreter and the workload are
    reachable by the guest's uid and nothing else there is. Root only, in the
    guest's mount namespace.
    """

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.covered: set[str] = set()

    def plan(self, paths: list[str]) -> dict[str, list[str]]:
        """Which paths need a covered directory, by that directory (what :meth:`expose` mounts)."""
        by_root: dict[str, list[str]] = {}
        for path in landlock.outermost(paths):
            root = next((c for c in self.covered if path.startswith(c + "/")), None) or _unsearchable_ancestor(
                path, self.uid
            )
            if root is not None:
                by_root.setdefault(root, []).append(path)
        return by_root

    def expose(self, paths: list[str], plan: dict[str, list[str]] | None = None) -> None:
        """Make ``paths`` reachable by the guest's uid (``plan``: computed earlier by :meth:`plan`)."""
        for root, beneath in (plan if plan is not None else self.plan(paths)).items():
            fds = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in beneath]
            try:
                if root not in self.covered:
                    namespaces.mount_tmpfs(root)
                    self.covered.add(root)
                for path, fd in fds:
                    self._bind(root, path, fd)
            finally:
                for _path, fd in fds:
                    os.close(fd)

    def stand_in(self, directory: str) -> None:
        """An empty directory at ``directory`` in the view, if the guest's uid could not reach the real one."""
        root = next((c for c in self.covered if directory.startswith(c + "/")), None) or _unsearchable_ancestor(
            os.path.join(directory, "-"), self.uid
        )
        if root is None:
            return
        if root not in self.covered:
            namespaces.mount_tmpfs(root)
            self.covered.add(root)
        os.makedirs(directory, mode=0o755, exist_ok=True)

    @staticmethod
    def _bind(root: str, path: str, fd: int) -> None:
        target = path
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, mode=0o755, exist_ok=True)
        elif not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
        namespaces.bind_mount(f"/proc/self/fd/{fd}", target)


class ShellJail:
    """One shell's jail: :meth:`prepare` before it starts a thread, :meth:`enter` once it knows its domain."""

    def __init__(self, policy: JailPolicy) -> None:
        self.policy = policy
        self._ruleset_fd = -1
        self._ruleset: landlock.Ruleset | None = None
        # Any guest uid sees the same: the view does not depend on which domain the shell becomes.
        self._view = _View(policy.uid_of(1)) if policy.as_root else None
        self.cgroup: cgroup.DomainCgroup | None = None

    def prepare(self) -> None:
        """The domain-independent part; the shell must be single-threaded (a user namespace requires it)."""
        policy = self.policy
        if policy.has("namespaces"):
            namespaces.enter_guest_namespaces("xenlike-guest", user_namespace=not policy.as_root)
            _use_name_service_files(policy.run_dir)  # before the run dir is hidden and Landlock opens them
            if self._view is not None:
                self._view.expose([], _base_view_plan(self._view.uid))
            if policy.has("private-proc"):
                namespaces.mount_private_proc()
            else:
                namespaces.hide_directory("/proc")  # a user namespace cannot mount the host PID namespace's procfs
            if policy.run_dir:
                namespaces.hide_directory(policy.run_dir)
        os.chdir("/")  # a working directory inside a hidden one would still reach it
        if policy.as_root:
            namespaces.drop_bounding_set()  # the part of dropping the identity that needs no uid yet
        if policy.has("seccomp"):
            seccomp.install(_seccomp_program(), tsync=True)  # sets no_new_privs; later threads inherit it
        else:
            namespaces.no_new_privs()
        if policy.has("cgroup"):
            # Made and joined ahead of need, named for the shell; enter() sets the domain's limits.
            self.cgroup = cgroup.DomainCgroup.create(
                shell_cgroup_name(os.getppid(), os.getpid()), memory_bytes=CGROUP_MEMORY_SLACK, pids_max=NPROC_BASE
            )
            self.cgroup.add(os.getpid())
        if policy.has("landlock"):
            self._ruleset = _guest_ruleset()
            self._ruleset_fd = self._ruleset.allow_all(_base_allowance()).create()

    def enter(self, boot: dict, fds: list[int]) -> None:
        """Confine the calling thread (and every thread as far as the kernel allows) to domain ``boot``.

        ``fds`` are the domain's (``fds[1]`` its memory, whose start info names
        the workload). Afterwards :meth:`confine_thread` must run on each other
        thread before it does anything for the guest. Raises OSError (a
        :class:`~xenlike.kernel.namespaces.JailError` naming the step) if a step fails:
        the shell must then exit rather than run the guest unconfined.
        """
        domid, name = boot["domid"], boot["name"]
        if self.policy.has("namespaces"):
            namespaces.set_hostname(name)
        if self._ruleset is not None:
            target = workload_target(str(_start_info(fds[1]).image.get("workload", "idle")))
            if target is not None:
                allowance = landlock.workload_allowance(target)
                if self._view is not None:
                    self._view.expose([path for path, _access in allowance])
                    if not allowance and os.sep in target:
                        # A workload file that does not exist: the guest must find it missing (ENOENT), as
                        # it is, rather than out of reach (EACCES) in a directory its uid may not enter.
                        self._view.stand_in(os.path.dirname(os.path.abspath(target)))
                self._ruleset.add_rules(self._ruleset_fd, allowance)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG instead
        vcpus = int(boot.get("vcpus", 1))
        memory = int(boot["nr_frames"]) * PAGE_SIZE
        if self.cgroup is not None:
            self.cgroup.limit(memory_bytes=memory + CGROUP_MEMORY_SLACK, pids_max=NPROC_BASE + NPROC_PER_VCPU * vcpus)
        namespaces.set_rlimits(
            # Never above the host's hard limit: raising it is not the guest's to do (EPERM once confined).
            nofile=min(NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
            nproc=NPROC_BASE + NPROC_PER_VCPU * vcpus,
            address_space=memory + ADDRESS_SPACE_SLACK,
            fsize=int(boot.get("file_size_limit", 0)),  # writes only within a passthrough image, if it has one
            core=0,
        )
        if self.policy.as_root:
            uid = self.policy.uid_of(domid)
            namespaces.drop_identity(uid, uid, bounding_dropped=True)
        else:
            namespaces.drop_capabilities()
        if self.policy.has("seccomp"):
            seccomp.install(_seccomp_program(late=True), tsync=True)  # the mounts and names are done
        self.confine_thread()

    def confine_thread(self) -> None:
        """Landlock on the calling thread (the kernel binds one thread at a time); a no-op without Landlock."""
        if self._ruleset_fd >= 0:
            landlock.restrict_self(self._ruleset_fd)


# Where the zygote writes the guests' name-service files, in the run directory (which every guest has hidden).
GUEST_ETC = "guest-etc"
# A guest's /etc/hosts: its loopback names. A domain's own name is its hostname; other domains have addresses
# of their vifs' choosing, not names a file written before they exist could know.
GUEST_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# A guest's /etc/resolv.conf. The host's would send a guest's lookups (Python's http.server asks for the
# fully qualified name of its own host) out of its vif towards the host's resolver, an address no guest may
# reach: the packets die in dom0's namespace and the lookup waits out the resolver's timeouts (10 s). The
# guest's own loopback refuses at once.
GUEST_RESOLV_CONF = (
    "# A xenlike guest has no DNS: a name that /etc/hosts lacks is asked of the guest's own loopback,\n"
    "# where nothing answers, so no lookup leaves the guest.\n"
    "nameserver 127.0.0.1\n"
)
_NAME_SERVICE_FILES = (("hosts", "/etc/hosts", GUEST_HOSTS), ("resolv.conf", "/etc/resolv.conf", GUEST_RESOLV_CONF))


def write_name_service_files(run_dir: str) -> None:
    """Write the guests' ``/etc/hosts`` and ``/etc/resolv.conf`` into ``run_dir`` (the zygote, once, before it forks).

    Every guest's mount namespace has them bound over the host's (:meth:`ShellJail.prepare`), read-only.
    """
    directory = os.path.join(run_dir, GUEST_ETC)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    for name, _target, text in _NAME_SERVICE_FILES:
        path = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a host before this one left it read-only, which only root could open to write
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)


def _use_name_service_files(run_dir: str) -> None:
    """Bind the files :func:`write_name_service_files` wrote over the host's, in this mount namespace.

    A host file that does not exist is left so: the C library's defaults are then the loopback's too.
    """
    if not run_dir:
        return
    for name, target, _text in _NAME_SERVICE_FILES:
        source = os.path.join(run_dir, GUEST_ETC, name)
        if os.path.exists(source) and os.path.exists(target):
            namespaces.bind_mount(source, target, noexec=True)


# What a guest's environment keeps of the host's: the locale (so text decodes the same). Nothing else of
# whoever ran `xenlike up` (paths, tokens, credentials in variables) is the guest's to see.
GUEST_ENVIRONMENT_KEPT = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")


def use_guest_environment() -> dict[str, str]:
    """Give this process a guest's environment (``os.environ`` and the C ``environ`` alike); returns the one it had.

    The zygote calls it once, before it forks, so every shell starts with the
    guest's environment rather than each rewriting its own copy of the host's
    (with CPython 3.11 that rewrite copies on write some 60 pages a guest).
    dom0, forked from the same zygote, puts the host's back
    (:func:`restore_environment`).
    """
    host = dict(os.environ)
    kept = {key: host[key] for key in GUEST_ENVIRONMENT_KEPT if key in host}
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": "/", **kept})
    return host


def restore_environment(environment: dict[str, str]) -> None:
    """Put back the environment :func:`use_guest_environment` returned."""
    os.environ.clear()
    os.environ.update(environment)


def shell_cgroup_name(zygote_pid: int, shell_pid: int) -> str:
    """The cgroup of a jailed shell, unique to its zygote (several hosts share a machine)."""
    return f"{CGROUP_PREFIX}{zygote_pid}-s{shell_pid}"


def remove_cgroups(names: set[str]) -> set[str]:
    """Remove these shells' cgroups; returns those still busy (a process of the domain not yet reaped)."""
    busy: set[str] = set()
    found = cgroup.hierarchies()  # once, not per name: a host going down removes thousands together
    for name in names:
        try:
            cgroup.DomainCgroup.existing(name, found).remove()
        except OSError:
            busy.add(name)
    return busy


def stale_cgroups() -> set[str]:
    """Cgroups of shells whose zygote is gone (a host that was killed): what a new host sweeps away."""
    stale = set()
    for name in cgroup.DomainCgroup.names(CGROUP_PREFIX):
        zygote = name[len(CGROUP_PREFIX) :].partition("-")[0]
        if zygote.isdigit() and not os.path.exists(f"/proc/{zygote}"):
            stale.add(name)
    return stale


def _start_info(memory_fd: int) -> StartInfo:
    """The start info the builder wrote in the domain's first frame."""
    with mmap.mmap(memory_fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=START_INFO_PFN * PAGE_SIZE) as page:
        return StartInfo.read(memoryview(page).toreadonly())
