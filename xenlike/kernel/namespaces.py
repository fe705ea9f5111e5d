"""Namespaces, identity, capabilities and rlimits: the kernel's walls around a guest process.

Each function is one step of a guest's jail, made on the calling process itself
and never undone:

* :func:`unshare` (``unshare(2)``) and :func:`enter_guest_namespaces`: new
  network (only ``lo``), mount (private propagation), IPC and UTS (the domain's
  hostname) namespaces; without root, inside a new user namespace that maps the
  caller's own uid and gid (:func:`enter_user_namespace`);
* :func:`mount_private_proc` and :func:`hide_directory`, in that mount namespace:
  a ``/proc`` that shows only what the guest may see, and an empty tmpfs over a
  directory (the run directory) the guest must not see;
* :func:`drop_identity` (``setgroups(2)``, ``setresgid(2)``, ``setresuid(2)``)
  to a per-domain uid when running as root, or :func:`drop_capabilities`
  (``capset(2)``, ``PR_CAPBSET_DROP``, ``PR_CAP_AMBIENT``) when the uid stays;
* :func:`set_rlimits` (``setrlimit(2)``), :func:`no_new_privs`
  (``PR_SET_NO_NEW_PRIVS``), :func:`set_dumpable` (``PR_SET_DUMPABLE``).

Threads: ``CLONE_NEWUSER`` refuses a caller with more than one thread (EINVAL);
the other namespaces move only the calling thread; glibc's ``setresuid`` and
friends change every thread (nptl's setxid broadcast). A guest's shell applies
all of this right after ``fork``, single-threaded.

No PID namespace. ``unshare(CLONE_NEWPID)`` moves only the caller's future
children, and a guest's shell is a process whose pid the hypervisor already
holds (its pidfd, ``/proc/PID/stat``, the vCPU processes it forks are checked
as its children by pid). Other processes are hidden instead by a private
``/proc`` mounted ``hidepid=invisible``: an entry is listed only to a reader
with ptrace-read access to it, which a guest lacks towards every process of
another uid (root: a uid per domain) and, once Landlock-restricted, towards
every process outside its own Landlock domain (same uid included). A user
namespace cannot mount a procfs for the initial PID namespace (EPERM), so
without root the guest's ``/proc`` is an empty tmpfs (:func:`hide_directory`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = [
    "JailError",
    "NamespaceError",
    "IdentityError",
    "CapabilityError",
    "RlimitError",
    "Mechanism",
    "GuestNamespaces",
    "CLONE_NEWNS",
    "CLONE_NEWCGROUP",
    "CLONE_NEWUTS",
    "CLONE_NEWIPC",
    "CLONE_NEWUSER",
    "CLONE_NEWPID",
    "CLONE_NEWNET",
    "CLONE_NEWTIME",
    "GUEST_NAMESPACES",
    "unshare",
    "enter_user_namespace",
    "enter_guest_namespaces",
    "make_mounts_private",
    "set_hostname",
    "bring_up_loopback",
    "mount_private_proc",
    "hide_directory",
    "mount_tmpfs",
    "bind_mount",
    "drop_identity",
    "drop_bounding_set",
    "drop_capabilities",
    "capabilities",
    "set_rlimits",
    "no_new_privs",
    "no_new_privs_set",
    "set_dumpable",
    "is_dumpable",
    "probe",
]

# Namespace flags (linux/sched.h).
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
GUEST_NAMESPACES = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
_FLAG_NAMES = {
    CLONE_NEWTIME: "time",
    CLONE_NEWNS: "mount",
    CLONE_NEWCGROUP: "cgroup",
    CLONE_NEWUTS: "uts",
    CLONE_NEWIPC: "ipc",
    CLONE_NEWUSER: "user",
    CLONE_NEWPID: "pid",
    CLONE_NEWNET: "net",
}

# mount(2) flags (linux/mount.h).
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

# prctl(2) options (linux/prctl.h).
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

# capget(2)/capset(2) (linux/capability.h): version 3 takes two 32-bit data words per set.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_SETGID = 6
_CAP_SETUID = 7
_CAP_SYS_ADMIN = 21

# Interface flags ioctls (linux/sockios.h) on a struct ifreq: 16-byte name, then a short.
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh22x")

# setrlimit(2) resources (asm-generic/resource.h).
_RLIMIT_FSIZE = 1
_RLIMIT_CORE = 4
_RLIMIT_NPROC = 6
_RLIMIT_NOFILE = 7
_RLIMIT_AS = 9

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class JailError(OSError):
    """A jail step failed. ``errno`` is the kernel's; the message names the mechanism, the call and its object."""

    mechanism = "jail"

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{self.mechanism}: {what}: {os.strerror(err)}")


