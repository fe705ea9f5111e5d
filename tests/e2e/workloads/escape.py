"""A hostile guest that tries every route out of its domain with plain Python, and reports each answer.

workload_args (flags; the test finds each target on the host and passes it):

  --run-dir DIR            the host's run directory (toolstack.sock, console.sock, logs/)
  --victim-pid PID         another domain's process
  --victim-name NAME       its name (what a toolstack request names)
  --victim-image PATH      its disk image
  --dom0-pid PID           dom0's process
  --hypervisor-pid PID     the hypervisor's process
  --planted PATH           a host file outside the guest's allowance
  --planted-link PATH      a symlink to it
  --host-socket PATH       a UNIX stream socket the host listens on
  --abstract NAME          an abstract UNIX stream socket the host listens on
  --tcp-port N             a TCP port the host listens on at 127.0.0.1
  --udp-port N             a UDP port the host listens on at 127.0.0.1
  --forks N                how many processes to try to fork (stops there)

Each route is tried once and never crashes the guest. Its outcome is
``{"allowed": bool, "errno": "EPERM" | None, "error": type, "message": str,
"detail": ...}``; the guest prints ``ESCAPES {route: outcome, ...}`` on its
console, then waits to be shut down. What a route did when allowed is undone at
once where it can be (a stopped victim is continued, a traced one detached and
continued, a file written in /tmp removed, the victim's disk rewritten with the
bytes it held, forked processes killed and reaped).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import json
import mmap
import os
import signal
import socket
import threading
import traceback

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

PTRACE_ATTACH, PTRACE_DETACH = 16, 17
WALL = 0x40000000  # __WALL: wait for any thread of a traced process
NR_PIDFD_GETFD = 438
PR_GET_SECCOMP, PR_GET_NO_NEW_PRIVS = 21, 39
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
EXTRA_MEMORY = 2 << 30


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                                   ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capabilities() -> dict:
    """This thread's capability sets (``capget(2)``, version 3), which need no /proc."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return {name: getattr(data[0], name) | getattr(data[1], name) << 32
            for name in ("effective", "permitted", "inheritable")}


class Refused(Exception):
    """A route that failed without an errno (no reply, nothing received)."""


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def failure(exc: BaseException) -> dict:
    """A refused route's answer."""
    if isinstance(exc, OSError):
        return {"allowed": False, "errno": errno.errorcode.get(exc.errno or 0), "error": type(exc).__name__,
                "message": str(exc)}
    return {"allowed": False, "errno": None, "error": type(exc).__name__, "message": str(exc)[:300]}


def outcome(action) -> dict:
    """Run one route; its answer as a JSON-ready dict. Never raises."""
    try:
        detail = action()
    except BaseException as exc:  # noqa: BLE001 - every failure is an answer to report
        return failure(exc)
    return {"allowed": True, "errno": None, "error": None, "message": "", "detail": detail}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="escape")
    for flag in ("--run-dir", "--victim-name", "--victim-image", "--planted", "--planted-link", "--host-socket",
                 "--abstract"):
        p.add_argument(flag, required=True)
    for flag in ("--victim-pid", "--dom0-pid", "--hypervisor-pid", "--tcp-port", "--udp-port"):
        p.add_argument(flag, type=int, required=True)
    p.add_argument("--forks", type=int, default=200)
    return p.parse_args(argv)


# --- routes: signals ---


def stop_and_continue(pid: int) -> str:
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGCONT)  # only reached if the stop was allowed
    return "stopped and continued"


def pidfd_signal(pid: int) -> str:
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, 0)
    finally:
        os.close(fd)
    return "signal 0 through a pidfd"


