"""Landlock on the real kernel: what a restricted guest may still read, and what it may not reach.

Each restriction is made in a forked child (a Landlock domain cannot be left);
the child sends its findings back over a pipe and is always reaped.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_namespaces import _errno_of, run_in_child
from xenlike.kernel import landlock, namespaces
from xenlike.kernel.landlock import LandlockError, Ruleset

ABI = landlock.abi_version()
needs_landlock = pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock (or it is off at boot)")
needs_net = pytest.mark.skipif(ABI < 4, reason="TCP rules need Landlock ABI 4 (Linux 6.7)")
needs_scopes = pytest.mark.skipif(ABI < 6, reason="scopes need Landlock ABI 6 (Linux 6.12)")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """allowed/{data.txt, pkg/mod.py, escape -> ../outside/secret.txt}, outside/secret.txt."""
    allowed = tmp_path / "allowed"
    (allowed / "pkg").mkdir(parents=True)
    (allowed / "data.txt").write_text("allowed")
    (allowed / "pkg" / "mod.py").write_text("VALUE = 1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (allowed / "escape").symlink_to(outside / "secret.txt")
    return tmp_path


# --- the ABI and the ruleset's masks ----------------------------------------------------------------------


def test_abi_and_errata_never_raise() -> None:
    assert ABI >= 0
    assert landlock.errata() >= 0
    probe = landlock.probe()
    assert probe.name == "landlock" and probe.available == (ABI > 0)
    if not probe.available:
        assert "guests can read host files" in probe.detail


def test_rights_are_masked_to_the_abi() -> None:
    assert landlock.fs_rights(0) == 0
    assert landlock.fs_rights(1) == 0x1FFF
    assert landlock.fs_rights(2) == 0x3FFF
    assert landlock.fs_rights(3) == landlock.fs_rights(4) == 0x7FFF
    assert landlock.fs_rights(5) == landlock.fs_rights(7) == 0xFFFF
    old = Ruleset(abi=3)
    assert (old.handled_fs, old.handled_net, old.scoped) == (0x7FFF, 0, 0)
    mid = Ruleset(abi=4)
    assert mid.handled_net == landlock.ACCESS_NET_BIND_TCP | landlock.ACCESS_NET_CONNECT_TCP and mid.scoped == 0
    new = Ruleset(abi=7, tcp=False, scope_signal=False)
    assert (new.handled_net, new.scoped) == (0, landlock.SCOPE_ABSTRACT_UNIX_SOCKET)


def test_without_landlock_create_is_a_precise_error() -> None:
    with pytest.raises(LandlockError) as caught:
        Ruleset(abi=0).create()
    assert caught.value.errno == errno.EOPNOTSUPP
    assert caught.value.strerror is not None and caught.value.strerror.startswith("landlock:")


@needs_landlock
def test_a_missing_rule_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(LandlockError) as caught:
        Ruleset().allow_read(missing).create()
    assert caught.value.errno == errno.ENOENT
    assert str(missing) in str(caught.value)


@needs_landlock
def test_restrict_self_errors_name_the_call_and_its_errno() -> None:
    def child() -> tuple[int, str, int]:
        if os.geteuid() == 0:  # root may restrict itself without no_new_privs: leave CAP_SYS_ADMIN behind
            namespaces.enter_user_namespace()
            namespaces.drop_capabilities()
        fd = Ruleset().create()
        try:
            landlock.restrict_self(fd)
        except LandlockError as exc:
            without_nnp = exc.errno or 0, exc.strerror or ""
        finally:
            os.close(fd)
        namespaces.no_new_privs()
        return *without_nnp, _errno_of(lambda: landlock.restrict_self(-1))

    err, message, bad_fd = run_in_child(child)
    assert err == errno.EPERM
    assert message.startswith("landlock: landlock_restrict_self") and "no_new_privs" in message
    assert bad_fd == errno.EBADF


# --- the file system --------------------------------------------------------------------------------------


@needs_landlock
def test_reads_only_beneath_the_allowance(tree: Path) -> None:
    allowed, outside = tree / "allowed", tree / "outside"

    def child() -> dict[str, object]:
        Ruleset().allow_read(allowed).restrict_self()
        return {
            "read allowed": (allowed / "data.txt").read_text(),
            "list allowed": sorted(os.listdir(allowed)),
            "read nested": (allowed / "pkg" / "mod.py").read_text(),
            "read outside": _errno_of(lambda: (outside / "secret.txt").read_text()),
            "list outside": _errno_of(lambda: os.listdir(outside)),
            "symlink escape": _errno_of(lambda: (allowed / "escape").read_text()),
            "dotdot escape": _errno_of(lambda: open(f"{allowed}/pkg/../../outside/secret.txt").read()),
            "read /etc/passwd": _errno_of(lambda: Path("/etc/passwd").read_text()),
        }

    found = run_in_child(child)
    assert found["read allowed"] == "allowed"
    assert found["list allowed"] == ["data.txt", "escape", "pkg"]
    assert found["read nested"] == "VALUE = 1\n"
    for key in ("read outside", "list outside", "symlink escape", "dotdot escape", "read /etc/passwd"):
        assert found[key] == errno.EACCES, key


@needs_landlock
def test_writes_are_refused_everywhere(tree: Path) -> None:
    allowed = tree / "allowed"

    def child() -> dict[str, int]:
        Ruleset().allow_read(allowed).restrict_self()
        return {
            "overwrite allowed file": _errno_of(lambda: open(allowed / "data.txt", "w")),
            "append allowed file": _errno_of(lambda: open(allowed / "data.txt", "a")),
            "create in allowed dir": _errno_of(lambda: open(allowed / "new.txt", "x")),
            "mkdir in allowed dir": _errno_of(lambda: os.mkdir(allowed / "newdir")),
            "unlink in allowed dir": _errno_of(lambda: os.unlink(allowed / "data.txt")),
            "rename in allowed dir": _errno_of(lambda: os.rename(allowed / "data.txt", allowed / "moved")),
            "symlink in allowed dir": _errno_of(lambda: os.symlink("/etc", allowed / "etc")),
            "create in /tmp": _errno_of(lambda: open(f"/tmp/xenlike-ll-{os.getpid()}", "x")),
            "truncate allowed file": _errno_of(lambda: os.truncate(allowed / "data.txt", 0)),
        }

    found = run_in_child(child)
    for key, err in found.items():
        assert err in (errno.EACCES, errno.EXDEV), (key, err)
    assert (allowed / "data.txt").read_text() == "allowed"
    assert not (allowed / "new.txt").exists()


@needs_landlock
def test_a_python_guest_keeps_running_on_its_allowance(tree: Path) -> None:
    workload = tree / "allowed" / "pkg" / "mod.py"
    fresh = next(name for name in ("colorsys", "wave", "sndhdr", "fractions", "tabnanny") if name not in sys.modules)

    def child() -> dict[str, object]:
        Ruleset().allow_python(workload).restrict_self()
        spec = __import__("importlib.util").util.spec_from_file_location("mod", workload)
        module = __import__("importlib.util").util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return {
            "import a module not yet imported": __import__(fresh).__name__,
            "import json.tool": __import__("json.tool").__name__,
            "workload file": module.VALUE,
            "os.urandom": len(os.urandom(16)),
            "/dev/urandom": len(Path("/dev/urandom").open("rb").read(4)),
            "write /dev/null": Path(os.devnull).open("w").write("gone"),
            "time.localtime": time.localtime().tm_year > 2000,
            "getaddrinfo localhost": bool(socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)),
            "/proc/self/status": _errno_of(lambda: Path("/proc/self/status").read_text()),
            "tempfile": _errno_of(tempfile.TemporaryFile),
            "mkdtemp": _errno_of(tempfile.mkdtemp),
            "read outside": _errno_of(lambda: (tree / "outside" / "secret.txt").read_text()),
            "write the workload": _errno_of(lambda: open(workload, "a")),
            "execve": _errno_of(lambda: os.execv("/bin/true", ["true"])),
        }

    found = run_in_child(child)
    assert found["import a module not yet imported"] == fresh
    assert found["import json.tool"] == "json"
    assert found["workload file"] == 1
    assert found["os.urandom"] == 16 and found["/dev/urandom"] == 4
    assert found["write /dev/null"] == 4
    assert found["time.localtime"] and found["getaddrinfo localhost"]
    assert found["/proc/self/status"] == errno.EACCES  # the runtime does not need it; it is not allowed
    assert found["tempfile"] in (errno.EACCES, errno.ENOENT)  # writable nowhere
    assert found["mkdtemp"] in (errno.EACCES, errno.ENOENT)
    assert found["read outside"] == errno.EACCES
    assert found["write the workload"] == errno.EACCES
    assert found["execve"] == errno.EACCES


def test_python_allowance_is_minimal_and_resolved(tree: Path) -> None:
    allowance = landlock.python_allowance(tree / "allowed" / "pkg", extra=[tree / "allowed" / "missing"])
    read = [path for path, access in allowance if access == landlock.READ]
    interpreter = os.path.realpath(sys.executable)
    if os.path.exists(interpreter):
        assert any(interpreter == p or interpreter.startswith(p + "/") for p in read)
    assert str(tree / "allowed" / "pkg") in read
    assert str(tree / "allowed" / "missing") not in read
    assert all(os.path.realpath(p) == p for p in read)
    assert not any(a != b and b.startswith(a + "/") for a in read for b in read)
    assert (os.devnull, landlock.ACCESS_FS_READ_FILE | landlock.ACCESS_FS_WRITE_FILE) in allowance
    assert not any(access & landlock.ACCESS_FS_WRITE_FILE for path, access in allowance if path != os.devnull)
    assert not any(p in ("/", "/proc", "/tmp", "/home", "/root") or p.startswith("/proc/") for p, _ in allowance)


@needs_landlock
def test_a_ruleset_made_before_fork_restricts_a_child_in_its_own_mount_namespace(tree: Path) -> None:
    """How a zygote can build the ruleset once: the fd is inherited, its rules bind inodes, not mounts."""
    fd = Ruleset().allow_read(tree / "allowed").create()
    try:

        def child() -> tuple[str, int, int]:
            namespaces.enter_guest_namespaces("guest-ll")
            namespaces.hide_directory(str(tree / "outside"))
            namespaces.no_new_privs()
            landlock.restrict_self(fd)
            return (
                (tree / "allowed" / "data.txt").read_text(),
                _errno_of(lambda: os.listdir(tree / "outside")),  # the tmpfs over it is beneath no rule
                _errno_of(lambda: Path("/etc/hostname").read_text()),
            )

        data, hidden, etc = run_in_child(child)
    finally:
        os.close(fd)
    assert data == "allowed"
    assert hidden == errno.EACCES and etc == errno.EACCES


# --- threads ----------------------------------------------------------------------------------------------


@needs_landlock
def test_one_ruleset_fd_restricts_each_thread_that_asks(tree: Path) -> None:
    """restrict_self binds the calling thread only: a sibling must restrict itself, with the same fd."""
    secret = tree / "outside" / "secret.txt"

    def child() -> tuple[int, int, int]:
        fd = Ruleset().allow_read(tree / "allowed").create()
        ready, restricted, results = threading.Event(), threading.Event(), {}

        def sibling() -> None:
            ready.set()
            restricted.wait()
            results["sibling before"] = _errno_of(secret.read_text)
            namespaces.no_new_privs()  # a per-thread flag, like the domain
            landlock.restrict_self(fd)
            results["sibling after"] = _errno_of(secret.read_text)

        thread = threading.Thread(target=sibling)
        thread.start()
        ready.wait()
        namespaces.no_new_privs()
        landlock.restrict_self(fd)
        main_after = _errno_of(secret.read_text)
        restricted.set()
        thread.join()
        os.close(fd)
        return main_after, results["sibling before"], results["sibling after"]

    main_after, sibling_before, sibling_after = run_in_child(child)
    assert main_after == errno.EACCES
    assert sibling_before == 0
    assert sibling_after == errno.EACCES


# --- network and scopes -----------------------------------------------------------------------------------


@needs_net
def test_tcp_connect_only_to_allowed_ports_and_no_bind() -> None:
    with socket.socket() as allowed, socket.socket() as refused:
        for server in (allowed, refused):
            server.bind(("127.0.0.1", 0))
            server.listen()
        ok_port, no_port = allowed.getsockname()[1], refused.getsockname()[1]

        def child() -> tuple[int, int, int, int]:
            Ruleset().allow_tcp_connect(ok_port).restrict_self()

            def connect(port: int) -> None:
                with socket.socket() as sock:  # create_connection would import the idna codec: a file read
                    sock.connect(("127.0.0.1", port))

            def bind(port: int) -> None:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))

            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # UDP is outside Landlock before ABI 10
            try:
                udp_err = _errno_of(lambda: udp.connect(("127.0.0.1", no_port)))
            finally:
                udp.close()
            return (
                _errno_of(lambda: connect(ok_port)),
                _errno_of(lambda: connect(no_port)),
                _errno_of(lambda: bind(0)),
                udp_err,
            )

        ok, no, bound, udp = run_in_child(child)
    assert ok == 0
    assert no == errno.EACCES
    assert bound == errno.EACCES
    assert udp == 0


@needs_scopes
def test_signal_scope_refuses_a_signal_to_the_parent() -> None:
    parent = os.getpid()

    def child() -> tuple[int, int]:
        Ruleset().restrict_self()
        return _errno_of(lambda: os.kill(parent, 0)), _errno_of(lambda: os.kill(os.getpid(), 0))

    to_parent, to_itself = run_in_child(child)
    assert to_parent == errno.EPERM
    assert to_itself == 0


@needs_scopes
def test_the_parent_can_still_signal_a_restricted_child() -> None:
    """The hypervisor stops and continues guests: a domain closes signals going out, not coming in."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            Ruleset().restrict_self()
            os.write(write_end, b"r")
            signal.pause()
        finally:
            os._exit(0)
    try:
        os.close(write_end)
        assert os.read(read_end, 1) == b"r"
        os.kill(pid, signal.SIGSTOP)
        os.waitpid(pid, os.WUNTRACED)
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    finally:
        os.close(read_end)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@needs_scopes
def test_abstract_socket_scope_refuses_a_server_outside() -> None:
    name = f"\0xenlike-test-landlock-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(name)
        server.listen()

        def child() -> tuple[int, int]:
            Ruleset().restrict_self()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                outside = _errno_of(lambda: client.connect(name))
            inner = f"\0xenlike-test-landlock-inner-{os.getpid()}"
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mine,
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
            ):
                mine.bind(inner)
                mine.listen()
                inside = _errno_of(lambda: client.connect(inner))
            return outside, inside

        outside, inside = run_in_child(child)
    assert outside == errno.EPERM
    assert inside == 0
