"""The ``xenlike`` command: xl's verbs for a xenlike host.

Every verb but ``up`` talks to the toolstack of a running host (found through the
run directory). Failures print one line naming what went wrong and exit non-zero.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from xenlike.kernel.rundir import RunDir
from xenlike.tools.toolstack_client import HostNotRunning, ToolstackClient, ToolstackError
from xenlike.tools.xl_format import (format_block_list, format_info, format_list, format_sched_credit, format_uptime,
                        format_vcpu_list, format_xentop)

DESCRIPTION = """\
xenlike: Xen's architecture in user space. A hypervisor process schedules guest
domains as Linux processes; dom0 runs xenstored, xenconsoled, the toolstack and the
device back-ends; domU front-ends talk to them through shared rings, grant tables
and event channels, as Xen's split drivers do.

Start a host with `xenlike up` (the default cluster, or a TOML cluster file), then
use xl's verbs: list, create, console, shutdown, destroy, ..."""

EPILOG = """\
examples:
  xenlike up -d                      start a host with the default cluster, in the background
  xenlike list                       the domains, as `xl list` shows them
  xenlike console ticker             attach to a console (Ctrl-] detaches)
  xenlike create web.cfg memory=64   create a domain from an xl.cfg file
  xenlike shutdown -w web            ask a domain to shut down, wait until it has
  xenlike down                       stop every domain and the host"""

CTRL_RIGHT_BRACKET = b"\x1d"  # xl console's escape character
# xentop's screen: the terminal's alternate screen (as curses' initscr/endwin), cleared per frame.
ENTER_SCREEN, LEAVE_SCREEN, CLEAR_SCREEN = "\x1b[?1049h", "\x1b[?1049l", "\x1b[H\x1b[2J"


class CliError(Exception):
    """A failure to report in one line."""


# ------------------------------------------------------------------------------------
# Helpers.


def _client(args: argparse.Namespace, timeout: float = 60.0) -> ToolstackClient:
    return ToolstackClient(RunDir(args.run_dir), timeout=timeout)


def _call(args: argparse.Namespace, op: str, timeout: float | None = None, **kw: Any) -> Any:
    with _client(args) as client:
        return client.call(op, timeout=timeout, **kw)


