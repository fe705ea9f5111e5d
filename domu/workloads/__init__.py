"""Built-in workloads, registered in the ``xenlike.workloads`` entry-point group.

Each shows one part of the system at work: ``hello`` the console and xenstore,
``ticker`` a long-running guest, ``echo`` console input, ``journal`` a virtual
disk that keeps its contents across reboots, ``burn`` a CPU-bound guest for the
scheduler, ``crash`` the ``on_crash`` action, ``httpd`` a web server on the
guest's vif, ``idle`` a guest that only waits to be shut down.

Each workload's docstring is what ``xenlike workloads`` shows, read from this
source without importing it: the first line is the summary, and an ``Args:``
section lists the ``workload_args`` the workload takes (``--flag VALUE: what it
means``). A workload of your own that follows the convention is listed the same
way (``docs/guest-api.md``).
"""

from __future__ import annotations

import sys
import time

from ..workload import WorkloadContext


def hello(ctx: WorkloadContext) -> None:
    """Greet, show what xenstore says about this domain, then idle until shut down.

    Prints its home path, ``memory/target`` and ``vm`` and writes ``data/greeting``.
    Takes no arguments.
    """
    print(f"Hello from {ctx.name}, domain {ctx.domid}!")
    print(f"  my xenstore home: {ctx.xenstore.get_domain_path(ctx.domid)}")
    print(f"  memory/target: {ctx.xenstore.read_str('memory/target')} KiB, vm: {ctx.xenstore.read_str('vm')}")
    print(f"  {ctx.memory.nr_frames} frames of memory, {ctx.pages.free_frames} free for my kernel")
    ctx.xenstore.write("data/greeting", f"hello from {ctx.name}")
    ctx.shutdown.wait()
    print(f"{ctx.name}: {ctx.shutdown_reason} requested, goodbye")


def ticker(ctx: WorkloadContext) -> None:
    """Count until shut down: each tick printed on the console and written to ``data/ticks``.

    Args:
        --interval SECONDS: seconds between ticks (default 1).
    """
    interval = 1.0
    if "--interval" in ctx.args:
        interval = float(ctx.args[ctx.args.index("--interval") + 1])
    count = 0
    while not ctx.sleep(interval):
        count += 1
        print(f"tick {count}")
        ctx.xenstore.write("data/ticks", str(count))
    print(f"ticker stopped after {count} ticks ({ctx.shutdown_reason})")


def echo(ctx: WorkloadContext) -> None:
    """Echo each line typed on the console back to it (``xenlike console echo`` to type).

    The last line is also written to ``data/last-line``. Takes no arguments.
    """
    print("echo: type a line (Ctrl-] detaches)")
    while not ctx.shutdown.is_set():
        line = sys.stdin.readline()
        if not line:
            time.sleep(0.1)
            continue
        print(f"echo: {line.rstrip()}")
        ctx.xenstore.write("data/last-line", line.rstrip())


def idle(ctx: WorkloadContext) -> None:
    """Do nothing until shut down (the workload of a config that names none).

    Takes no arguments.
    """
    ctx.shutdown.wait()


def burn(ctx: WorkloadContext) -> None:
    """Spin on every vCPU until shut down: a CPU-bound guest for the scheduler.

    vCPU 0 counts in a loop and keeps :func:`spin` running on each of
    ``ctx.vcpus`` (``vcpus = N`` in the config); prints the total when shut
    down. Takes no arguments.
    """
    spins = 0
    calls = [vcpu.submit(spin, 0.05) for vcpu in ctx.vcpus]
    while not ctx.shutdown.is_set():
        for _ in range(10000):
            spins += 1
        for index, call in enumerate(calls):
            if call.done():
                spins += call.result()
                calls[index] = ctx.vcpus[index].submit(spin, 0.05)
    print(f"burned {spins} spins")


def spin(seconds: float) -> int:
    """Spin for ``seconds`` (wall clock) and return how many times: ``burn``'s work on other vCPUs."""
    spins = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(10000):
            spins += 1
    return spins


def crash(ctx: WorkloadContext) -> None:
    """Crash on purpose after a delay, to show ``on_crash`` at work.

    Raises RuntimeError, unless a shutdown request comes first.

    Args:
        --after SECONDS: seconds before the crash (default 1).
    """
    after = float(ctx.args[ctx.args.index("--after") + 1]) if "--after" in ctx.args else 1.0
    print(f"{ctx.name} will crash in {after:g}s")
    if not ctx.sleep(after):
        raise RuntimeError(f"{ctx.name} crashed on purpose")