class NamespaceError(JailError):
    """``unshare(2)``, a mount in the new mount namespace, the hostname or ``lo`` failed."""

    mechanism = "namespaces"


class IdentityError(JailError):
    """Changing groups, gid or uid failed, or the result is not what was asked."""

    mechanism = "identity"


class CapabilityError(JailError):
    """Dropping capabilities (bounding, ambient, effective/permitted/inheritable) failed."""

    mechanism = "capabilities"


class RlimitError(JailError):
    """``setrlimit(2)`` refused a limit."""

    mechanism = "rlimits"


class Mechanism(NamedTuple):
    """One isolation mechanism as this kernel and this user have it.

    ``detail`` says what it gives when ``available``, and otherwise, in one line,
    what a guest can do for lack of it (the warning ``up`` prints).
    """

    name: str
    available: bool
    detail: str


class GuestNamespaces(NamedTuple):
    """What :func:`enter_guest_namespaces` did: the ``CLONE_NEW*`` flags, and whether ``lo`` is up."""

    flags: int
    user_namespace: bool
    loopback_up: bool


def _errno() -> int:
    return ctypes.get_errno() or errno.EINVAL


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    """prctl(option, arg2, arg3, 0, 0); -errno on failure."""
    result = _libc.prctl(option, arg2, arg3, 0, 0)
    return result if result >= 0 else -_errno()


def _flag_names(flags: int) -> str:
    return "|".join(name for bit, name in _FLAG_NAMES.items() if flags & bit) or hex(flags)


def unshare(flags: int) -> None:
    """``unshare(2)``: move the calling thread into new namespaces of the kinds in ``flags``.

    ``CLONE_NEWUSER`` needs a single-threaded caller (EINVAL otherwise); the
    others need ``CAP_SYS_ADMIN`` in the current user namespace, or to come in
    the same call as ``CLONE_NEWUSER``. ``CLONE_NEWPID`` and ``CLONE_NEWTIME``
    take effect for the caller's next children only. Raises :class:`NamespaceError`.
    """
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        err = _errno()
        threaded = flags & CLONE_NEWUSER and err == errno.EINVAL
        hint = " (a user namespace needs a single-threaded caller)" if threaded else ""
        raise NamespaceError(err, f"unshare({_flag_names(flags)}){hint}")


def _write_proc_self(name: str, text: str) -> None:
    try:
        with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
            f.write(text)
    except OSError as exc:
        raise NamespaceError(exc.errno or errno.EINVAL, f"writing {text.strip()!r} to /proc/self/{name}") from None


def enter_user_namespace(flags: int = 0) -> None:
    """``unshare(CLONE_NEWUSER | flags)``, then map the caller's own uid and gid to themselves.

    Needs no privilege and a single-threaded caller. The maps are one line each
    (``uid uid 1``, ``gid gid 1``), as ``user_namespaces(7)`` allows an
    unprivileged writer, after ``deny`` to ``/proc/self/setgroups``: inside, the
    process keeps its ids, cannot ``setgroups``, and holds every capability over
    the namespaces it owns until :func:`drop_capabilities`. Raises :class:`NamespaceError`.
    """
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | flags)
    _write_proc_self("uid_map", f"{uid} {uid} 1\n")
    _write_proc_self("setgroups", "deny\n")
    _write_proc_self("gid_map", f"{gid} {gid} 1\n")


