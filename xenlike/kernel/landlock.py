"""Landlock: an unprivileged process takes away its own file-system, TCP, signal and socket reach.

Landlock (``Documentation/userspace-api/landlock.rst``) is three system calls,
which glibc does not wrap, so they are made through ``syscall(2)``:

* ``landlock_create_ruleset(attr, size, flags)`` (444) makes a ruleset fd from a
  ``struct landlock_ruleset_attr``: the access rights it *handles* (denies unless
  a rule allows them) and the scopes it closes;
* ``landlock_add_rule(fd, type, attr, 0)`` (445) adds a
  ``struct landlock_path_beneath_attr`` (``LANDLOCK_RULE_PATH_BENEATH``: rights
  allowed beneath a directory, or on one file, named by an ``O_PATH`` fd) or a
  ``struct landlock_net_port_attr`` (``LANDLOCK_RULE_NET_PORT``: TCP bind or
  connect allowed on one port);
* ``landlock_restrict_self(fd, flags)`` (446) puts the **calling thread** into a
  new domain made of the ruleset, for good.

What a domain does not cover on Linux 6.18 (ABI 7): ``stat``, ``chmod``,
``chown``, ``chdir``, ``access``; ``connect(2)`` to a *pathname* UNIX socket
(ABI 9 adds it); UDP (ABI 10); and every file opened before the restriction.
Symlinks and ``..`` are no way out: the kernel checks the object a path resolves
to against the rules of its real ancestors.

A domain binds the thread that asked and the children it forks afterwards, never
its sibling threads (``LANDLOCK_RESTRICT_SELF_TSYNC`` arrives with ABI 8). A
caller therefore restricts itself before it starts a thread, or calls
:func:`restrict_self` with one ruleset fd from every thread: build the ruleset
once with :meth:`Ruleset.create` and pass the fd around.

A ruleset fd is an fd like any other: made before ``fork``, it restricts each
child that calls :func:`restrict_self` with it, even in a mount namespace the
child made since (rules bind inodes, not mount points). A file system mounted
afterwards (a tmpfs over a directory, a new procfs) is beneath no rule. Adding
a rule to an inherited fd changes the ruleset of every process that holds it.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import site
import stat
import sys
from collections.abc import Iterable

from xenlike.kernel.namespaces import JailError, Mechanism, no_new_privs

__all__ = [
    "LandlockError",
    "Ruleset",
    "abi_version",
    "errata",
    "restrict_self",
    "python_allowance",
    "workload_allowance",
    "outermost",
    "NETDB_FILES",
    "probe",
    "fs_rights",
    "ACCESS_FS_EXECUTE",
    "ACCESS_FS_WRITE_FILE",
    "ACCESS_FS_READ_FILE",
    "ACCESS_FS_READ_DIR",
    "ACCESS_FS_REMOVE_DIR",
    "ACCESS_FS_REMOVE_FILE",
    "ACCESS_FS_MAKE_CHAR",
    "ACCESS_FS_MAKE_DIR",
    "ACCESS_FS_MAKE_REG",
    "ACCESS_FS_MAKE_SOCK",
    "ACCESS_FS_MAKE_FIFO",
    "ACCESS_FS_MAKE_BLOCK",
    "ACCESS_FS_MAKE_SYM",
    "ACCESS_FS_REFER",
    "ACCESS_FS_TRUNCATE",
    "ACCESS_FS_IOCTL_DEV",
    "ACCESS_NET_BIND_TCP",
    "ACCESS_NET_CONNECT_TCP",
    "SCOPE_ABSTRACT_UNIX_SOCKET",
    "SCOPE_SIGNAL",
    "READ",
    "READ_EXEC",
    "RESTRICT_SELF_LOG_SAME_EXEC_OFF",
    "RESTRICT_SELF_LOG_NEW_EXEC_ON",
    "RESTRICT_SELF_LOG_SUBDOMAINS_OFF",
]

# x86-64 system call numbers (asm/unistd_64.h).
_NR_LANDLOCK_CREATE_RULESET = 444
_NR_LANDLOCK_ADD_RULE = 445
_NR_LANDLOCK_RESTRICT_SELF = 446

_CREATE_RULESET_VERSION = 1 << 0
_CREATE_RULESET_ERRATA = 1 << 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

# File-system access rights (linux/landlock.h), with the ABI that brought each.
ACCESS_FS_EXECUTE = 1 << 0
ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_READ_FILE = 1 << 2
ACCESS_FS_READ_DIR = 1 << 3
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13  # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14  # ABI 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # ABI 5
# Network access rights (ABI 4) and scopes (ABI 6).
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1
# landlock_restrict_self(2) flags (ABI 7): which denials reach the audit log.
RESTRICT_SELF_LOG_SAME_EXEC_OFF = 1 << 0
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1
RESTRICT_SELF_LOG_SUBDOMAINS_OFF = 1 << 2

READ = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR
READ_EXEC = READ | ACCESS_FS_EXECUTE
# The rights that mean something on a file that is not a directory (security/landlock/fs.c ACCESS_FILE);
# a path-beneath rule on such a file with any other right is EINVAL.
_FILE_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
# Highest file-system right of each ABI: 1 -> MAKE_SYM, 2 -> REFER, 3-4 -> TRUNCATE, 5 and up -> IOCTL_DEV.
_FS_TOP_BY_ABI = {1: ACCESS_FS_MAKE_SYM, 2: ACCESS_FS_REFER, 3: ACCESS_FS_TRUNCATE, 4: ACCESS_FS_TRUNCATE}
_NET_ABI = 4
_SCOPE_ABI = 6
_LOG_FLAGS_ABI = 7

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr`` up to ``scoped`` (24 bytes; ABI 1 reads 8, ABI 4-5 read 16)."""

    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr``, packed: 12 bytes."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    """``struct landlock_net_port_attr``: 16 bytes, the port in host byte order."""

    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class LandlockError(JailError):
    """A Landlock system call failed; ``errno`` is the kernel's, the message names the call and its object."""

    mechanism = "landlock"