def pidfd_getfd(pid: int) -> str:
    pidfd = os.pidfd_open(pid)
    try:
        for target in range(3, 64):
            result = _libc.syscall(ctypes.c_long(NR_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(target),
                                   ctypes.c_uint(0))
            if result >= 0:
                os.close(result)
                return f"took fd {target}"
            err = ctypes.get_errno()
            if err != errno.EBADF:
                raise OSError(err, f"pidfd_getfd(victim, {target}): {os.strerror(err)}")
        raise Refused("no fd to take")
    finally:
        os.close(pidfd)


# --- routes: the host's sockets ---


def unix_connect(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(path)
        sock.sendall(b"escape\n")
    return "connected"


def toolstack_pause(run_dir: str, victim: str) -> str:
    from xenlike.kernel.rundir import RunDir
    from xenlike.tools.toolstack_client import ToolstackClient

    with ToolstackClient(RunDir(run_dir), timeout=5) as client:
        client.call("pause", domain=victim)
    return f"paused {victim}"


def tcp_connect(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"escape\n")
    return "connected"


def tcp_listen() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock.getsockname()[1]


def udp_send(port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"escape", ("127.0.0.1", port))
    return "sent (the host says whether it arrived)"


# --- routes: files ---


def read_file(path: str) -> dict:
    """Read a file; its size and digest (never its contents, which may be anybody's secrets)."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def rewrite_disk(path: str) -> str:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        data = os.pread(fd, 4096, 0)
        os.pwrite(fd, data, 0)  # the same bytes: write access shown, nothing changed
    finally:
        os.close(fd)
    return f"rewrote {len(data)} bytes in place"


def write_new_file(directory: str) -> str:
    path = os.path.join(directory, f"xl-escape-{os.getpid()}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"escaped\n")
    finally:
        os.close(fd)
        os.unlink(path)
    return path


def make_symlink(target: str) -> dict:
    link = f"/tmp/xl-escape-link-{os.getpid()}"
    os.symlink(target, link)
    try:
        return read_file(link)
    finally:
        os.unlink(link)


def dotdot_path(target: str) -> str:
    """A path that starts inside the allowance (the stdlib) and climbs out with ``..``."""
    start = os.path.dirname(os.__file__)
    return start + "/.." * start.count("/") + target


# --- routes: other processes through /proc and system calls ---


def listdir_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def victim_memfd(pid: int) -> str:
    """Open the victim's guest memory (a memfd) through /proc/PID/fd/N and read its first page."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        names = ["3"]  # the listing is refused: try an fd by number, so the open itself answers
    for name in sorted(names, key=int):
        path = f"/proc/{pid}/fd/{name}"
        try:
            target = os.readlink(path)
        except OSError:
            target = ""
        if target and "memfd:" not in target:
            continue
        with open(path, "rb") as f:
            page = f.read(4096)
        return f"fd {name} ({target}): read {len(page)} bytes"
    raise Refused("no memfd among the victim's fds")


def first_readable_mapping(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[1].startswith("r"):
                return int(fields[0].split("-")[0], 16)
    raise Refused("no readable mapping")


def victim_proc_mem(pid: int) -> str:
    try:
        address = first_readable_mapping(pid)
    except OSError:
        address = 0x400000  # maps refused: the open of mem answers for itself
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return f"read {len(os.pread(fd, 16, address))} bytes at {address:#x}"
    finally:
        os.close(fd)


def ptrace_attach(pid: int) -> str:
    _check(_libc.ptrace(PTRACE_ATTACH, pid, None, None), "ptrace(PTRACE_ATTACH)")
    try:
        os.waitpid(pid, WALL)
    finally:
        _libc.ptrace(PTRACE_DETACH, pid, None, None)
        os.kill(pid, signal.SIGCONT)  # the attach's SIGSTOP may have stopped its other threads
    return "attached and detached"


def process_vm_readv(pid: int) -> str:
    try:
        address = first_readable_mapping(pid)
    except OSError:
        address = 0x400000
    buffer = ctypes.create_string_buffer(16)
    local = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), 16)
    remote = _Iovec(ctypes.c_void_p(address), 16)
    got = _check(_libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0),
                 "process_vm_readv")
    return f"read {got} bytes at {address:#x}"


# --- routes: the kernel's other limits ---


def in_child(action) -> dict:
    """Run a route in a forked child (so a namespace or mount it makes is the child's alone); its outcome."""
    try:
        read_end, write_end = os.pipe()
    except OSError as exc:
        return failure(exc)
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return failure(exc)
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(outcome(action)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"allowed": False, "errno": None, "error": "child died", "message": ""}


def unshare(flags: int) -> str:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")
    return "unshared"