def make_mounts_private(target: str = "/") -> None:
    """``mount(NULL, target, NULL, MS_REC | MS_PRIVATE)``: no mount event crosses this mount namespace's border.

    Raises :class:`NamespaceError`.
    """
    if _libc.mount(None, target.encode(), None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise NamespaceError(_errno(), f"making the mounts beneath {target!r} private")


def set_hostname(hostname: str) -> None:
    """``sethostname(2)`` in the caller's UTS namespace. Raises :class:`NamespaceError`."""
    try:
        socket.sethostname(hostname)
    except OSError as exc:
        raise NamespaceError(exc.errno or errno.EINVAL, f"sethostname({hostname!r})") from None


def bring_up_loopback() -> bool:
    """Set ``IFF_UP`` on ``lo`` (``SIOCSIFFLAGS``) in the caller's network namespace; False if refused."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))[1]
            if not flags & _IFF_UP:
                fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
    except OSError:
        return False
    return True


def enter_guest_namespaces(hostname: str, *, user_namespace: bool | None = None) -> GuestNamespaces:
    """Move the caller into a guest's namespaces: network, mount, IPC, UTS, and a user namespace without root.

    The new network namespace holds only ``lo``, brought up if the kernel lets
    it; every mount is made private (no propagation to or from the host); the
    UTS namespace gets ``hostname``. ``user_namespace`` (default: when the
    effective uid is not 0) does it all inside :func:`enter_user_namespace`,
    which needs a single-threaded caller. Raises :class:`NamespaceError`.
    """
    if user_namespace is None:
        user_namespace = os.geteuid() != 0
    if user_namespace:
        enter_user_namespace(GUEST_NAMESPACES)
    else:
        unshare(GUEST_NAMESPACES)
    make_mounts_private()
    set_hostname(hostname)
    flags = GUEST_NAMESPACES | (CLONE_NEWUSER if user_namespace else 0)
    return GuestNamespaces(flags, user_namespace, bring_up_loopback())


def mount_private_proc(target: str = "/proc", *, hidepid: str = "invisible", subset_pid: bool = True) -> None:
    """Mount a procfs of the caller's PID namespace on ``target``, ``hidepid=<hidepid>``, nosuid/nodev/noexec.

    Meant for the caller's own mount namespace (after :func:`enter_guest_namespaces`).
    ``hidepid=invisible`` leaves out every ``/proc/PID`` the reader has no
    ptrace-read access to; ``subset=pid`` (Linux 5.8) leaves out everything but
    the process directories (``/proc/sys``, ``/proc/meminfo``, ...). Mounting
    procfs needs ``CAP_SYS_ADMIN`` over the PID namespace's user namespace: a
    process in a user namespace of its own gets EPERM here. Raises :class:`NamespaceError`.
    """
    options = f"hidepid={hidepid}" + (",subset=pid" if subset_pid else "")
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"proc", target.encode(), b"proc", flags, options.encode()) != 0:
        raise NamespaceError(_errno(), f"mounting proc on {target!r} with {options}")


def hide_directory(path: str) -> None:
    """Mount an empty, read-only, mode-000 tmpfs over ``path`` in the caller's mount namespace.

    What was beneath ``path`` is out of this namespace's reach (it stays as it
    was for every other one), except through fds opened before, the current
    directory among them: ``chdir`` out of ``path`` first. Use it after
    :func:`make_mounts_private`, so the mount stays in this namespace. Raises
    :class:`NamespaceError`.
    """
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    if _libc.mount(b"xenlike-hidden", path.encode(), b"tmpfs", flags, b"mode=000,size=4k,nr_inodes=2") != 0:
        raise NamespaceError(_errno(), f"mounting an empty tmpfs over {path!r}")


def mount_tmpfs(path: str, mode: int = 0o755) -> None:
    """Mount an empty tmpfs over ``path`` (nosuid, nodev, noexec) in the caller's mount namespace.

    Its root directory has ``mode``; what ``path`` held is out of this
    namespace's reach until bind mounts put parts of it back. Raises :class:`NamespaceError`.
    """
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    options = f"mode={mode:o},size=64k".encode()
    if _libc.mount(b"xenlike-view", path.encode(), b"tmpfs", flags, options) != 0:
        raise NamespaceError(_errno(), f"mounting a tmpfs over {path!r}")


def bind_mount(source: str, target: str, *, noexec: bool = False) -> None:
    """Bind ``source`` (a path, or ``/proc/self/fd/N`` of an ``O_PATH`` fd) on ``target``, read-only.

    ``target`` must exist and be of the same kind (a directory for a directory,
    a file for a file). ``noexec`` for what is only ever read: a source on a
    ``noexec`` file system (a ``/tmp`` so mounted) can then be bound from a user
    namespace too, where that flag is locked. Raises :class:`NamespaceError`.
    """
    if _libc.mount(source.encode(), target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
        raise NamespaceError(_errno(), f"binding {source!r} on {target!r}")
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | (_MS_NOEXEC if noexec else 0)
    if _libc.mount(None, target.encode(), None, flags, None) != 0:
        raise NamespaceError(_errno(), f"making the binding on {target!r} read-only")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capabilities() -> tuple[int, int, int]:
    """The calling thread's (effective, permitted, inheritable) capability sets, from ``capget(2)``."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise CapabilityError(_errno(), "capget")
    low, high = data[0], data[1]
    return (
        low.effective | high.effective << 32,
        low.permitted | high.permitted << 32,
        low.inheritable | high.inheritable << 32,
    )