def _call(nr: int, *args: int | ctypes.c_void_p) -> int:
    """syscall(nr, args...) with every argument passed as a C long; -errno on failure."""
    result = _syscall(ctypes.c_long(nr), *(a if isinstance(a, ctypes.c_void_p) else ctypes.c_long(a) for a in args))
    return int(result) if result >= 0 else -ctypes.get_errno()


def abi_version() -> int:
    """The highest Landlock ABI this kernel offers; 0 if it has none or Landlock is off at boot.

    ``landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)``: ENOSYS
    (not built) and EOPNOTSUPP (built, disabled at boot) both mean 0. Never raises.
    """
    result = _call(_NR_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(None), 0, _CREATE_RULESET_VERSION)
    return max(result, 0)


def errata() -> int:
    """The bitmask of Landlock errata this kernel has fixed (``LANDLOCK_CREATE_RULESET_ERRATA``); 0 if unknown.

    Bit 0 is erratum 1 (ABI 4: non-TCP stream sockets were subject to TCP rights),
    bit 1 erratum 2 (ABI 6: the signal scope blocked signals between threads of
    one process in different domains), bit 2 erratum 3 (ABI 1: rename or link on
    disconnected directories could widen access). Never raises.
    """
    return max(_call(_NR_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(None), 0, _CREATE_RULESET_ERRATA), 0)


def fs_rights(abi: int) -> int:
    """Every file-system access right ABI ``abi`` knows (0x1FFF for ABI 1 ... 0xFFFF for ABI 5 and up)."""
    if abi <= 0:
        return 0
    top = _FS_TOP_BY_ABI.get(abi, ACCESS_FS_IOCTL_DEV)
    return (top << 1) - 1


def restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """``landlock_restrict_self(ruleset_fd, flags)``: confine the calling thread to the ruleset, for good.

    Only the calling thread, and the processes and threads it creates from now
    on, enter the domain; call this from every thread that exists, with the same
    fd, or before any thread starts. The thread needs ``no_new_privs`` (see
    :func:`xenlike.kernel.namespaces.no_new_privs`, itself a per-thread flag:
    set it in each thread) or ``CAP_SYS_ADMIN``, else EPERM. A thread may
    stack 16 domains (E2BIG beyond). ``flags`` are the ``RESTRICT_SELF_LOG_*``
    bits (ABI 7). Raises :class:`LandlockError`.
    """
    result = _call(_NR_LANDLOCK_RESTRICT_SELF, ruleset_fd, flags)
    if result < 0:
        hint = " (needs no_new_privs or CAP_SYS_ADMIN)" if result == -errno.EPERM else ""
        raise LandlockError(-result, f"landlock_restrict_self(fd {ruleset_fd}){hint}")