def mount() -> str:
    """A tmpfs on /tmp, in a mount namespace of this child's own (or, if that was refused, a mount anyway)."""
    if _libc.unshare(ctypes.c_int(CLONE_NEWNS)) == 0:
        _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, MS_REC|MS_PRIVATE)")
        _check(_libc.mount(b"xl-escape", b"/tmp", b"tmpfs", 0, None), "mount(tmpfs, /tmp)")
        return "mounted a tmpfs on /tmp in a mount namespace of its own"
    # No namespace of its own: a mount on a path that does not exist harms nothing; EPERM is the refusal.
    _check(_libc.mount(b"xl-escape", b"/nonexistent-xl-escape", b"tmpfs", 0, None), "mount(tmpfs)")
    return "mounted"


def allocate(size: int) -> int:
    block = bytearray(size)
    length = len(block)
    del block
    return length


def fork_many(limit: int) -> dict:
    """Fork up to ``limit`` processes (each blocks on a pipe), then kill and reap them all."""
    read_end, write_end = os.pipe()
    children: list[int] = []
    failure: OSError | None = None
    try:
        while len(children) < limit:
            try:
                pid = os.fork()
            except OSError as exc:
                failure = exc
                break
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.close(write_end)
                    os.read(read_end, 1)
                finally:
                    os._exit(0)
            children.append(pid)
    finally:
        os.close(write_end)
        os.close(read_end)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
    if failure is not None:
        raise OSError(failure.errno, f"fork refused after {len(children)} processes: {failure.strerror}")
    return {"forked": len(children)}


# --- what the guest is ---


def identity(ctx) -> dict:
    status: dict[str, str] | str
    try:
        with open("/proc/self/status") as f:
            status = {k: v.strip() for k, _, v in (line.partition(":") for line in f)
                      if k in ("NoNewPrivs", "Seccomp", "CapEff", "CapBnd")}
    except OSError as exc:
        status = f"{errno.errorcode.get(exc.errno or 0)}: {exc}"
    fds = {}
    for fd in range(1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        kind = {0o010000: "fifo", 0o020000: "chr", 0o040000: "dir", 0o060000: "blk", 0o100000: "reg",
                0o120000: "lnk", 0o140000: "sock"}.get(st.st_mode & 0o170000, "anon")
        try:
            kind += " " + os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            kind += f" size {st.st_size}" if kind == "reg" else ""
        fds[fd] = kind
    return {
        "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
        "hostname": socket.gethostname(), "proc_self_status": status, "capabilities": capabilities(),
        "no_new_privs": _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
        "seccomp_mode": _libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0),
        "pid": os.getpid(), "ppid": os.getppid(), "fds": fds, "memory": ctx.memory.size,
    }


def thread_routes(planted: str, victim: int, port: int) -> dict:
    """The routes a thread other than the workload's could take (the event loop's, a vCPU's)."""
    return {"read_planted": outcome(lambda: read_file(planted)),
            "signal_probe_victim": outcome(lambda: os.kill(victim, 0)),
            "tcp_connect_host": outcome(lambda: tcp_connect(port)),
            "write_tmp": outcome(lambda: write_new_file("/tmp")),
            "pid": os.getpid(), "thread": threading.current_thread().name}


def on_event_loop(ctx, routes) -> dict:
    """Run ``routes()`` on the kernel's event-loop thread (a reader callback there), and wait for it."""
    read_end, write_end = os.pipe()
    done = threading.Event()
    result: dict = {}

    def callback(_fd: int) -> None:
        ctx.events.remove_reader(read_end)
        try:
            result.update(routes())
        finally:
            done.set()

    try:
        ctx.events.add_reader(read_end, callback)
        os.write(write_end, b"!")
        if not done.wait(10):
            raise Refused("the event loop never ran the callback")
        return result
    finally:
        os.close(read_end)
        os.close(write_end)