def _cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def _drop_bounding_and_ambient() -> None:
    """Empty the ambient set and the bounding set (``PR_CAPBSET_DROP`` needs ``CAP_SETPCAP``)."""
    result = _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    if result < 0 and result != -errno.EINVAL:  # EINVAL: a kernel without ambient capabilities
        raise CapabilityError(-result, "prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)")
    for cap in range(_cap_last_cap() + 1):
        result = _prctl(_PR_CAPBSET_DROP, cap)
        if result == -errno.EINVAL:  # past the kernel's last capability
            break
        if result < 0:
            raise CapabilityError(-result, f"prctl(PR_CAPBSET_DROP, {cap})")


def _clear_capability_sets() -> None:
    """``capset(2)`` with empty effective, permitted and inheritable sets."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise CapabilityError(_errno(), "capset to empty sets")


def drop_capabilities() -> None:
    """Leave the calling thread with no capability at all, for a process that keeps its uid.

    Empties the ambient set, the bounding set (so no ``execve`` brings one back;
    needs ``CAP_SETPCAP``, which a fresh user namespace gives), then the
    effective, permitted and inheritable sets (``capset(2)``). Per thread, like
    every capability call: do it single-threaded. Raises :class:`CapabilityError`.
    """
    if _prctl(_PR_SET_KEEPCAPS, 0) < 0:
        raise CapabilityError(_errno(), "prctl(PR_SET_KEEPCAPS, 0)")
    _drop_bounding_and_ambient()
    _clear_capability_sets()
    if any(capabilities()):
        raise CapabilityError(errno.EPERM, "capabilities remain after capset")


def drop_bounding_set() -> None:
    """Empty the ambient and bounding capability sets ahead of :func:`drop_identity` (they need no uid).

    A process that knows it will drop its identity later, but not yet to what,
    does this part early; :func:`drop_identity` with ``bounding_dropped`` then
    skips it. Raises :class:`CapabilityError`.
    """
    _drop_bounding_and_ambient()


def drop_identity(uid: int, gid: int, *, dumpable: bool = False, bounding_dropped: bool = False) -> None:
    """Become ``uid``:``gid`` for good, with no supplementary group and no capability. Needs root.

    Order: ambient and bounding sets emptied (while ``CAP_SETPCAP`` is held),
    ``setgroups([])``, ``setresgid(gid, gid, gid)``, ``setresuid(uid, uid,
    uid)`` (which empties the permitted, effective and ambient sets as every uid
    leaves 0), then the inheritable set. The result is checked.

    Changing the effective ids makes the process non-dumpable
    (``fs.suid_dumpable`` = 0): its ``/proc/PID`` files become root's and no
    process of ``uid`` may ptrace it. A root hypervisor needs nothing more:
    ``/proc/PID/stat`` is world-readable, and root holds ``CAP_KILL``,
    ``CAP_SYS_NICE`` (affinity) and ``CAP_SYS_PTRACE``. ``dumpable=True`` turns
    ``PR_SET_DUMPABLE`` back on, for a process of the same uid that must reach
    it (``/proc/PID/pagemap``, ``pidfd_getfd``), the domain's other vCPU
    processes included (non-dumpable, they do not see one another under
    ``hidepid=invisible``). Raises :class:`IdentityError` (EPERM without
    ``CAP_SETUID`` and ``CAP_SETGID``, or the failing call's errno) or
    :class:`CapabilityError`.
    """
    if not (_has_capability(_CAP_SETUID) and _has_capability(_CAP_SETGID)):
        raise IdentityError(errno.EPERM, f"becoming {uid}:{gid} needs CAP_SETUID and CAP_SETGID")
    if _prctl(_PR_SET_KEEPCAPS, 0) < 0:
        raise CapabilityError(_errno(), "prctl(PR_SET_KEEPCAPS, 0)")
    if not bounding_dropped:
        _drop_bounding_and_ambient()
    for what, call in (
        ("setgroups([])", lambda: os.setgroups([])),
        (f"setresgid({gid})", lambda: os.setresgid(gid, gid, gid)),
        (f"setresuid({uid})", lambda: os.setresuid(uid, uid, uid)),
    ):
        try:
            call()
        except OSError as exc:
            raise IdentityError(exc.errno or errno.EPERM, what) from None
    _clear_capability_sets()
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise IdentityError(errno.EPERM, f"ids are {os.getresuid()}/{os.getresgid()}, not {uid}:{gid}")
    if uid != 0 and any(capabilities()):
        raise CapabilityError(errno.EPERM, f"capabilities remain after becoming uid {uid}")
    if dumpable:
        set_dumpable(True)


def no_new_privs() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: no ``execve`` of the thread or its children gains privilege, for good.

    Landlock and seccomp need it from an unprivileged caller. Raises :class:`JailError`.
    """
    result = _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    if result < 0:
        raise JailError(-result, "prctl(PR_SET_NO_NEW_PRIVS, 1)")


def no_new_privs_set() -> bool:
    """Whether the calling thread has ``no_new_privs`` (``PR_GET_NO_NEW_PRIVS``)."""
    return _prctl(_PR_GET_NO_NEW_PRIVS) == 1


def set_dumpable(dumpable: bool) -> None:
    """``prctl(PR_SET_DUMPABLE, 0 or 1)``: whether same-uid processes may ptrace this one and read its /proc files."""
    result = _prctl(_PR_SET_DUMPABLE, 1 if dumpable else 0)
    if result < 0:
        raise JailError(-result, f"prctl(PR_SET_DUMPABLE, {int(dumpable)})")


def is_dumpable() -> bool:
    """``PR_GET_DUMPABLE`` is 1 (``SUID_DUMP_USER``)."""
    return _prctl(_PR_GET_DUMPABLE) == 1


class _Rlimit(ctypes.Structure):
    _fields_ = [("rlim_cur", ctypes.c_ulong), ("rlim_max", ctypes.c_ulong)]


def _setrlimit(resource: int, name: str, value: int) -> None:
    limit = _Rlimit(value, value)
    if _libc.setrlimit(resource, ctypes.byref(limit)) != 0:
        raise RlimitError(_errno(), f"setrlimit({name}, {value})")


def set_rlimits(
    *,
    nofile: int | None = None,
    nproc: int | None = None,
    address_space: int | None = None,
    fsize: int | None = 0,
    core: int | None = 0,
) -> None:
    """Set each limit given (not None) as both soft and hard limit (``setrlimit(2)``), for good.

    * ``nofile`` (``RLIMIT_NOFILE``): one more than the highest new fd; fds
      already open stay. It also caps fds in flight over ``SCM_RIGHTS``.
    * ``nproc`` (``RLIMIT_NPROC``): processes and threads of the real uid,
      counted per user namespace; ``fork`` gets EAGAIN past it. Not enforced for
      uid 0 or a holder of ``CAP_SYS_ADMIN``/``CAP_SYS_RESOURCE``: it means
      something after :func:`drop_identity` or in a user namespace.
    * ``address_space`` (``RLIMIT_AS``, bytes): ``mmap``/``brk`` get ENOMEM
      past it, which CPython reports as ``MemoryError``. It counts the guest
      memory mapping, the interpreter and every thread stack.
    * ``fsize`` (``RLIMIT_FSIZE``, default 0): no file may be extended. Past it
      the kernel sends ``SIGXFSZ`` (which kills by default); with the signal
      ignored, the write fails with EFBIG. It is checked at each write, through
      inherited fds too: a guest whose log records or stdout go to a regular
      file (not a pipe or a terminal) needs ``fsize=None`` or a larger limit.
    * ``core`` (``RLIMIT_CORE``, default 0): no core dump (it would hold guest memory).

    Lowering a limit needs no privilege; raising a hard limit needs
    ``CAP_SYS_RESOURCE``. Raises :class:`RlimitError`.
    """
    for resource, name, value in (
        (_RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile),
        (_RLIMIT_NPROC, "RLIMIT_NPROC", nproc),
        (_RLIMIT_AS, "RLIMIT_AS", address_space),
        (_RLIMIT_FSIZE, "RLIMIT_FSIZE", fsize),
        (_RLIMIT_CORE, "RLIMIT_CORE", core),
    ):
        if value is not None:
            _setrlimit(resource, name, value)


def _has_capability(cap: int) -> bool:
    try:
        return bool(capabilities()[0] >> cap & 1)
    except CapabilityError:
        return False


def _probe_child(steps: Iterable[tuple[str, Callable[[], object]]]) -> dict[str, int]:
    """Run ``steps`` (name, callable) in a forked child, each after the one before; name -> 0 or errno.

    The child stops at the first failure; steps not reached are absent. Nothing
    happens to the caller. Never raises.
    """
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return {}
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return {}
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_end)
            for name, step in steps:
                try:
                    step()
                    result = 0
                except OSError as exc:
                    result = exc.errno or errno.EINVAL
                os.write(write_end, f"{name} {result}\n".encode())
                if result:
                    break
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    try:
        while chunk := os.read(read_end, 4096):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    results: dict[str, int] = {}
    for line in data.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        results[name] = int(value) if value.isdigit() else errno.EINVAL
    return results


