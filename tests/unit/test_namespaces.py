"""Namespaces, identity, capabilities and rlimits of a guest's jail, on the real kernel.

Every restriction is made in a forked child (none can be undone); the child
sends its findings back over a pipe and is always reaped.
"""

from __future__ import annotations

import errno
import os
import pickle
import resource
import select
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xenlike.kernel import cgroup, landlock, namespaces
from xenlike.kernel.namespaces import (
    CLONE_NEWUSER,
    IdentityError,
    JailError,
    NamespaceError,
)

ROOT = os.geteuid() == 0
# Ids no process of this host runs as: a guest dropped to them shares nothing with anyone.
GUEST_UID = GUEST_GID = 64990
OTHER_UID = 64991
needs_root = pytest.mark.skipif(not ROOT, reason="a uid per domain needs root (CAP_SETUID)")


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
    """fn(*args) in a forked child; its return value, or AssertionError with the child's traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                reply = ("ok", fn(*args))
            except BaseException:
                reply = ("error", traceback.format_exc())
            data = pickle.dumps(reply)
            while data:
                data = data[os.write(write_end, data) :]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the child did not answer within {timeout} s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError("the child died without answering")
    status, value = pickle.loads(b"".join(chunks))
    if status != "ok":
        raise AssertionError(f"in the child:\n{value}")
    return value


def _errno_of(call: Callable[[], object]) -> int:
    """0 if call() succeeds, else the errno of the OSError it raises."""
    try:
        call()
    except OSError as exc:
        return exc.errno or -1
    return 0


def _guest_namespaces() -> namespaces.GuestNamespaces:
    return namespaces.enter_guest_namespaces("guest-7")


# --- namespaces -------------------------------------------------------------------------------------------


def test_guest_sees_only_loopback_and_its_hostname() -> None:
    def child() -> tuple[object, ...]:
        entered = _guest_namespaces()
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection(server.getsockname(), timeout=2):
                pass
        return entered, socket.if_nameindex(), socket.gethostname()

    entered, interfaces, hostname = run_in_child(child)
    assert entered.loopback_up
    assert entered.user_namespace == (not ROOT)
    assert interfaces == [(1, "lo")]
    assert hostname == "guest-7"
    assert socket.gethostname() != "guest-7"


def test_user_namespace_path_maps_the_callers_own_ids() -> None:
    def child() -> tuple[str, str, str, tuple[int, int, int]]:
        namespaces.enter_guest_namespaces("guest-u", user_namespace=True)
        maps = [Path(f"/proc/self/{name}").read_text() for name in ("uid_map", "gid_map", "setgroups")]
        namespaces.drop_capabilities()
        return maps[0], maps[1], maps[2], namespaces.capabilities()

    uid_map, gid_map, setgroups, caps = run_in_child(child)
    assert uid_map.split() == [str(os.geteuid()), str(os.geteuid()), "1"]
    assert gid_map.split() == [str(os.getegid()), str(os.getegid()), "1"]
    assert setgroups.strip() == "deny"
    assert caps == (0, 0, 0)


def test_user_namespace_refuses_a_threaded_caller() -> None:
    def child() -> tuple[int, str]:
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            namespaces.unshare(CLONE_NEWUSER)
        except NamespaceError as exc:
            return exc.errno or 0, exc.strerror or ""
        finally:
            stop.set()
            thread.join()
        return 0, ""

    err, message = run_in_child(child)
    assert err == errno.EINVAL
    assert "single-threaded" in message and "namespaces" in message


def test_run_directory_is_hidden_by_an_empty_tmpfs(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir()
    (rundir / "toolstack.sock").write_text("secret")

    def child() -> tuple[list[str], int, int]:
        _guest_namespaces()
        namespaces.hide_directory(str(rundir))
        listing = os.listdir(rundir) if ROOT else []  # mode 000: only a capable process may list it
        return (
            listing,
            _errno_of(lambda: (rundir / "toolstack.sock").read_text()),
            _errno_of(lambda: (rundir / "new").write_text("x")),
        )

    listing, read_err, write_err = run_in_child(child)
    assert listing == []
    assert read_err in (errno.ENOENT, errno.EACCES)
    assert write_err in (errno.EROFS, errno.EACCES)
    assert (rundir / "toolstack.sock").read_text() == "secret"  # the host's view is untouched


@needs_root
def test_private_proc_hides_processes_of_other_uids() -> None:
    parent = os.getpid()

    def child() -> tuple[bool, bool, bool, str]:
        _guest_namespaces()
        namespaces.mount_private_proc()
        namespaces.drop_identity(GUEST_UID, GUEST_GID)
        pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if " /proc " in line]
        options = mounts[-1]  # the one on top
        return os.getpid() in pids, parent in pids, 1 in pids, options

    sees_itself, sees_parent, sees_init, options = run_in_child(child)
    assert sees_itself
    assert not sees_parent and not sees_init
    assert "hidepid=invisible" in options and "subset=pid" in options


@needs_root
def test_landlock_domain_hides_processes_of_the_same_uid() -> None:
    """What hides the hypervisor, dom0 and other guests from a guest that shares their uid."""
    if landlock.abi_version() < 1:
        pytest.skip("this kernel has no Landlock")
    sibling = os.fork()
    if sibling == 0:
        try:
            os.setresgid(GUEST_GID, GUEST_GID, GUEST_GID)
            os.setresuid(GUEST_UID, GUEST_UID, GUEST_UID)
            namespaces.set_dumpable(True)
            time.sleep(30)
        finally:
            os._exit(0)
    try:

        def child() -> tuple[bool, bool, bool]:
            _guest_namespaces()
            namespaces.mount_private_proc()
            namespaces.drop_identity(GUEST_UID, GUEST_GID, dumpable=True)
            before = sibling in {int(n) for n in os.listdir("/proc") if n.isdigit()}
            landlock.Ruleset().allow_read("/proc").restrict_self()
            after = {int(n) for n in os.listdir("/proc") if n.isdigit()}
            return before, sibling in after, os.getpid() in after

        before, after, itself = run_in_child(child)
    finally:
        os.kill(sibling, signal.SIGKILL)
        os.waitpid(sibling, 0)
    assert before, "a same-uid, dumpable process is listed before Landlock"
    assert not after, "hidepid=invisible leaves out what the Landlock domain may not ptrace"
    assert itself


def test_procfs_cannot_be_mounted_from_a_user_namespace() -> None:
    """Why an unprivileged guest gets an empty /proc rather than a private procfs."""

    def child() -> tuple[int, list[str]]:
        namespaces.enter_guest_namespaces("guest-u", user_namespace=True)
        err = _errno_of(namespaces.mount_private_proc)
        namespaces.hide_directory("/proc")
        return err, os.listdir("/proc")

    err, listing = run_in_child(child)
    assert err == errno.EPERM
    assert listing == []


# --- identity and capabilities ----------------------------------------------------------------------------


@needs_root
def test_a_guest_of_another_uid_cannot_signal_its_parent() -> None:
    parent = os.getpid()

    def child() -> tuple[int, int, tuple[int, int, int], bool, tuple[int, int, int], int]:
        namespaces.drop_identity(GUEST_UID, GUEST_GID)
        return (
            _errno_of(lambda: os.kill(parent, 0)),
            _errno_of(lambda: os.kill(os.getpid(), 0)),
            os.getresuid(),
            namespaces.is_dumpable(),
            namespaces.capabilities(),
            _errno_of(lambda: os.setresuid(0, 0, 0)),
        )

    kill_parent, kill_self, ids, dumpable, caps, regain = run_in_child(child)
    assert kill_parent == errno.EPERM
    assert kill_self == 0
    assert ids == (GUEST_UID,) * 3
    assert not dumpable  # changing the euid made it so (fs.suid_dumpable = 0)
    assert caps == (0, 0, 0)
    assert regain == errno.EPERM


@needs_root
def test_drop_identity_can_leave_the_process_dumpable() -> None:
    def child() -> tuple[bool, list[int], str]:
        namespaces.drop_identity(OTHER_UID, OTHER_UID, dumpable=True)
        bounding = next(
            line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd:")
        )
        return namespaces.is_dumpable(), os.getgroups(), bounding

    dumpable, groups, bounding = run_in_child(child)
    assert dumpable
    assert groups == []
    assert int(bounding.split()[1], 16) == 0


def test_drop_identity_without_privilege_fails_with_its_errno() -> None:
    def child() -> tuple[type, int, str]:
        if ROOT:
            namespaces.enter_user_namespace()
            namespaces.drop_capabilities()
        try:
            namespaces.drop_identity(OTHER_UID, OTHER_UID)
        except JailError as exc:
            return type(exc), exc.errno or 0, exc.strerror or ""
        return type(None), 0, ""

    kind, err, message = run_in_child(child)
    assert issubclass(kind, IdentityError)
    assert err == errno.EPERM
    assert message.startswith("identity:") and "CAP_SETUID" in message


def test_drop_capabilities_empties_every_set() -> None:
    def child() -> tuple[tuple[int, int, int], str, str, int]:
        if not ROOT:
            namespaces.enter_user_namespace()
        namespaces.drop_capabilities()
        status = Path("/proc/self/status").read_text().splitlines()
        field = {line.split(":")[0]: line.split()[1] for line in status if line.startswith("Cap")}
        return (
            namespaces.capabilities(),
            field["CapBnd"],
            field["CapAmb"],
            _errno_of(lambda: socket.sethostname("nope")),
        )

    caps, bounding, ambient, sethostname = run_in_child(child)
    assert caps == (0, 0, 0)
    assert int(bounding, 16) == 0 and int(ambient, 16) == 0
    assert sethostname == errno.EPERM


def test_no_new_privs() -> None:
    def child() -> tuple[bool, bool]:
        before = namespaces.no_new_privs_set()
        namespaces.no_new_privs()
        return before, namespaces.no_new_privs_set()

    assert run_in_child(child) == (False, True)


# --- rlimits ----------------------------------------------------------------------------------------------


def test_a_file_write_past_fsize_zero_fails(tmp_path: Path) -> None:
    target = tmp_path / "grown"

    def child() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's SIGXFSZ kills the writer
        namespaces.set_rlimits(fsize=0)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)  # creating an empty file is not growing one
        try:
            return _errno_of(lambda: os.write(fd, b"x"))
        finally:
            os.close(fd)

    assert run_in_child(child) == errno.EFBIG
    assert target.stat().st_size == 0


def test_forking_past_nproc_fails() -> None:
    def child() -> int:
        if ROOT:
            namespaces.drop_identity(GUEST_UID, GUEST_GID)  # uid 0 is never held to RLIMIT_NPROC
        else:
            namespaces.enter_user_namespace()  # counted per user namespace: this process alone
            namespaces.drop_capabilities()
        namespaces.set_rlimits(nproc=1)
        try:
            pid = os.fork()
        except OSError as exc:
            return exc.errno or -1
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return 0

    assert run_in_child(child) == errno.EAGAIN


def test_allocating_past_the_address_space_raises_memory_error() -> None:
    def child() -> tuple[bool, int]:
        size = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmSize:")
        )
        namespaces.set_rlimits(address_space=size + (64 << 20))
        small = bytearray(16 << 20)  # within the limit
        try:
            bytearray(512 << 20)
        except MemoryError:
            return True, len(small)
        return False, len(small)

    assert run_in_child(child) == (True, 16 << 20)


def test_nofile_and_core_limits() -> None:
    def child() -> tuple[int, tuple[int, int], tuple[int, int]]:
        namespaces.set_rlimits(nofile=64)
        opened: list[int] = []
        try:
            while True:
                opened.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            err = exc.errno or -1
        return err, resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CORE)

    err, nofile, core = run_in_child(child)
    assert err == errno.EMFILE
    assert nofile == (64, 64)
    assert core == (0, 0)


def test_raising_a_hard_limit_back_is_refused_with_its_errno() -> None:
    def child() -> tuple[int, str]:
        if ROOT:
            namespaces.drop_identity(GUEST_UID, GUEST_GID)  # CAP_SYS_RESOURCE gone
        namespaces.set_rlimits(nofile=64)
        try:
            namespaces.set_rlimits(nofile=128)
        except namespaces.RlimitError as exc:
            return exc.errno or 0, exc.strerror or ""
        return 0, ""

    err, message = run_in_child(child)
    assert err == errno.EPERM
    assert message.startswith("rlimits: setrlimit(RLIMIT_NOFILE, 128)")


# --- probes -----------------------------------------------------------------------------------------------


def test_probe_names_every_mechanism_and_leaves_the_caller_alone() -> None:
    before = Path("/proc/self/ns/net").resolve(), socket.gethostname()
    found = {m.name: m for m in namespaces.probe()}
    assert set(found) == {"namespaces", "loopback", "private-proc", "uid-per-domain", "no-new-privs", "rlimits"}
    assert found["namespaces"].available and found["loopback"].available
    assert found["private-proc"].available == ROOT
    assert found["uid-per-domain"].available == ROOT
    assert (Path("/proc/self/ns/net").resolve(), socket.gethostname()) == before
    assert not namespaces.no_new_privs_set()


# --- cgroups ----------------------------------------------------------------------------------------------

CGROUP = cgroup.probe()
needs_cgroup = pytest.mark.skipif(not CGROUP.available, reason=f"{CGROUP.detail} (cgroups need root or delegation)")


def _cgroup_name(what: str) -> str:
    return f"xenlike-test-{os.getpid()}-{what}"


@needs_cgroup
def test_cgroup_pids_limit_refuses_a_fork_and_the_cgroup_is_removed_after() -> None:
    group = cgroup.DomainCgroup.create(_cgroup_name("pids"), pids_max=2)
    try:
        assert Path(group.paths["pids"], "pids.max").read_text().strip() == "2"

        def child() -> tuple[bool, int, int]:
            group.add(os.getpid())
            inside = os.getpid() in group.pids()
            release_r, release_w = os.pipe()
            first = os.fork()  # the second process of the cgroup: allowed
            if first == 0:
                os.read(release_r, 1)
                os._exit(0)
            try:
                second = os.fork()  # the third: refused
                if second == 0:
                    os._exit(0)
                os.waitpid(second, 0)
                err = 0
            except OSError as exc:
                err = exc.errno or -1
            os.write(release_w, b"x")
            os.waitpid(first, 0)
            return inside, first, err

        inside, first, err = run_in_child(child)
        assert inside and first > 0
        assert err == errno.EAGAIN
    finally:
        group.remove()
    assert group.paths == {}


@needs_cgroup
def test_cgroup_memory_limit_ends_a_process_past_it() -> None:
    if "memory" not in CGROUP.detail:
        pytest.skip(f"no writable memory controller: {CGROUP.detail}")
    group = cgroup.DomainCgroup.create(_cgroup_name("memory"), memory_bytes=32 << 20)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                group.add(os.getpid())
                hog = b"x" * (128 << 20)  # written, so charged, unlike a calloc'ed bytearray
                os._exit(len(hog) & 1)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        group.remove()


@needs_cgroup
def test_cgroup_kill_ends_every_process_in_it() -> None:
    group = cgroup.DomainCgroup.create(_cgroup_name("kill"), pids_max=10)
    pids = []
    try:
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                try:
                    time.sleep(30)
                finally:
                    os._exit(0)
            pids.append(pid)
            group.add(pid)
        assert group.pids() == set(pids)
        group.kill()
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        pids.clear()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        group.remove()


def test_cgroup_errors_are_precise() -> None:
    with pytest.raises(cgroup.CgroupError) as caught:
        cgroup.DomainCgroup.create("../escape", pids_max=1)
    assert caught.value.errno == errno.EINVAL
    assert caught.value.strerror is not None and caught.value.strerror.startswith("cgroup:")