JOURNAL_MAGIC = b"XLJOURNAL1\0\0"


def journal(ctx: WorkloadContext) -> None:
    """Keep a log on disk xvda that survives reboots: one entry per boot, then heartbeats.

    The disk holds a header sector (magic, bytes used) and the text after it;
    each entry is flushed before the next. At boot it prints how many entries
    and earlier boots it found, and the last three boots, each with the
    number of heartbeats that followed it. Needs a disk
    ``xvda`` (``disk = ["vdev=xvda, size=16M, target=journal.img"]``); when it is
    full, the log starts over.

    Args:
        --interval SECONDS: seconds between heartbeats (default 10).
    """
    interval = float(ctx.args[ctx.args.index("--interval") + 1]) if "--interval" in ctx.args else 10.0
    disk = ctx.disks.get("xvda")
    if disk is None:
        raise RuntimeError('the journal workload needs a disk xvda (disk = ["vdev=xvda, size=16M, target=..."])')
    log = disk.open()
    header = log.read(512)
    used = int.from_bytes(header[12:20], "little") if header.startswith(JOURNAL_MAGIC) else 0
    log.seek(512)
    entries = log.read(used).decode(errors="replace").splitlines() if used else []
    boots = sum(1 for line in entries if line.startswith("boot "))
    print(f"journal: {len(entries)} entries on {disk.vdev} from {boots} earlier boot(s)")
    for boot, beats in _journal_boots(entries)[-3:]:
        print(f"  {boot}, then {beats} heartbeat(s)")

    def append(line: str) -> None:
        nonlocal used
        data = (line + "\n").encode()
        if 512 + used + len(data) > disk.size:
            used = 0  # full: start over, as a ring log would
        log.seek(512 + used)
        log.write(data)
        used += len(data)
        log.seek(0)
        log.write(JOURNAL_MAGIC + used.to_bytes(8, "little"))
        log.fsync()  # acknowledged entries are durable

    append(f"boot {boots + 1} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"journal: wrote boot {boots + 1}")
    beats = 0
    while not ctx.sleep(interval):
        beats += 1
        append(f"  heartbeat {beats} of boot {boots + 1}")
    print(f"journal: stopping after {beats} heartbeat(s)")


def _journal_boots(entries: list[str]) -> list[tuple[str, int]]:
    """The journal's ``boot N at ...`` entries in order, each with how many heartbeats followed it."""
    boots: list[tuple[str, int]] = []
    for line in entries:
        if line.startswith("boot "):
            boots.append((line, 0))
        elif boots and line.lstrip().startswith("heartbeat "):
            boots[-1] = (boots[-1][0], boots[-1][1] + 1)
    return boots


def httpd(ctx: WorkloadContext) -> None:
    """Serve a page about this domain over HTTP on its vif (``http.server``, the guest's own TCP/IP stack).

    ``/`` answers with the domain's name, id and interfaces; each request is printed
    on the console and counted in ``data/requests``. Reach it from another guest at
    the vif's address, or from the host through ``ports = ["8080:80"]``.

    Args:
        --port PORT: the port to listen on (default 80).
    """
    import http.server
    import threading

    port = int(ctx.args[ctx.args.index("--port") + 1]) if "--port" in ctx.args else 80
    served = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            interfaces = ", ".join(f"{nic.name} {nic.ip or 'no address'} ({nic.mac})" for nic in ctx.net.values())
            body = f"Hello from {ctx.name}, domain {ctx.domid}: {interfaces or 'no vif'}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            served[0] += 1
            ctx.xenstore.write("data/requests", str(served[0]))

        def log_message(self, format: str, *args: object) -> None:
            print(f"{self.client_address[0]} {format % args}", flush=True)

    if not ctx.net:
        print(f'{ctx.name}: no vif, so nobody can reach this server; add vif = [ "" ] to its config')
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="httpd", daemon=True).start()
    addresses = [nic.ip.split("/")[0] for nic in ctx.net.values() if nic.ip]
    print(f"{ctx.name}: serving http on port {port}" + (f" at {', '.join(addresses)}" if addresses else ""))
    ctx.shutdown.wait()
    server.shutdown()