class Ruleset:
    """A Landlock ruleset under construction: what is handled, what is allowed.

    The rights handled are all file-system rights of the ABI (so, with no rule,
    nothing may be read, written, executed or created), TCP bind and connect when
    ``tcp`` and the ABI is 4 or more, and the scopes asked for when the ABI is 6
    or more. Everything is masked to what ``abi`` supports (the running kernel's
    ABI by default; a higher one than the kernel's makes :meth:`create` fail
    with EINVAL), so one description works on every kernel that has Landlock:
    :attr:`handled_fs`, :attr:`handled_net` and :attr:`scoped` say what a domain
    made of it really enforces.

    Rules name paths; each is opened with ``O_PATH`` when the ruleset is created,
    so the rule binds the file or directory the path resolves to at that moment
    (symlinks followed). A path that does not exist then is an error.
    """

    def __init__(
        self,
        abi: int | None = None,
        *,
        tcp: bool = True,
        scope_abstract_unix_socket: bool = True,
        scope_signal: bool = True,
    ) -> None:
        self.abi = abi_version() if abi is None else abi
        self.handled_fs = fs_rights(self.abi)
        self.handled_net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if tcp and self.abi >= _NET_ABI else 0
        scopes = (SCOPE_ABSTRACT_UNIX_SOCKET if scope_abstract_unix_socket else 0) | (
            SCOPE_SIGNAL if scope_signal else 0
        )
        self.scoped = scopes if self.abi >= _SCOPE_ABI else 0
        self._paths: list[tuple[str, int]] = []
        self._ports: list[tuple[int, int]] = []

    def allow(self, path: str | os.PathLike[str], access: int) -> Ruleset:
        """Allow ``access`` (``ACCESS_FS_*`` bits, masked to the handled ones) beneath ``path``.

        On a path that is not a directory only the file rights (execute, write,
        read, truncate, ioctl on a device) are kept, as the kernel requires.
        """
        self._paths.append((os.fspath(path), access))
        return self

    def allow_read(self, *paths: str | os.PathLike[str]) -> Ruleset:
        """Allow reading files and listing directories beneath each path."""
        for path in paths:
            self.allow(path, READ)
        return self

    def allow_read_exec(self, *paths: str | os.PathLike[str]) -> Ruleset:
        """Allow reading, listing and ``execve(2)`` beneath each path.

        The execute right governs ``execve`` only: mapping an extension module
        ``PROT_EXEC`` needs no more than the right to read it.
        """
        for path in paths:
            self.allow(path, READ_EXEC)
        return self

    def allow_tcp_bind(self, *ports: int) -> Ruleset:
        """Allow ``bind(2)`` of a TCP socket to each port (0: an ephemeral port). Ignored below ABI 4."""
        self._ports.extend((ACCESS_NET_BIND_TCP, port) for port in ports)
        return self

    def allow_tcp_connect(self, *ports: int) -> Ruleset:
        """Allow ``connect(2)`` of a TCP socket to each port. Ignored below ABI 4."""
        self._ports.extend((ACCESS_NET_CONNECT_TCP, port) for port in ports)
        return self

    def allow_all(self, allowance: Iterable[tuple[str | os.PathLike[str], int]]) -> Ruleset:
        """Add a rule for each (path, access) pair, such as a :func:`python_allowance` computed earlier."""
        for path, access in allowance:
            self.allow(path, access)
        return self

    def allow_python(
        self,
        workload: str | os.PathLike[str] | None = None,
        extra: Iterable[str | os.PathLike[str]] = (),
        *,
        netdb: bool = True,
    ) -> Ruleset:
        """Allow what a forked Python guest needs to go on running: see :func:`python_allowance`.

        Computing the allowance costs a millisecond or two; a process that
        forks many guests computes it once and gives each :meth:`allow_all`.
        """
        return self.allow_all(python_allowance(workload, extra, netdb=netdb))

    def create(self) -> int:
        """Make the ruleset fd (close-on-exec) with every rule added; the caller closes it.

        The fd can be passed to :func:`restrict_self` from several threads. Raises
        :class:`LandlockError`: ENOSYS or EOPNOTSUPP without Landlock, the open
        error of a rule's path, or the kernel's refusal of a rule.
        """
        if self.abi <= 0:
            raise LandlockError(errno.EOPNOTSUPP, "this kernel offers no Landlock ABI")
        attr = _RulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        size = 8 if self.abi < _NET_ABI else 16 if self.abi < _SCOPE_ABI else ctypes.sizeof(attr)
        fd = _call(_NR_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(ctypes.addressof(attr)), size, 0)
        if fd < 0:
            raise LandlockError(
                -fd,
                f"landlock_create_ruleset(fs {self.handled_fs:#x}, net {self.handled_net:#x}, scoped {self.scoped:#x})",
            )
        try:
            for path, access in self._paths:
                self._add_path_rule(fd, path, access)
            if self.handled_net:
                for access, port in self._ports:
                    self._add_port_rule(fd, access, port)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def add_rules(self, ruleset_fd: int, allowance: Iterable[tuple[str | os.PathLike[str], int]]) -> None:
        """Add (path, access) rules to a ruleset fd this ruleset made, before it restricts anything.

        Every process holding ``ruleset_fd`` sees the new rules: add only to an fd
        of the calling process's own (one made after its last ``fork``).
        """
        for path, access in allowance:
            self._add_path_rule(ruleset_fd, os.fspath(path), access)

    def restrict_self(self, flags: int = 0) -> None:
        """Set ``no_new_privs``, then confine the calling thread (and its future children) to this ruleset.

        See :func:`restrict_self` for the per-thread rule. ``flags`` above what
        the ABI knows (the log flags need ABI 7) are dropped.
        """
        if self.abi < _LOG_FLAGS_ABI:
            flags = 0
        fd = self.create()
        try:
            no_new_privs()
            restrict_self(fd, flags)
        finally:
            os.close(fd)

    def _add_path_rule(self, ruleset_fd: int, path: str, access: int) -> None:
        try:
            parent = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise LandlockError(exc.errno or errno.EINVAL, f"rule on {path!r}: cannot open it") from None
        try:
            if not stat.S_ISDIR(os.fstat(parent).st_mode):
                access &= _FILE_RIGHTS
            access &= self.handled_fs
            if not access:
                return
            attr = _PathBeneathAttr(access, parent)
            result = _call(
                _NR_LANDLOCK_ADD_RULE, ruleset_fd, _RULE_PATH_BENEATH, ctypes.c_void_p(ctypes.addressof(attr)), 0
            )
            if result < 0:
                raise LandlockError(-result, f"landlock_add_rule(path beneath {path!r}, access {access:#x})")
        finally:
            os.close(parent)

    def _add_port_rule(self, ruleset_fd: int, access: int, port: int) -> None:
        attr = _NetPortAttr(access, port)
        result = _call(_NR_LANDLOCK_ADD_RULE, ruleset_fd, _RULE_NET_PORT, ctypes.c_void_p(ctypes.addressof(attr)), 0)
        if result < 0:
            raise LandlockError(-result, f"landlock_add_rule(TCP port {port}, access {access:#x})")