def _default_memory_mib() -> int:
    """Half the machine's memory, at most 8 GiB: the host pool for domains."""
    import psutil

    return int(min(psutil.virtual_memory().total // 2, 8 << 30) >> 20)


def _load_config(path: str, overrides: list[str]) -> dict:
    from xenlike.tools.config import load_domain_config

    config = load_domain_config(Path(path), overrides=overrides)
    for warning in config.warnings:
        print(f"xenlike: warning: {warning}", file=sys.stderr)
    return config.to_dict()


# ------------------------------------------------------------------------------------
# Host lifecycle: up and down.


def cmd_up(args: argparse.Namespace) -> int:
    from xenlike.tools.config import default_cluster, load_cluster

    run_dir = RunDir(args.run_dir).ensure()
    if run_dir.running_pid() is not None:
        raise CliError(f"a xenlike host already runs in {run_dir.path}; `xenlike down` stops it, --run-dir picks another")
    cluster = load_cluster(Path(args.cluster)) if args.cluster else default_cluster(run_dir.path)
    for warning in getattr(cluster, "warnings", []):
        print(f"xenlike: warning: {warning}", file=sys.stderr)
    host = getattr(cluster, "host", None) or {}
    memory = args.memory or host.get("memory") or _default_memory_mib()
    pcpus = args.pcpus or host.get("pcpus") or os.cpu_count()
    sched = _check_scheduler(args.sched or host.get("sched") or "credit")
    hypervisor = _start_hypervisor(run_dir, memory, pcpus, sched)
    with ToolstackClient(run_dir) as client:
        console = None if args.detach else _attach_consoles(run_dir, client, None)[0]
        for domain in cluster.domains:
            config = domain.to_dict()
            try:
                result = client.call("create", config=config)
            except ToolstackError as exc:
                print(f"xenlike up: creating {config['name']} failed: {exc}; stopping the host", file=sys.stderr)
                client.call("down", timeout=30)
                _wait_gone(hypervisor.pid, 15)
                return 1
            print(f"xenlike: created {result['name']} (domain {result['domid']})")
    if args.detach:
        print(f"xenlike: host running in {run_dir.path} (hypervisor pid {hypervisor.pid}); "
              "`xenlike list` shows it, `xenlike down` stops it")
        return 0
    return _stream_consoles(run_dir, console, hypervisor.pid)


def _check_scheduler(name: Any) -> str:
    """A scheduler registered in ``xenlike.schedulers``, or a one-line error naming the choices."""
    from xenlike.hypervisor.sched import available_schedulers

    known = available_schedulers()
    if name not in known:
        raise CliError(f"no scheduler named {name!r}; registered: {', '.join(sorted(known)) or 'none'}")
    return str(name)


def _start_hypervisor(run_dir: RunDir, memory: int, pcpus: int, sched: str = "credit") -> subprocess.Popen:
    out = open(run_dir.log_path("hypervisor-stderr"), "ab")
    command = [sys.executable, "-m", "xenlike.hypervisor", "--run-dir", str(run_dir.path),
               "--memory", str(memory), "--pcpus", str(pcpus), "--sched", sched]
    hypervisor = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    out.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if hypervisor.poll() is not None:
            raise CliError(f"the hypervisor exited with status {hypervisor.returncode}; see {run_dir.path / 'logs'}")
        try:
            with ToolstackClient(run_dir, timeout=2) as client:
                client.call("ping")
                return hypervisor
        except ToolstackError:
            time.sleep(0.02)
    hypervisor.kill()
    raise CliError(f"the host did not come up within 20s; see {run_dir.path / 'logs'}")


def _attach_consoles(run_dir: RunDir, client: ToolstackClient, domain: str | None):
    """A live console subscription (one domain's, or every one's) and the toolstack's reply."""
    from xenlike.tools.console_stream import ConsoleSubscriber

    name = None if domain is None else client.call("console_attach", domain=domain)["name"]
    sub = ConsoleSubscriber(run_dir, name)
    try:
        return sub, sub.attach(lambda: client.call("console_attach", domain=name))
    except BaseException:
        sub.close()
        raise


def _stream_consoles(run_dir: RunDir, sub, hypervisor_pid: int) -> int:
    """Print every console line prefixed with its domain, until Ctrl-C or the host stops."""
    partial: dict[str, bytes] = {}
    width = 12
    stopping = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    print("xenlike: streaming consoles; Ctrl-C shuts the host down", flush=True)
    while not stopping and run_dir.running_pid() == hypervisor_pid:
        for message in sub.receive(200):
            text = partial.pop(message.name, b"") + message.data
            *lines, rest = text.split(b"\n")
            if rest:
                partial[message.name] = rest
            width = max(width, len(message.name))
            for line in lines:
                print(f"{message.name:<{width}} | {line.decode(errors='replace')}", flush=True)
    sub.close()
    if stopping and run_dir.running_pid() is not None:
        print("xenlike: shutting the host down", flush=True)
        with ToolstackClient(run_dir) as client:
            client.call("down", timeout=60)
        _wait_gone(hypervisor_pid, 20)
    return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                os.waitpid(pid, os.WNOHANG)
                return True
        except psutil.NoSuchProcess:
            return True
        except ChildProcessError:
            return True
        time.sleep(0.05)
    return False


def cmd_down(args: argparse.Namespace) -> int:
    run_dir = RunDir(args.run_dir)
    pid = run_dir.running_pid()
    with _client(args) as client:
        result = client.call("down", timeout=args.timeout + 30, timeout_s=args.timeout)
    if pid is not None and not _wait_gone(pid, 20):
        os.kill(pid, signal.SIGKILL)
    run_dir.clean_sockets()
    print("xenlike: host stopped" + (" (some domains had to be destroyed)" if result.get("forced") else ""))
    return 0


# ------------------------------------------------------------------------------------
# Domains.


def cmd_create(args: argparse.Namespace) -> int:
    config = _load_config(args.config, args.overrides)
    result = _call(args, "create", config=config, paused=args.paused)
    print(f"xenlike: created {result['name']} (domain {result['domid']})")
    if args.console:
        args.domain = result["name"]
        return cmd_console(args)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = _call(args, "list", domain=args.domain, long=args.long)
    if args.long:
        print(json.dumps([{"domid": r["domid"], "name": r["name"], "info": r["info"], "config": r["config"]} for r in rows],
                         indent=4, default=str))
    else:
        print(format_list(rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    physinfo = _call(args, "info")
    import platform

    print(format_info(physinfo, {"host": platform.node(), "release": platform.release(), "machine": platform.machine(),
                                 "xen_scheduler": physinfo.get("sched", "credit"),
                                 "run_dir": str(RunDir(args.run_dir).path)}))
    return 0


def _simple(op: str, message: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        _call(args, op, domain=args.domain)
        if message:
            print(message.format(domain=args.domain))
        return 0

    command.__name__ = f"cmd_{op}"
    return command


def cmd_shutdown(args: argparse.Namespace, request: str = "shutdown") -> int:
    if not args.all and args.domain is None:
        raise CliError(f"{request} needs a domain (or -a for all)")
    result = _call(args, request, timeout=None if not args.wait else 365 * 86400, domain=args.domain, all=args.all, wait=args.wait)
    verb = "shut down" if request == "shutdown" else "rebooted"
    print(f"xenlike: {'domains ' + ', '.join(map(str, result['domids'])) if args.all else args.domain} "
          f"{verb if args.wait else 'asked to ' + ('shut down' if request == 'shutdown' else 'reboot')}")
    return 0


def cmd_reboot(args: argparse.Namespace) -> int:
    args.all = False
    args.wait = False
    return cmd_shutdown(args, "reboot")


def cmd_rename(args: argparse.Namespace) -> int:
    _call(args, "rename", domain=args.domain, name=args.new_name)
    return 0


def cmd_uptime(args: argparse.Namespace) -> int:
    print(format_uptime(_call(args, "uptime", domain=args.domain)))
    return 0


def cmd_dmesg(args: argparse.Namespace) -> int:
    for line in _call(args, "dmesg", clear=args.clear):
        print(line)
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """Attach to a domain's console: output streams, keys go to the guest, Ctrl-] detaches."""
    run_dir = RunDir(args.run_dir)
    with _client(args) as client:
        sub, attached = _attach_consoles(run_dir, client, args.domain)
        name = attached["name"]
        tty = sys.stdin.isatty()
        out = sys.stdout.buffer

        def show(data: bytes) -> None:
            out.write(data.replace(b"\n", b"\r\n") if tty else data)
            out.flush()

        show(attached["history"])
        for message in sub.receive(0):
            show(message.data)
        saved = _raw_terminal() if tty else None
        stdin_fd = sys.stdin.fileno()
        stdin_open = True
        try:
            import zmq

            poller = zmq.Poller()
            poller.register(sub.sock, zmq.POLLIN)
            poller.register(stdin_fd, zmq.POLLIN)
            while True:
                ready = dict(poller.poll(500))
                if sub.sock in ready:
                    for message in sub.receive(0):
                        show(message.data)
                if stdin_open and stdin_fd in ready:
                    keys = os.read(stdin_fd, 1024)
                    if not keys:
                        stdin_open = False
                        poller.unregister(stdin_fd)
                        continue
                    if CTRL_RIGHT_BRACKET in keys:
                        keys = keys.split(CTRL_RIGHT_BRACKET)[0]
                        if keys:
                            client.call("console_input", domain=name, data=keys)
                        return 0
                    client.call("console_input", domain=name, data=keys)
                if not ready and run_dir.running_pid() is None:
                    raise CliError("the host stopped")
        except KeyboardInterrupt:
            return 0
        finally:
            if saved is not None:
                import termios

                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
                print()
            sub.close()


def _raw_terminal(mode: Callable[[int], None] | None = None):
    """Put stdin's terminal in raw mode (or ``mode``, e.g. ``tty.setcbreak``); returns the settings to restore."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    (mode or tty.setraw)(fd)
    return saved


# ------------------------------------------------------------------------------------
# top (xl top runs xentop: tools/xentop/xentop.c).


def cmd_top(args: argparse.Namespace) -> int:
    """A frame every ``-d`` seconds, ``-i`` times (default: until q or Ctrl-C); ``-b`` or no terminal: plain text."""
    if args.delay < 0:
        raise CliError(f"-d {args.delay:g}: the delay cannot be negative")
    if args.iterations is not None and args.iterations < 1:
        raise CliError(f"-i {args.iterations}: expected at least one iteration")
    on_screen = not args.batch and sys.stdin.isatty() and sys.stdout.isatty()
    frames = range(args.iterations) if args.iterations is not None else itertools.count()
    with _client(args) as client:
        next_frame = _top_sampler(client, args.full_name, summary=on_screen)
        try:
            if on_screen:
                _top_screen(next_frame, frames, args.delay)
            else:
                _top_batch(next_frame, frames, args.delay)
        except KeyboardInterrupt:
            pass  # as xentop's SIGINT handler: stop, successfully
    return 0


def _top_sampler(client: ToolstackClient, full_names: bool, summary: bool) -> Callable[[], str]:
    """A function returning the next xentop frame: one ``top`` request, CPU(%) against the sample before."""
    previous: dict | None = None

    def next_frame() -> str:
        nonlocal previous
        sample = client.call("top")
        frame = format_xentop(sample, previous, full_names=full_names, summary=summary)
        previous = sample
        return frame

    return next_frame


def _top_batch(next_frame: Callable[[], str], frames: Iterable[int], delay: float) -> None:
    """xentop -b: frames printed one after the other, ``delay`` seconds apart."""
    for number in frames:
        if number:
            time.sleep(delay)
        print(next_frame(), flush=True)


def _top_screen(next_frame: Callable[[], str], frames: Iterable[int], delay: float) -> None:
    """xentop on a terminal: each frame replaces the last; any key redraws at once, q or Esc quits."""
    import termios
    import tty

    stdin_fd = sys.stdin.fileno()
    saved = _raw_terminal(tty.setcbreak)  # keys one at a time, unechoed; Ctrl-C still interrupts
    sys.stdout.write(ENTER_SCREEN)
    try:
        for number in frames:
            if number and _top_quit_pressed(stdin_fd, delay):
                break
            height = shutil.get_terminal_size().lines
            sys.stdout.write(CLEAR_SCREEN + "\n".join(next_frame().splitlines()[: max(1, height - 1)]))
            sys.stdout.flush()
    finally:
        sys.stdout.write(LEAVE_SCREEN)
        sys.stdout.flush()
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)


def _top_quit_pressed(stdin_fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for a key: True for q, Q or a lone Esc (an arrow key's Esc sequence is not one)."""
    ready, _, _ = select.select([stdin_fd], [], [], timeout)
    if not ready:
        return False
    keys = os.read(stdin_fd, 64)
    return keys[:1] in (b"q", b"Q") or keys == b"\x1b"


# ------------------------------------------------------------------------------------
# xenstore.


def cmd_xenstore_ls(args: argparse.Namespace) -> int:
    for node in _call(args, "xenstore_ls", path=args.path):
        value = node["value"].decode(errors="replace") if isinstance(node["value"], bytes) else node["value"]
        perms = f"  . . . . ({node['perms']})" if args.perms else ""
        print(f"{' ' * node['depth']}{node['name']} = \"{value}\"{perms}")
    return 0


def cmd_xenstore_read(args: argparse.Namespace) -> int:
    value = _call(args, "xenstore_read", path=args.path)
    print(value.decode(errors="replace") if isinstance(value, bytes) else value)
    return 0


def cmd_xenstore_write(args: argparse.Namespace) -> int:
    _call(args, "xenstore_write", path=args.path, value=args.value)
    return 0


def cmd_xenstore_rm(args: argparse.Namespace) -> int:
    _call(args, "xenstore_rm", path=args.path)
    return 0


def cmd_xenstore_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        watch_id = None
        try:
            for event in client.stream("xenstore_watch", path=args.path):
                if "started" in event:
                    watch_id = event["watch_id"]
                    continue
                print(event["path"], flush=True)
        except KeyboardInterrupt:
            return 0
        finally:
            if watch_id is not None:
                try:
                    client.call("xenstore_unwatch", timeout=2, watch_id=watch_id)
                except ToolstackError:
                    pass
    return 0


def cmd_block_attach(args: argparse.Namespace) -> int:
    result = _call(args, "block_attach", domain=args.domain, spec=args.spec)
    print(f"xenlike: attached {result['vdev']} to {args.domain}")
    return 0


def cmd_block_detach(args: argparse.Namespace) -> int:
    result = _call(args, "block_detach", domain=args.domain, vdev=args.vdev, timeout=60)
    print(f"xenlike: detached {result['vdev']} from {args.domain}" + (" (forced)" if result.get("forced") else ""))
    return 0


def cmd_block_list(args: argparse.Namespace) -> int:
    print(format_block_list(_call(args, "block_list", domain=args.domain)))
    return 0


def cmd_workloads(args: argparse.Namespace) -> int:
    from domu.workload import available_workloads

    for name, target in sorted(available_workloads().items()):
        print(f"{name:<12} {target}")
    return 0


# ------------------------------------------------------------------------------------
# Scheduling.


def cmd_sched_credit(args: argparse.Namespace) -> int:
    """xl sched-credit: with -w/-c set a domain's weight/cap (printing nothing), else show them."""
    if (args.weight is not None or args.cap is not None) and args.domain is None:
        raise CliError("-w and -c need a domain: sched-credit -d DOMAIN -w WEIGHT")
    result = _call(args, "sched_credit", domain=args.domain, weight=args.weight, cap=args.cap)
    if "set" not in result:
        print(format_sched_credit(result["pool"] if args.domain is None else None, result["domains"]))
    return 0


def cmd_vcpu_list(args: argparse.Namespace) -> int:
    result = _call(args, "vcpu_list", domains=args.domains)
    print(format_vcpu_list(result["vcpus"], result["nr_cpus"]))
    return 0


def cmd_vcpu_pin(args: argparse.Namespace) -> int:
    _call(args, "vcpu_pin", domain=args.domain, vcpu=args.vcpu, cpus=args.cpus)
    return 0


# ------------------------------------------------------------------------------------
# The parser.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenlike", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="xenlike 0.1.0")
    parser.add_argument("--run-dir", default=None,
                        help="the host's run directory (default: $XENLIKE_RUN_DIR, else a per-user directory)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, handler: Callable, help_text: str, domain: str | None = None) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if domain == "required":
            p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
        elif domain == "optional":
            p.add_argument("domain", metavar="DOMAIN", nargs="?", help="domain name or id (default: all)")
        return p

    p = verb("up", cmd_up, "start a host (hypervisor, dom0) and the domains of a cluster; stream their consoles")
    p.add_argument("cluster", nargs="?", help="a TOML cluster file (default: the built-in cluster)")
    p.add_argument("-d", "--detach", action="store_true", help="return once the cluster is up")
    p.add_argument("--memory", type=int, help="host memory for domains, MiB (default: half the machine's, at most 8192)")
    p.add_argument("--pcpus", type=int, help="physical CPUs to schedule on (default: all)")
    p.add_argument("--sched", metavar="NAME",
                   help="the scheduler: credit (default) or null, or any registered in xenlike.schedulers")

    p = verb("down", cmd_down, "shut every domain down (destroying those that do not stop), then the host")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds domains get to shut down (default 10)")

    p = verb("create", cmd_create, "create a domain from an xl.cfg file")
    p.add_argument("config", metavar="CFG", help="domain config in xl.cfg syntax")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="settings that override the file's")
    p.add_argument("-p", dest="paused", action="store_true", help="leave the domain paused")
    p.add_argument("-c", dest="console", action="store_true", help="attach to its console")

    p = verb("list", cmd_list, "list domains (xl list's columns)", "optional")
    p.add_argument("-l", "--long", action="store_true", help="full information as JSON")

    verb("info", cmd_info, "information about the host")
    verb("destroy", _simple("destroy", ""), "destroy a domain at once (pulling the plug)", "required")
    p = verb("shutdown", cmd_shutdown, "ask a domain to shut down (control/shutdown = poweroff)", "optional")
    p.add_argument("-w", "--wait", action="store_true", help="wait until it has shut down")
    p.add_argument("-a", "--all", action="store_true", help="all domains")
    verb("reboot", cmd_reboot, "ask a domain to reboot", "required")
    verb("pause", _simple("pause", ""), "pause a domain (it keeps its memory, gets no CPU)", "required")
    verb("unpause", _simple("unpause", ""), "unpause a paused domain", "required")
    verb("console", cmd_console, "attach to a domain's console (Ctrl-] detaches)", "required")
    p = verb("rename", cmd_rename, "rename a domain", "required")
    p.add_argument("new_name", metavar="NEW_NAME")
    verb("uptime", cmd_uptime, "domains' uptime", "optional")
    p = verb("dmesg", cmd_dmesg, "the hypervisor's log")
    p.add_argument("-c", dest="clear", action="store_true", help="clear it after reading")

    p = verb("xenstore-ls", cmd_xenstore_ls, "list xenstore nodes below PATH")
    p.add_argument("path", nargs="?", default="/")
    p.add_argument("-p", dest="perms", action="store_true", help="show permissions")
    p = verb("xenstore-read", cmd_xenstore_read, "read a xenstore node")
    p.add_argument("path")
    p = verb("xenstore-write", cmd_xenstore_write, "write a xenstore node")
    p.add_argument("path")
    p.add_argument("value")
    p = verb("xenstore-rm", cmd_xenstore_rm, "remove a xenstore node and its children")
    p.add_argument("path")
    p = verb("xenstore-watch", cmd_xenstore_watch, "print the path of every change at or below PATH (Ctrl-C stops)")
    p.add_argument("path")
    p = verb("block-attach", cmd_block_attach, "hotplug a disk: SPEC in xl's disk syntax, e.g. 'vdev=xvdb, target=/x.img, size=64M'", "required")
    p.add_argument("spec", metavar="SPEC")
    p = verb("block-detach", cmd_block_detach, "unplug a disk (the guest sees it go)", "required")
    p.add_argument("vdev", metavar="VDEV", help="xvdb, or the device number")
    verb("block-list", cmd_block_list, "a domain's disks (xl block-list's columns)", "required")
    verb("workloads", cmd_workloads, "list the registered guest workloads")
    p = verb("sched-credit", cmd_sched_credit, "show or set credit scheduler weights and caps")
    p.add_argument("-d", "--domain", metavar="DOMAIN", help="the domain to show or set (default: all)")
    p.add_argument("-w", "--weight", type=int, help="its weight, 1 to 65535 (default 256)")
    p.add_argument("-c", "--cap", type=int, help="its cap, percent of one pCPU (0: none)")
    p = verb("top", cmd_top, "domains' CPU, memory and disk figures, refreshed (xentop's columns; q quits)")
    p.add_argument("-d", "--delay", type=float, default=3.0, metavar="SECONDS",
                   help="seconds between updates (default 3)")
    p.add_argument("-b", "--batch", action="store_true", help="plain text, frame after frame, no screen control")
    p.add_argument("-i", "--iterations", type=int, metavar="N", help="frames to show before exiting (default: no limit)")
    p.add_argument("-f", "--full-name", action="store_true", help="full domain names (not cut to 10 characters)")
    p = verb("vcpu-list", cmd_vcpu_list, "the vCPUs of domains: pCPU, state, CPU time, affinity")
    p.add_argument("domains", metavar="DOMAIN", nargs="*", help="domain names or ids (default: all)")
    p = verb("vcpu-pin", cmd_vcpu_pin, "set the pCPUs a vCPU may run on (hard affinity)", "required")
    p.add_argument("vcpu", metavar="VCPU", help="a vCPU number, or all")
    p.add_argument("cpus", metavar="CPUS", help="pCPUs in xl's syntax: 1, 0-3, 0-3,^2, all")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except HostNotRunning as exc:
        print(f"xenlike {args.verb}: {exc}", file=sys.stderr)
        return 3
    except (CliError, ToolstackError) as exc:
        print(f"xenlike {args.verb}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``xenlike xenstore-ls | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        from xenlike.tools.config import ConfigError

        if isinstance(exc, ConfigError):
            print(f"xenlike {args.verb}: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