def _mechanism(name: str, results: dict[str, int], ok: str, missing: str) -> Mechanism:
    err = results.get(name)
    if err == 0:
        return Mechanism(name, True, ok)
    why = os.strerror(err) if err else "not tried"
    return Mechanism(name, False, f"{missing} ({why})")


def probe() -> list[Mechanism]:
    """Which of this module's mechanisms the kernel and the caller's privileges give. Never raises.

    The namespace steps are tried, in the order a jail takes them, in a forked
    child that exits afterwards; the caller is left as it was.
    """
    root = os.geteuid() == 0 and _has_capability(_CAP_SYS_ADMIN)
    user_ns = not root

    def namespaces() -> None:
        if user_ns:
            enter_user_namespace(GUEST_NAMESPACES)
        else:
            unshare(GUEST_NAMESPACES)
        make_mounts_private()

    def loopback() -> None:
        if not bring_up_loopback():
            raise NamespaceError(errno.EPERM, "bringing lo up")

    results = _probe_child([("namespaces", namespaces), ("loopback", loopback), ("private-proc", mount_private_proc)])
    how = "in a user namespace of the caller's uid" if user_ns else "as root"
    found = [
        _mechanism(
            "namespaces",
            results,
            f"network, mount, IPC and UTS namespaces {how}",
            "namespaces unavailable: guests share the host's network, mounts and hostname",
        ),
        _mechanism(
            "loopback",
            results,
            "lo up in the guest's network namespace",
            "lo stays down: guests have no loopback network",
        ),
    ]
    if user_ns and results.get("private-proc"):
        found.append(
            Mechanism(
                "private-proc", False, "no procfs of its own in a user namespace: the guest's /proc is an empty tmpfs"
            )
        )
    else:
        found.append(
            _mechanism(
                "private-proc",
                results,
                "/proc mounted hidepid=invisible,subset=pid",
                "no private /proc: guests can list host processes",
            )
        )
    can_setuid = _has_capability(_CAP_SETUID) and _has_capability(_CAP_SETGID)
    found.append(
        Mechanism(
            "uid-per-domain",
            can_setuid,
            "a uid and gid per domain"
            if can_setuid
            else "no uid per domain (needs root): guests share the caller's uid",
        )
    )
    nnp = _prctl(_PR_GET_NO_NEW_PRIVS) >= 0
    found.append(
        Mechanism(
            "no-new-privs",
            nnp,
            "no_new_privs" if nnp else "no_new_privs unavailable: an execve in a guest can gain privilege",
        )
    )
    found.append(Mechanism("rlimits", True, "rlimits: files, processes, address space, file size, core"))
    return found