# Files the C library reads to resolve names and services (getaddrinfo, getservbyname).
NETDB_FILES = (
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/resolv.conf",
    "/etc/services",
    "/etc/protocols",
)


def python_allowance(
    workload: str | os.PathLike[str] | None = None,
    extra: Iterable[str | os.PathLike[str]] = (),
    *,
    netdb: bool = True,
) -> list[tuple[str, int]]:
    """What a forked Python guest must still reach: (resolved path, ``ACCESS_FS_*`` rights) pairs.

    Read (files and directory listings) beneath:

    * the interpreter: ``sys.executable``'s real path, the shared libraries of
      its installation's ``lib`` directory (``libpython3.x.so``), the
      ``sys.path`` entries inside the installation or the virtual environment
      (the stdlib, ``lib-dynload``, site-packages: where imports look) and
      ``site.getsitepackages()``;
    * the shared libraries: every shared object this process has mapped
      (``/proc/self/maps``), the directory of ``libc`` and the dynamic loader
      (where an extension module's ``libssl`` or ``libffi`` lives) and
      ``/etc/ld.so.cache``;
    * xenlike's guest packages, ``xenlike`` and ``domu``, wherever installed
      (editable included; found by the import system without importing them);
    * ``workload``: a file or package directory path, or an importable module
      name whose file or package directory is then used;
    * ``/dev/urandom`` (``os.urandom`` uses ``getrandom(2)`` and needs no file,
      but libraries open the device), the time-zone database
      (``/usr/share/zoneinfo``, and the file ``/etc/localtime`` resolves to,
      for ``time.localtime`` and ``zoneinfo``), :data:`NETDB_FILES` when
      ``netdb`` (``getaddrinfo("localhost")``), and each path of ``extra``.

    Listing only (``READ_DIR``): each ``sys.path`` entry that holds ``xenlike``
    or ``domu`` as a plain directory (a source checkout on the path), so the
    path finder can still list it (a finder that cannot list an entry finds
    nothing there) without reading the rest of the checkout. Read and write:
    ``/dev/null``, whose writes store nothing.

    Paths that do not exist are left out, and so is a read path beneath another
    one. Nothing else is writable and no ``/proc`` entry is readable: after
    restriction, ``tempfile`` finds no usable directory and ``execve`` fails.
    """
    packages = _package_dirs(("xenlike", "domu"))
    project_roots = {os.path.realpath(os.path.dirname(pkg)) for pkg in packages}
    read: list[str] = [os.path.realpath(sys.executable)]
    read.extend(_interpreter_libraries())
    read.extend(p for p in _import_path() if p not in project_roots)
    read.extend(site.getsitepackages())
    read.extend(_mapped_libraries())
    read.append("/etc/ld.so.cache")
    read.extend(packages)
    if workload is not None:
        read.extend(_workload_paths(workload))
    read.extend(["/dev/urandom", "/usr/share/zoneinfo", "/etc/localtime"])
    if netdb:
        read.extend(NETDB_FILES)
    read.extend(os.fspath(p) for p in extra)
    allowance = [(path, READ) for path in outermost(os.path.realpath(p) for p in read if os.path.exists(p))]
    listed = project_roots & {os.path.realpath(p or os.curdir) for p in sys.path}
    allowance.extend((path, ACCESS_FS_READ_DIR) for path in sorted(listed))
    if os.path.exists(os.devnull):
        allowance.append((os.devnull, ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE))
    return allowance


