"""The domU kernel: boots from its start info, connects xenstore and the console, runs the workload.

Started by the zygote in a fresh fork with the boot message and fds the hypervisor
sent: ``fds[0]`` the hypercall socket, ``fds[1]`` the domain's memory, then the
event-channel ports its builder set up (``boot["ports"]`` says which is which).
The domain builder in dom0 has already written the start info page, the grant
entries for the console and xenstore pages, and the domain's xenstore nodes.

Two threads: the event loop (upcalls: xenstore replies and watches, console,
devices) and the workload. Nothing on the way to the workload waits for xenstore,
so a domain starts in a few milliseconds. With ``vcpus = N`` the kernel also
forks vCPUs 1..N-1 (``domu/vcpu.py``) and brings them up with ``vcpu_op``.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import ChannelClosed, HypercallClient
from xenlike.kernel.memory import GuestMemory, PageAllocator
from xenlike.public import workload_state
from xenlike.public.console import ConsoleInterface
from xenlike.public.start_info import StartInfo, reserved_frames
from xenlike.public.xen import ShutdownReason
from xenlike.public.xs_wire import XenstoreInterface, XsError
from xenlike.public.xs_wire import XsdSockmsgType as XS

from .blkfront import BlkfrontDriver
from .console import ConsoleFront, ConsoleStream
from .netfront import NetfrontDriver
from .vchan import VchanDriver
from .vcpu import WorkloadGlobals, fork_vcpus
from .workload import WorkloadContext, WorkloadError, load_workload
from .xenbus import XenbusClient
from .xenbus_frontend import HANDSHAKE_TIMEOUT_S, XenbusFrontend

__all__ = ["start", "Kernel", "SHUTDOWN_GRACE_S"]

_REQUESTS = {"poweroff": ShutdownReason.POWEROFF, "halt": ShutdownReason.POWEROFF, "reboot": ShutdownReason.REBOOT}
# How long a workload has to return after a shutdown request before the kernel goes down anyway.
SHUTDOWN_GRACE_S = 10.0
# How long the kernel waits, going down, for xenstored to have handled what it sent.
XENSTORE_SETTLE_S = 2.0

log = logging.getLogger("domu.kernel")


class PreparedShell:
    """What a pre-forked shell sets up before it knows which domain it will be.

    The event-loop thread is started here and waits for its kernel, so booting a
    domain never waits for a new thread to be scheduled.
    """

    def __init__(self) -> None:
        self._kernel: Kernel | None = None
        self._attached = threading.Event()
        # Set by the shell's jail before attach: what confines this thread too (Landlock binds one thread).
        self.confine: Callable[[], None] | None = None
        threading.Thread(target=self._run, name="evtchn", daemon=True).start()
        _rehearse_boot()

    def _run(self) -> None:
        self._attached.wait()
        kernel = self._kernel
        assert kernel is not None  # attach sets it before it sets _attached
        if self.confine is not None:
            try:
                self.confine()
            except OSError as exc:
                print(f"[{kernel.label}] cannot confine the event loop: {exc}", file=sys.__stderr__, flush=True)
                os._exit(70)  # never serve the guest unconfined
        kernel._event_loop()

    def attach(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._attached.set()


def _rehearse_boot() -> None:
    """Walk the boot path once on scratch objects, while the shell waits.

    A forked guest's first touches of the zygote's objects are copy-on-write
    faults, and those grow slower the more processes share the pages. Taking
    them here, before the domain is asked for, keeps them off its boot.
    """
    memory = GuestMemory.create(reserved_frames(1) + 4, "xenlike-rehearsal")
    StartInfo(
        nr_pages=memory.nr_frames,
        domid=0,
        store_evtchn=1,
        console_evtchn=2,
        gnttab_frames=1,
        image={"workload": "idle"},
    ).write(memory.frame(0))
    info = StartInfo.read(memory.frame(0))
    loop = EventLoop("rehearsal")
    for port in (info.store_evtchn, info.console_evtchn):
        loop.bind(port, new_port_fd())
    grants = GrantTable(memory, info.gnttab_pfn, info.gnttab_frames)
    PageAllocator(info.first_free_pfn, info.nr_pages).alloc(1)
    console_page, store_page = ConsoleInterface(memory.frame(1)), XenstoreInterface(memory.frame(2))
    console = ConsoleFront(console_page, loop, info.console_evtchn)
    XenbusClient(store_page, loop, info.store_evtchn, "rehearsal")
    io.TextIOWrapper(io.BufferedWriter(ConsoleStream(console, "w")), line_buffering=True).detach()
    load_workload(info.image["workload"])
    console_page.release()
    store_page.release()
    grants.release()
    loop.close()
    memory.close()


def prepare() -> PreparedShell:
    """Called by the zygote's shell while it waits for a boot message."""
    return PreparedShell()