def run(ctx):
    args = parse(ctx.args)
    victim = args.victim_pid
    results: dict = {}

    def attempt(name, action):
        results[name] = action if isinstance(action, dict) else outcome(action)

    try:
        results["identity"] = outcome(lambda: identity(ctx))
        # What the host handed over with the process: its environment (names only).
        attempt("host_environment", lambda: sorted(os.environ))
        # Signals: probes with signal 0, one real stop (continued at once) on the victim only.
        attempt("signal_probe_victim", lambda: os.kill(victim, 0))
        attempt("signal_probe_dom0", lambda: os.kill(args.dom0_pid, 0))
        attempt("signal_probe_hypervisor", lambda: os.kill(args.hypervisor_pid, 0))
        attempt("signal_probe_parent", lambda: os.kill(os.getppid(), 0))
        attempt("signal_probe_victim_group", lambda: os.killpg(victim, 0))
        attempt("signal_probe_everyone", lambda: os.kill(-1, 0))
        attempt("stop_and_continue_victim", lambda: stop_and_continue(victim))
        attempt("pidfd_signal_victim", lambda: pidfd_signal(victim))
        attempt("pidfd_getfd_victim", lambda: pidfd_getfd(victim))
        # The host's control sockets and run directory.
        attempt("toolstack_pause_victim", lambda: toolstack_pause(args.run_dir, args.victim_name))
        attempt("toolstack_socket_connect", lambda: unix_connect(os.path.join(args.run_dir, "toolstack.sock")))
        attempt("console_socket_connect", lambda: unix_connect(os.path.join(args.run_dir, "console.sock")))
        attempt("run_dir_list", lambda: sorted(os.listdir(args.run_dir)))
        attempt("run_dir_log", lambda: read_file(os.path.join(args.run_dir, "logs", "hypervisor.log")))
        # Other processes through /proc and system calls.
        attempt("proc_list", listdir_pids)
        attempt("proc_victim_environ", lambda: read_file(f"/proc/{victim}/environ"))
        attempt("proc_victim_fd_memory", lambda: victim_memfd(victim))
        attempt("proc_victim_mem", lambda: victim_proc_mem(victim))
        attempt("ptrace_attach_victim", lambda: ptrace_attach(victim))
        attempt("process_vm_readv_victim", lambda: process_vm_readv(victim))
        # Files.
        attempt("victim_disk_read", lambda: read_file(args.victim_image))
        attempt("victim_disk_write", lambda: rewrite_disk(args.victim_image))
        attempt("read_shadow", lambda: read_file("/etc/shadow"))
        attempt("read_passwd", lambda: read_file("/etc/passwd"))
        attempt("read_planted", lambda: read_file(args.planted))
        attempt("stat_planted", lambda: os.stat(args.planted).st_size)
        attempt("write_tmp", lambda: write_new_file("/tmp"))
        attempt("write_dev_shm", lambda: write_new_file("/dev/shm"))
        attempt("symlink_create", lambda: make_symlink(args.planted))
        attempt("symlink_read", lambda: read_file(args.planted_link))
        attempt("dotdot_read", lambda: read_file(dotdot_path(args.planted)))
        # The network and the host's other sockets.
        attempt("tcp_connect_host", lambda: tcp_connect(args.tcp_port))
        attempt("tcp_listen", tcp_listen)
        attempt("udp_send_host", lambda: udp_send(args.udp_port))
        attempt("abstract_socket_connect", lambda: unix_connect("\0" + args.abstract))
        attempt("host_socket_connect", lambda: unix_connect(args.host_socket))
        attempt("interfaces", lambda: [name for _index, name in socket.if_nameindex()])
        # Other threads and vCPUs of this guest.
        routes = lambda: thread_routes(args.planted, victim, args.tcp_port)  # noqa: E731
        attempt("event_loop_thread", lambda: on_event_loop(ctx, routes))
        if ctx.vcpus:
            attempt("vcpu1", lambda: ctx.vcpus[0].call(thread_routes, args.planted, victim, args.tcp_port))
        # Namespaces, mounts, memory and processes.
        attempt("unshare_user", in_child(lambda: unshare(CLONE_NEWUSER)))
        attempt("unshare_mount", in_child(lambda: unshare(CLONE_NEWNS)))
        attempt("mount", in_child(mount))
        attempt("mmap_past_memory", lambda: mmap.mmap(-1, ctx.memory.size + EXTRA_MEMORY).close())
        attempt("allocate_past_memory", lambda: allocate(ctx.memory.size + EXTRA_MEMORY))
        attempt("fork_many", lambda: fork_many(args.forks))
    except BaseException:  # noqa: BLE001 - report what went wrong rather than crash
        results["escape_workload_error"] = traceback.format_exc()
    print("ESCAPES " + json.dumps(results), flush=True)
    ctx.shutdown.wait()
