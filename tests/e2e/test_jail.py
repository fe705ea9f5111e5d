"""The jail, proved by a hostile guest: every route out is refused jailed, and open with ``up --no-jail``.

The escape workload (``workloads/escape.py``) is handed everything it aims at
(the run directory, a victim domain's pid and disk image, dom0's and the
hypervisor's pids, a planted host file and its symlink, sockets the test
listens on) and tries each route with plain Python. Jailed, each is refused
with a precise errno and nobody is harmed; without the jail the same routes are
open, so the refusals are the jail's and not the machine's. A host run as
``nobody`` gets the refusals that do not need root. Routes the jail does not
close yet are strict xfails: each passes, and so fails the suite, once closed. One is
left: ``stat(2)`` of a host path, which Landlock does not cover on this kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

import xenlike
from xenlike.hypervisor.jail import NPROC_BASE, NPROC_PER_VCPU, mechanisms
from xenlike.kernel import landlock

from .conftest import WORKLOADS, Host, wait_for, workload
from .test_lifecycle import write_cluster

SECRET = b"the escape test's planted file: no guest may read this\n"
HOST_SECRET_VARIABLE = "XL_ESCAPE_HOST_SECRET"
IMAGE_BYTES = 1 << 20
FORKS = 200  # well past a jailed guest's process limit, and bounded
ESCAPE_VCPUS = 2
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

# What the jail needs of this kernel for the expectations below.
_available = {m.name for m in mechanisms() if m.available}
_NEEDED = {"namespaces", "loopback", "no-new-privs", "rlimits", "landlock", "seccomp"}
needs_jail = pytest.mark.skipif(
    not _NEEDED <= _available or landlock.abi_version() < 6,
    reason=f"the jail lacks {sorted(_NEEDED - _available)} (Landlock ABI {landlock.abi_version()}; scopes need 6)",
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not {"uid-per-domain", "private-proc"} <= _available,
    reason="a uid per domain and a private /proc need root",
)


class Targets:
    """What the test plants on the host for the guest to aim at, and listeners that see what reached them.

    Everything is world-searchable and world-readable, and the UNIX socket is
    one the guest's uid may connect to (anyone's as root, the host user's own
    otherwise), so that only the jail, never a file's mode, keeps a guest out.
    """

    def __init__(self, owner: int = 0) -> None:
        self.sockets: list[socket.socket] = []
        self.root = Path(tempfile.mkdtemp(prefix="xl-plant-", dir="/tmp"))
        try:
            self.root.chmod(0o755)
            self.planted = self.root / "secret"
            self.planted.write_bytes(SECRET)
            self.planted.chmod(0o644)
            self.link = self.root / "link"
            self.link.symlink_to(self.planted)
            self.config_dir = self.root / "configs"
            self.config_dir.mkdir(mode=0o755)
            image_dir = self.root / "images"
            image_dir.mkdir(mode=0o755)
            self.image = image_dir / "victim.img"
            contents = random.Random(1234).randbytes(IMAGE_BYTES)
            self.image.write_bytes(contents)
            self.image_sha256 = hashlib.sha256(contents).hexdigest()
            os.chown(image_dir, owner, owner)
            os.chown(self.image, owner, owner)
            self.tcp = self._listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
            self.udp = self._listen(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0))
            self.host_socket_path = self.root / "host.sock"
            self.host_unix = self._listen(socket.AF_UNIX, socket.SOCK_STREAM, str(self.host_socket_path))
            # As root, a socket anyone may connect to; otherwise one only its owner (the host's user) may.
            os.chown(self.host_socket_path, owner, owner)
            self.host_socket_path.chmod(0o777 if owner == 0 else 0o700)
            self.abstract = f"xl-escape-{secrets.token_hex(6)}"
            self.abstract_unix = self._listen(socket.AF_UNIX, socket.SOCK_STREAM, "\0" + self.abstract)
        except BaseException:
            self.close()
            raise

    def _listen(self, family: int, kind: int, address: str | tuple[str, int]) -> socket.socket:
        sock = socket.socket(family, kind)
        self.sockets.append(sock)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        sock.setblocking(False)
        return sock

    def reached(self) -> dict[str, bool]:
        """Which listener got a connection or a datagram: all are queued before the guest reports, so no wait."""
        seen = {}
        for name, sock in (("tcp", self.tcp), ("host_unix", self.host_unix), ("abstract_unix", self.abstract_unix)):
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                seen[name] = False
            else:
                conn.close()
                seen[name] = True
        try:
            self.udp.recv(64)
            seen["udp"] = True
        except BlockingIOError:
            seen["udp"] = False
        return seen

    def image_intact(self) -> bool:
        return hashlib.sha256(self.image.read_bytes()).hexdigest() == self.image_sha256

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class EscapeRun:
    """One host with a victim, and what the escape guest reported there."""

    host: Host
    targets: Targets
    victim: dict  # the victim's row of ``list -l``
    dom0_pid: int
    results: dict
    reached: dict[str, bool]
    victim_log_ticks: int


def up_with_victim(host: Host, targets: Targets, *up_args: str, env: dict[str, str] | None = None) -> dict:
    """Start ``host`` with one victim (ticking, a disk of known contents); ``list -l``'s rows by name."""
    victim = {"name": "victim", "workload": "ticker", "workload_args": ["--interval", "0.1"],
              "disk": [f"vdev=xvda, target={targets.image}"]}
    cluster = str(write_cluster(targets.config_dir, [victim]))
    if env is None:
        host.up(*up_args, cluster)
    else:  # Host.xl with an environment of the test's own
        result = subprocess.run([sys.executable, "-m", "xenlike", "--run-dir", str(host.path), "up", "-d",
                                 "--memory", "1024", *up_args, cluster],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, f"up failed: {result.stderr}"
        host.hypervisor_pid = host.run_dir.running_pid()
    wait_for(lambda: "tick 1" in host.log("victim"), what="the victim's first tick")
    return {row["name"]: row for row in host.call("list", long=True)}


def reported(host: Host, name: str, key: str, timeout: float = 60.0) -> dict:
    """The JSON a guest printed on its console as one whole ``key {...}`` line (a long line arrives in pieces)."""
    def find() -> dict | None:
        for line in host.log(name).split("\n")[:-1]:  # complete lines only
            if line.startswith(key + " "):
                return json.loads(line[len(key) + 1:])
        return None

    return wait_for(find, timeout, f"{key} on the console of {name}")


def escape(host: Host, targets: Targets, rows: dict) -> EscapeRun:
    """Create the escape guest aimed at ``rows``' victim, dom0 and the hypervisor; what it reported."""
    assert host.hypervisor_pid is not None
    victim, dom0 = rows["victim"], rows["Domain-0"]
    args = ["--run-dir", str(host.path), "--victim-pid", str(victim["info"]["pid"]), "--victim-name", "victim",
            "--victim-image", str(targets.image), "--dom0-pid", str(dom0["info"]["pid"]),
            "--hypervisor-pid", str(host.hypervisor_pid), "--planted", str(targets.planted),
            "--planted-link", str(targets.link), "--host-socket", str(targets.host_socket_path),
            "--abstract", targets.abstract, "--tcp-port", str(targets.tcp.getsockname()[1]),
            "--udp-port", str(targets.udp.getsockname()[1]), "--forks", str(FORKS)]
    cfg = targets.config_dir / "escape.cfg"
    cfg.write_text(f'name = "escape"\nmemory = 32\nvcpus = {ESCAPE_VCPUS}\nworkload = "{workload("escape")}"\n'
                   f"workload_args = [{', '.join(json.dumps(a) for a in args)}]\n")
    cfg.chmod(0o644)
    ticks = host.log("victim").count("tick ")
    host.xl("create", str(cfg))
    results = reported(host, "escape", "ESCAPES")
    assert "escape_workload_error" not in results, results["escape_workload_error"]
    return EscapeRun(host, targets, victim, dom0["info"]["pid"], results, targets.reached(), ticks)


def leftovers(pid: int) -> list[str]:
    """Files the escape guest (process ``pid``) made in /tmp and /dev/shm and did not remove."""
    return [str(p) for d in ("/tmp", "/dev/shm") for p in Path(d).glob(f"xl-escape-*{pid}")]


def remove_leftovers(run: EscapeRun) -> None:
    for path in leftovers(run.results["identity"]["detail"]["pid"]):
        Path(path).unlink(missing_ok=True)


# --- assertions shared by the root and the nobody hosts ---


def found(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text`` (which must hold it)."""
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in {text!r}"
    return match.group(1)


def refused(results: dict, route: str, errno: str | None, error: str | None = None) -> None:
    outcome = results[route]
    assert outcome["allowed"] is False, f"{route} was allowed: {outcome}"
    if errno is not None:
        assert outcome["errno"] == errno, f"{route}: expected {errno}, got {outcome}"
    if error is not None:
        assert outcome["error"] == error, f"{route}: expected {error}, got {outcome}"


# Routes refused alike with or without root, and the errno each gets.
REFUSED = {
    # Landlock's signal scope (and, as root, another uid).
    **dict.fromkeys(["signal_probe_victim", "signal_probe_dom0", "signal_probe_hypervisor", "signal_probe_parent",
                     "signal_probe_victim_group", "stop_and_continue_victim", "pidfd_signal_victim"], "EPERM"),
    # seccomp: kill(-1), ptrace, process_vm_readv, pidfd_getfd, unshare, mount.
    **dict.fromkeys(["signal_probe_everyone", "ptrace_attach_victim", "process_vm_readv_victim",
                     "pidfd_getfd_victim", "unshare_user", "unshare_mount", "mount"], "EPERM"),
    # The run directory is under an empty mode-000 tmpfs.
    **dict.fromkeys(["toolstack_socket_connect", "console_socket_connect", "run_dir_list", "run_dir_log"], "EACCES"),
    # Landlock: nothing read outside the allowance, nothing written anywhere, however the path is spelt.
    **dict.fromkeys(["victim_disk_read", "victim_disk_write", "read_shadow", "read_passwd", "read_planted",
                     "write_tmp", "write_dev_shm", "symlink_create", "symlink_read", "dotdot_read"], "EACCES"),
    # TCP is the network namespace's: the host's 127.0.0.1 is not the guest's (nothing listens on its own
    # loopback). A new UNIX socket (abstract or pathname) is refused by seccomp.
    "tcp_connect_host": "ECONNREFUSED", "abstract_socket_connect": "EACCES",
    # rlimits: address space and processes.
    "mmap_past_memory": "ENOMEM", "fork_many": "EAGAIN",
}
# /proc: as root a procfs with hidepid=invisible (other processes do not exist: ENOENT) that Landlock
# keeps unreadable; in a user namespace an empty mode-000 tmpfs (EACCES).
PROC_ROUTES = ["proc_victim_environ", "proc_victim_fd_memory", "proc_victim_mem"]


def assert_refused_everything(run: EscapeRun, proc_errno: str, toolstack: tuple[str | None, str]) -> None:
    results = run.results
    for route, errno in REFUSED.items():
        refused(results, route, errno)
    refused(results, "proc_list", "EACCES")
    for route in PROC_ROUTES:
        refused(results, route, proc_errno)
    refused(results, "toolstack_pause_victim", *toolstack)
    refused(results, "allocate_past_memory", None, "MemoryError")
    limit = NPROC_BASE + NPROC_PER_VCPU * ESCAPE_VCPUS
    forked = int(found(r"after (\d+) processes", results["fork_many"]["message"]))
    assert 0 < forked < limit, results["fork_many"]  # threads count too
    # UDP is not filtered, but goes to the guest's own loopback: the host's listener gets nothing.
    assert results["udp_send_host"]["allowed"] is True
    assert results["tcp_listen"]["allowed"] is True  # on its own loopback, which nothing outside reaches
    assert results["interfaces"]["detail"] == ["lo"]
    assert {k: v for k, v in run.reached.items() if k != "host_unix"} == \
        {"tcp": False, "abstract_unix": False, "udp": False}, run.reached
    for other in ("event_loop_thread", "vcpu1"):
        routes = results[other]
        assert routes["allowed"] is True, routes  # the route ran there, and was refused there
        for route, errno in (("read_planted", "EACCES"), ("signal_probe_victim", "EPERM"),
                             ("tcp_connect_host", "ECONNREFUSED"), ("write_tmp", "EACCES")):
            refused(routes["detail"], route, errno)
    vcpu1 = results["vcpu1"]["detail"]
    assert vcpu1["pid"] != results["identity"]["detail"]["pid"]  # another process: the vCPU's own
    assert results["event_loop_thread"]["detail"]["thread"] == "evtchn"
    identity = results["identity"]["detail"]
    assert identity["hostname"] == "escape"
    assert identity["no_new_privs"] == 1 and identity["seccomp_mode"] == 2  # SECCOMP_MODE_FILTER
    assert identity["proc_self_status"].startswith("EACCES")  # even its own /proc is out of reach
    assert identity["groups"] == []
    assert not leftovers(identity["pid"])


def assert_unharmed(run: EscapeRun) -> None:
    """The victim runs on (same process, ticking, not paused), its node and disk intact; dom0 and the hypervisor too."""
    host, victim = run.host, run.victim
    domid, pid = victim["domid"], victim["info"]["pid"]
    assert run.targets.image_intact()
    listing = host.xl("list").stdout
    assert re.search(rf"^victim\s+{domid}\s", listing, re.M) and re.search(r"^escape\s", listing, re.M), listing
    rows = {row["name"]: row for row in host.call("list", long=True)}
    assert rows["victim"]["info"]["pid"] == pid and "p" not in rows["victim"]["state"], rows["victim"]
    assert host.xs_read(f"/local/domain/{domid}/name") == "victim"
    ticks = host.log("victim").count("tick ")
    assert ticks >= run.victim_log_ticks
    wait_for(lambda: host.log("victim").count("tick ") > ticks, what="the victim's console to keep ticking")
    for what, process in (("dom0", run.dom0_pid), ("the hypervisor", host.hypervisor_pid), ("the victim", pid)):
        assert psutil.Process(process).status() != psutil.STATUS_ZOMBIE, what
    assert host.run_dir.running_pid() == host.hypervisor_pid


# --- as root, jailed: one run that every test below reads ---


@pytest.fixture(scope="module")
def jailed() -> Iterator[EscapeRun]:
    if not _NEEDED <= _available or os.geteuid() != 0:
        pytest.skip("needs root and every jail mechanism")
    targets, host, run = Targets(), Host(), None
    try:
        env = {**os.environ, HOST_SECRET_VARIABLE: secrets.token_hex(8)}
        run = escape(host, targets, up_with_victim(host, targets, env=env))
        yield run
    except BaseException:
        host.print_logs()
        raise
    finally:
        host.teardown()
        if run is not None:
            remove_leftovers(run)
        targets.close()


@needs_jail
@needs_root
def test_every_route_out_is_refused_with_its_errno(jailed: EscapeRun) -> None:
    # The toolstack's client stops first: it cannot even see the run directory's pid file.
    assert_refused_everything(jailed, proc_errno="ENOENT", toolstack=(None, "HostNotRunning"))


@needs_jail
@needs_root
def test_the_guest_is_its_own_uid_with_no_capability(jailed: EscapeRun) -> None:
    identity = jailed.results["identity"]["detail"]
    domid = jailed.host.domains()["escape"]["domid"]
    info = jailed.host.xl("info").stdout
    base = int(found(r"--jail-uid-base (\d+)", info))
    assert identity["uid"] == [base + domid] * 3 and identity["gid"] == [base + domid] * 3
    assert identity["capabilities"] == {"effective": 0, "permitted": 0, "inheritable": 0}


@needs_jail
@needs_root
def test_dom0_the_hypervisor_and_the_victim_are_unharmed(jailed: EscapeRun) -> None:
    assert_unharmed(jailed)


@needs_jail
@needs_root
def test_xenlike_info_lists_each_mechanism_of_the_jail_as_on_or_off(jailed: EscapeRun) -> None:
    info = dict(re.findall(r"^(\S+)\s*: (.*)$", jailed.host.xl("info").stdout, re.M))
    assert info.get("jail") == "on", "xenlike info does not say the jail is on"
    for mechanism in mechanisms():
        key = f"jail_{mechanism.name.replace('-', '_')}"
        assert key in info, f"xenlike info does not list {mechanism.name}"
        assert info[key].split()[0] == ("on" if mechanism.available else "off"), (key, info[key])


@needs_jail
@needs_root
def test_a_unix_socket_on_the_host_is_out_of_reach(jailed: EscapeRun) -> None:
    refused(jailed.results, "host_socket_connect", "EACCES")
    assert jailed.reached["host_unix"] is False


@needs_jail
@needs_root
def test_the_host_s_environment_is_not_the_guest_s(jailed: EscapeRun) -> None:
    assert HOST_SECRET_VARIABLE not in jailed.results["host_environment"]["detail"]


@needs_jail
@needs_root
@pytest.mark.xfail(strict=True, reason="Landlock does not cover stat(2): a guest learns which host paths exist, "
                   "their size, owner and times")
def test_the_host_s_files_are_out_of_sight(jailed: EscapeRun) -> None:
    refused(jailed.results, "stat_planted", None)


# --- as root, without the jail: the same routes are open ---


@needs_root
def test_without_the_jail_the_same_routes_are_open(host: Host, targets: Targets) -> None:
    rows = up_with_victim(host, targets, "--no-jail")
    run = escape(host, targets, rows)
    try:
        results = run.results
        closed = {route: outcome for route, outcome in results.items()
                  if isinstance(outcome, dict) and outcome.get("allowed") is False}
        assert not closed, f"routes refused without the jail: {closed}"
        assert results["read_planted"]["detail"]["sha256"] == hashlib.sha256(SECRET).hexdigest()
        for route in ("symlink_read", "symlink_create", "dotdot_read"):
            assert results[route]["detail"] == results["read_planted"]["detail"], route
        assert results["read_shadow"]["detail"]["bytes"] > 0
        victim_pid = rows["victim"]["info"]["pid"]
        assert {victim_pid, run.dom0_pid, host.hypervisor_pid} <= set(results["proc_list"]["detail"])
        assert "memfd:xenlike-d" in results["proc_victim_fd_memory"]["detail"]
        assert "toolstack.sock" in results["run_dir_list"]["detail"]
        assert results["interfaces"]["detail"] == [name for _index, name in socket.if_nameindex()]
        assert run.reached == {"tcp": True, "host_unix": True, "abstract_unix": True, "udp": True}
        assert results["fork_many"]["detail"] == {"forked": FORKS}
        assert results["allocate_past_memory"]["detail"] > 2 << 30
        for other in ("event_loop_thread", "vcpu1"):
            assert all(results[other]["detail"][route]["allowed"] for route in ("read_planted", "tcp_connect_host"))
        identity = results["identity"]["detail"]
        assert identity["uid"] == [0, 0, 0] and identity["no_new_privs"] == 0 and identity["seccomp_mode"] == 0
        assert identity["capabilities"]["effective"] != 0
        assert identity["hostname"] == socket.gethostname()
        info = dict(re.findall(r"^(\S+)\s*: (.*)$", host.xl("info").stdout, re.M))
        assert info.get("jail", "").startswith("OFF")
    finally:  # undo what the open routes did: the toolstack paused the victim
        host.xl("unpause", "victim", check=False)
        remove_leftovers(run)
    # What the guest did was undone as it went: files removed, the disk rewritten with its own bytes.
    assert not leftovers(run.results["identity"]["detail"]["pid"])
    assert_unharmed(run)


# --- features the other e2e tests do not already exercise under the jail ---
# Registered names, ``file.py:function``, several vCPUs with work on vCPU 1, disks, consoles,
# shutdown, reboot, on_crash, pause/unpause and CPU time in ``list`` are the other e2e tests'
# (test_lifecycle, test_sched, test_blk, test_console), which run jailed by default.


@needs_jail
def test_a_stdlib_module_function_workload_runs_jailed(host: Host, tmp_path: Path) -> None:
    """``pprint:pprint``: the module is found by name, its file added to what the guest may read."""
    host.up(str(write_cluster(tmp_path, [{"name": "pp", "workload": "pprint:pprint"}])))
    wait_for(lambda: "WorkloadContext(" in host.log("pp"), what="pprint's rendering of its context")


@needs_jail
def test_a_project_module_function_workload_runs_jailed_and_dumps_its_threads_on_usr1(host: Host,
                                                                                      tmp_path: Path) -> None:
    """``domu.workloads:hello``, then ``kill -USR1`` of the guest: its threads go to the hypervisor's stderr log."""
    host.up(str(write_cluster(tmp_path, [{"name": "hi", "workload": "domu.workloads:hello"}])))
    wait_for(lambda: "Hello from hi" in host.log("hi"), what="hi's greeting")
    rows = {row["name"]: row for row in host.call("list", long=True)}
    assert rows["hi"]["info"]["jailed"] is True
    stderr_log = host.path / "logs" / "hypervisor-stderr.log"
    before = stderr_log.read_text(errors="replace").count("most recent call first")
    subprocess.run(["kill", "-USR1", str(rows["hi"]["info"]["pid"])], check=True, timeout=10)
    # Every thread of the guest (its workload and its event loop) comes through the guests' stderr pipe.
    wait_for(lambda: stderr_log.read_text(errors="replace").count("most recent call first") >= before + 2,
             what="a thread dump in hypervisor-stderr.log")
    assert "domu/kernel.py" in stderr_log.read_text(errors="replace")
    assert host.domains()["hi"]["state"] in ("-b----", "r-----")  # it runs on


# --- as nobody ---


class NobodyHost(Host):
    """A host whose every process runs as ``nobody``: the CLI is started through ``setpriv``."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        super().__init__()
        os.chown(self.path, NOBODY, NOBODY)
        self.python, self.env = python, env

    def xl(self, *args: str, check: bool = True, timeout: float = 60,
           input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*AS_NOBODY, self.python, "-m", "xenlike", "--run-dir", str(self.path), *args],
                                capture_output=True, text=True, timeout=timeout, input=input, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"xenlike {' '.join(args)} as nobody failed ({result.returncode}): "
                                 f"{result.stderr.strip()}")
        return result


def _as_nobody(python: str, code: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*AS_NOBODY, python, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          env=env or {"PATH": "/usr/bin:/bin"})


_UNREACHABLE = """
import os, sys
for path in sys.argv[1:]:
    current = "/"
    for part in path.strip("/").split("/")[:-1]:
        current = os.path.join(current, part)
        if not os.access(current, os.X_OK):
            print(f"{path}: nobody cannot enter {current}")
            break
    else:
        if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
            print(f"{path}: nobody cannot read it")
"""


def nobody_interpreter() -> tuple[str, dict[str, str]]:
    """``/usr/bin/python3`` with this checkout and this environment's site-packages, as nobody may use them.

    Skips, naming what is missing, where it cannot be.
    """
    if os.geteuid() != 0:
        pytest.skip("becoming nobody needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv(1) to become nobody with")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python}")
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30).stdout.split()
    if version != [str(n) for n in sys.version_info[:2]]:
        pytest.skip(f"{python} is Python {'.'.join(version)}, not {sys.version_info.major}.{sys.version_info.minor}"
                    " (the compiled packages' ABI)")
    checkout = Path(xenlike.__file__).resolve().parent.parent
    site_packages = sorted({str(Path(str(m.__file__)).resolve().parent.parent) for m in (zmq, msgpack, psutil)})
    needed = [str(checkout), *site_packages, str(WORKLOADS / "escape.py")]
    unreachable = _as_nobody(python, _UNREACHABLE, *needed).stdout.strip()
    if unreachable:
        pytest.skip(f"nobody cannot use this checkout: {unreachable}")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent",
           "PYTHONPATH": os.pathsep.join([str(checkout), *site_packages])}
    imports = _as_nobody(python, "import xenlike, dom0, domu, zmq, msgpack, psutil", env=env)
    if imports.returncode != 0:
        pytest.skip(f"{python} cannot import the project as nobody: {imports.stderr.strip().splitlines()[-1:]}")
    return python, env


@pytest.fixture(scope="module")
def as_nobody() -> Iterator[EscapeRun]:
    """A host run as nobody in a run directory of nobody's, and the escape guest's report there."""
    if not _NEEDED <= _available:
        pytest.skip(f"the jail lacks {sorted(_NEEDED - _available)}")
    python, env = nobody_interpreter()
    host = NobodyHost(python, env)
    targets = run = None
    try:
        targets = Targets(owner=NOBODY)  # the victim's image is nobody's: only the jail keeps the guest from it
        run = escape(host, targets, up_with_victim(host, targets))
        yield run
    except BaseException:
        host.print_logs()
        raise
    finally:
        host.teardown()  # `xenlike down` as nobody, then anything left is killed and the run directory removed
        if run is not None:
            remove_leftovers(run)
        if targets is not None:
            targets.close()


@needs_jail
def test_as_nobody_every_process_of_the_host_is_nobody_s_and_info_says_what_the_jail_lacks(
        as_nobody: EscapeRun) -> None:
    assert all(p.uids().real == NOBODY for p in as_nobody.host.processes())
    info = dict(re.findall(r"^(\S+)\s*: (.*)$", as_nobody.host.xl("info").stdout, re.M))
    assert info["jail"] == "on", info
    assert info["jail_uid_per_domain"].startswith("off") and info["jail_private_proc"].startswith("off"), info


@needs_jail
def test_as_nobody_every_route_that_needs_no_root_is_refused(as_nobody: EscapeRun) -> None:
    """A user namespace instead of a uid per domain; Landlock, seccomp, rlimits; no /proc of other processes."""
    # With the site-packages on PYTHONPATH (outside the allowance) the client cannot even import zmq.
    assert_refused_everything(as_nobody, proc_errno="EACCES", toolstack=("EACCES", "PermissionError"))
    identity = as_nobody.results["identity"]["detail"]
    assert identity["uid"] == [NOBODY] * 3 and identity["gid"] == [NOBODY] * 3
    assert identity["capabilities"] == {"effective": 0, "permitted": 0, "inheritable": 0}


@needs_jail
def test_as_nobody_dom0_the_hypervisor_and_the_victim_are_unharmed(as_nobody: EscapeRun) -> None:
    assert_unharmed(as_nobody)


@needs_jail
def test_as_nobody_the_host_user_s_own_unix_sockets_are_out_of_reach(as_nobody: EscapeRun) -> None:
    refused(as_nobody.results, "host_socket_connect", "EACCES")
    assert as_nobody.reached["host_unix"] is False


@pytest.fixture
def targets() -> Iterator[Targets]:
    planted = Targets()
    try:
        yield planted
    finally:
        planted.close()