def start(boot: dict, fds: list[int], prepared: PreparedShell | None = None) -> int:
    """Entry point in the forked domain process."""
    return Kernel(boot, fds).run(prepared or PreparedShell())


class Kernel:
    """One domU's kernel."""

    def __init__(self, boot: dict, fds: list[int]) -> None:
        self.domid: int = boot["domid"]
        self.name: str = boot["name"]
        self.label = f"d{self.domid} ({self.name})"
        self.memory = GuestMemory.from_fd(fds[1], boot["nr_frames"])
        self.start_info = StartInfo.read(self.memory.frame(0))
        self.loop = EventLoop(self.label)
        sock = socket.socket(fileno=fds[0])
        self.hypercall = HypercallClient(sock, self._on_hypervisor_event)
        for port, recv_index, send_index in boot["ports"]:
            self.loop.bind(port, fds[recv_index], fds[send_index] if send_index is not None else None)
        self.loop.add_reader(sock.fileno(), self._on_hypercall_socket)
        si = self.start_info
        self.grant_table = GrantTable(self.memory, si.gnttab_pfn, si.gnttab_frames)
        self.pages = PageAllocator(si.first_free_pfn, si.nr_pages)
        self.console = ConsoleFront(ConsoleInterface(self.memory.frame(si.console_pfn)), self.loop, si.console_evtchn)
        self.xenbus = XenbusClient(
            XenstoreInterface(self.memory.frame(si.store_pfn)), self.loop, si.store_evtchn, self.label
        )
        # The front-end bus and its drivers, registered at boot as a PV kernel's are.
        self.frontends = XenbusFrontend(self)
        self.blkfront = BlkfrontDriver()
        self.frontends.register(self.blkfront)
        self.netfront = NetfrontDriver()
        self.frontends.register(self.netfront)
        self.context: WorkloadContext | None = None
        self._shutdown_reason: int | None = None
        self._running = True
        # Secondary vCPUs are forked now, before the event-loop thread does anything.
        self.vcpus_globals = WorkloadGlobals(self.start_info.image.get("workload", "idle"))
        self.vcpus = fork_vcpus(
            int(boot.get("vcpus", 1)), lambda i: f"xl-d{self.domid}v{i}-{self.name}", self.vcpus_globals
        )

    # -- boot and run --------------------------------------------------------------

    def run(self, prepared: PreparedShell) -> int:
        # `kill -USR1 <pid>` dumps every thread of the guest to the host's stderr log.
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__ or 2, all_threads=True)
        prepared.attach(self)  # its event-loop thread starts serving this kernel
        self._take_over_stdio()
        self.xenbus.watch_async("control/shutdown", "control-shutdown", self._on_shutdown_request)
        for feature in ("feature-poweroff", "feature-reboot"):
            self.xenbus.write_async(f"control/{feature}", "1")
        image = self.start_info.image
        self.frontends.start()
        if image.get("disks"):
            self.blkfront.wait_for(image["disks"])  # as a kernel waits for its root device
        if image.get("vifs"):
            self._wait_for_vifs([f"eth{devid}" for devid in image["vifs"]])  # as a boot waits for its network
        try:
            workload = load_workload(image.get("workload", "idle"))
        except WorkloadError as exc:
            return self._not_started(str(exc))
        self.context = WorkloadContext(
            name=self.name,
            domid=self.domid,
            args=list(image.get("workload_args", [])),
            config=image,
            xenstore=self.xenbus,
            memory=self.memory,
            pages=self.pages,
            grant_table=self.grant_table,
            console=self.console,
            hypercall=self.hypercall,
            events=self.loop,
            disks=self.blkfront.disks,
            net=self.netfront.interfaces,
            log=logging.getLogger(f"workload.{self.name}"),
            vcpus=self.vcpus,
            vchan=VchanDriver(self.domid, self.name, self.xenbus, self.hypercall, self.grant_table, self.loop),
        )
        self._vcpus_up(workload)
        self.xenbus.write_async(workload_state.STATE, workload_state.STARTED)  # what `create` waits for
        reason: int = ShutdownReason.POWEROFF
        try:
            result = workload(self.context)
            if result is not None:
                print(f"[{self.label}] workload returned {result!r}")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(f"[{self.label}] workload exited with status {exc.code}", file=sys.stderr)
                reason = ShutdownReason.CRASH
        except BaseException:
            traceback.print_exc()
            print(f"[{self.label}] workload crashed", file=sys.stderr)
            reason = ShutdownReason.CRASH
        if self._shutdown_reason is not None and reason != ShutdownReason.CRASH:
            reason = self._shutdown_reason
        self._settle_xenstore()
        return self._shutdown(reason)

    def _wait_for_vifs(self, names: list[str], timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
        """Until these interfaces are connected (or ``timeout``): a workload starts with its network up."""
        deadline = time.monotonic() + timeout
        while not all(name in self.netfront.interfaces for name in names) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _not_started(self, reason: str) -> int:
        """The workload cannot be loaded: report why (``~/workload``, workload_state) and crash."""
        line = workload_state.one_line(reason)
        print(f"[{self.label}] cannot start the workload: {line}", file=sys.stderr)
        self.xenbus.write_async(workload_state.ERROR, line)
        try:
            # Its reply says xenstored holds both nodes before the domain dies.
            self.xenbus.write(workload_state.STATE, workload_state.FAILED)
        except (XsError, TimeoutError) as exc:
            print(f"[{self.label}] cannot report it to xenstore: {exc}", file=sys.stderr)
        return self._shutdown(ShutdownReason.CRASH)

    def _settle_xenstore(self) -> None:
        """Wait until xenstored has handled every request sent so far, as Linux's ``xs_suspend`` waits
        for the requests in flight: a workload that returns at once must not lose its ``started``."""
        try:
            self.xenbus.request(XS.READ, b"domid\0", timeout=XENSTORE_SETTLE_S)
        except (XsError, TimeoutError):
            pass

    def _vcpus_up(self, workload: Callable) -> None:
        """VCPUOP_up for each secondary vCPU, once the workload (whose functions they run) is loaded."""
        self.vcpus_globals.bind(getattr(workload, "__globals__", {}))
        for vcpu in self.vcpus:
            try:
                self.hypercall.call("vcpu_op", cmd="up", vcpu=vcpu.index, pid=vcpu.pid)
            except OSError as exc:
                print(f"[{self.label}] vCPU {vcpu.index} is not scheduled: {exc}", file=sys.stderr)

    def _event_loop(self) -> None:
        self.xenbus.loop_thread = self.console.loop_thread = threading.get_ident()
        try:
            while self._running:
                # No timeout: an idle guest must not wake by itself (every wake-up makes the
                # credit scheduler sample it more often, and hundreds of guests add up).
                self.loop.poll()
        except ChannelClosed:
            os._exit(0)  # the hypervisor is gone: so is this domain
        except BaseException:
            traceback.print_exc()
            self._shutdown(ShutdownReason.CRASH)

    def _take_over_stdio(self) -> None:
        """Make the console the workload's stdout, stderr and stdin."""
        out = io.TextIOWrapper(io.BufferedWriter(ConsoleStream(self.console, "w")), line_buffering=True)
        sys.stdout = sys.stderr = out
        sys.stdin = io.TextIOWrapper(io.BufferedReader(ConsoleStream(self.console, "r")))
        logging.basicConfig(
            stream=out, level=logging.INFO, format=f"%(levelname)s {self.label} %(name)s: %(message)s", force=True
        )

    # -- shutdown ------------------------------------------------------------------

    def _on_shutdown_request(self, path: str, token: str) -> None:
        """Watch on ``control/shutdown`` (runs in the loop thread)."""

        def got(msg_type: int, payload: bytes) -> None:
            request = payload.decode(errors="replace").strip("\0")
            if msg_type != XS.READ or not request:  # an error or "" means nothing is asked
                return
            if request not in _REQUESTS:
                print(f"[{self.label}] shutdown request {request!r} is not supported; ignored", file=sys.stderr)
                self.xenbus.write_async("control/shutdown", "")
                return
            self.xenbus.write_async("control/shutdown", "")  # acknowledge, as Linux's xenbus does
            self._shutdown_reason = _REQUESTS[request]
            self.console.hangup()  # a workload blocked reading its console sees end of input
            if self.context is not None:
                self.context.shutdown_reason = request
                self.context.shutdown.set()
            threading.Timer(SHUTDOWN_GRACE_S, self._shutdown, args=(self._shutdown_reason,)).start()

        self.xenbus.request_async(XS.READ, b"control/shutdown\0", got)

    def _shutdown(self, reason: int) -> int:
        """SCHEDOP_shutdown: flush the console and tell the hypervisor; never returns."""
        self._running = False
        try:
            sys.stdout.flush()
        except Exception:
            pass
        self.console.drain()
        try:
            self.hypercall.call("sched_shutdown", reason=reason)
        except Exception:
            pass
        os._exit(0)

    # -- hypervisor events ---------------------------------------------------------

    def _on_hypercall_socket(self, fd: int) -> None:
        self.hypercall.drain_events()

    def _on_hypervisor_event(self, event: dict, fds: list[int]) -> None:
        kind = event.get("event")
        if kind == "evtchn_peer":
            self.loop.connect(event["port"], fds[0] if fds else None)
        elif kind == "evtchn_new":
            self.loop.bind(event["port"], fds[0])
        else:
            for fd in fds:
                os.close(fd)