def _import_path() -> list[str]:
    """The ``sys.path`` entries inside the interpreter's installation or the virtual environment, resolved.

    That is the stdlib, ``lib-dynload`` and the site directories. The script's
    directory, the current directory and ``PYTHONPATH`` entries are left out:
    they can be anything, a home directory as likely as not.
    """
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    prefixes.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))
    found: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry) if entry and os.path.isabs(entry) else ""
        if path and os.path.exists(path) and any(path.startswith(p.rstrip("/") + "/") for p in prefixes):
            found.append(path)
    return found


def _interpreter_libraries() -> list[str]:
    """The shared libraries in the interpreter's own ``lib`` directories (``libpython3.x.so``), one by one.

    Those directories also hold the stdlib and the installation's other files;
    the stdlib is allowed through ``sys.path``, the rest is not needed.
    """
    real_prefix = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    found: list[str] = []
    for prefix in {real_prefix, sys.base_prefix, sys.base_exec_prefix}:
        try:
            entries = list(os.scandir(os.path.join(prefix, "lib")))
        except OSError:
            continue
        found.extend(e.path for e in entries if e.name.startswith("lib") and ".so" in e.name and e.is_file())
    return found


def workload_allowance(workload: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Read rights on a workload's file or package, given as a path or an importable module name ([] if not found)."""
    return [(os.path.realpath(p), READ) for p in _workload_paths(workload) if os.path.exists(p)]


def _workload_paths(workload: str | os.PathLike[str]) -> list[str]:
    """The file or directory of a workload given as a path or as an importable module name."""
    path = os.fspath(workload)
    if os.path.exists(path) or os.sep in path or path.endswith(".py"):
        return [path]
    try:
        spec = importlib.util.find_spec(path)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    return [spec.origin] if spec.origin and os.path.isabs(spec.origin) else []


def _mapped_libraries() -> list[str]:
    """Every shared object this process has mapped, and the directories of the C library and dynamic loader.

    Read from ``/proc/self/maps``. The system library directory (where ``libc``
    lives) is where an extension module's own dependencies (``libssl``,
    ``libffi``, ``libsqlite3``) are found.
    """
    found: set[str] = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) < 6 or not fields[5].startswith("/") or ".so" not in fields[5]:
                    continue
                found.add(fields[5])
                if os.path.basename(fields[5]).startswith(("libc.so", "libc-", "ld-linux")):
                    found.add(os.path.dirname(fields[5]))
    except OSError:
        pass
    return sorted(found)


def _package_dirs(names: Iterable[str]) -> list[str]:
    """Directories of top-level packages, found by the import system's finders without importing them."""
    found: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            found.extend(spec.submodule_search_locations)
    return found


def outermost(paths: Iterable[str]) -> list[str]:
    """Sorted, unique paths with every path beneath another one dropped."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def probe() -> Mechanism:
    """Whether Landlock is available, for ``xenlike info`` and the warning at ``up``. Never raises."""
    abi = abi_version()
    if abi <= 0:
        return Mechanism("landlock", False, "Landlock unavailable: guests can read host files")
    parts = [f"ABI {abi}", "file system"]
    parts.append("TCP" if abi >= _NET_ABI else "no TCP rules (ABI < 4): guests can open TCP connections")
    parts.append(
        "signal and abstract-socket scopes"
        if abi >= _SCOPE_ABI
        else "no scopes (ABI < 6): guests can signal and reach abstract sockets of their uid"
    )
    return Mechanism("landlock", True, ", ".join(parts))
