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
from typing import Any

from xenlike.kernel import dirty_log, trace
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import ChannelClosed, HypercallClient
from xenlike.kernel.memory import GuestMemory, OutOfFrames, PageAllocator
from xenlike.public import suspend as suspend_abi
from xenlike.public import workload_state
from xenlike.public.console import ConsoleInterface
from xenlike.public.start_info import StartInfo, reserved_frames
from xenlike.public.xen import PAGE_SIZE, ShutdownReason
from xenlike.public.xs_wire import XenstoreInterface, XsError
from xenlike.public.xs_wire import XsdSockmsgType as XS

from .balloon import Balloon
from .blkfront import BlkfrontDriver
from .console import ConsoleFront, ConsoleStream
from .cpu_hotplug import CpuHotplug
from .netfront import NetfrontDriver
from .sysrq import SYSRQ_PATH, SysrqHandler
from .vchan import VchanDriver
from .vcpu import WorkloadGlobals, fork_vcpus
from .vdisk import VdiskHotplug
from .workload import SuspendRefused, WorkloadContext, WorkloadError, load_workload
from .xenbus import XenbusClient
from .xenbus_frontend import HANDSHAKE_TIMEOUT_S, FrontendError, XenbusFrontend

__all__ = ["start", "Kernel", "SHUTDOWN_GRACE_S"]


def _exception_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


# How often the zygote walks the boot path before it forks: CPython 3.11 quickens a function's
# bytecode in place after 8 calls, and a quickened call no longer writes its warm-up counter.
ZYGOTE_REHEARSALS = 10


def warm_up() -> None:
    """Called by the zygote once, before it forks: walk the boot path :data:`ZYGOTE_REHEARSALS` times.

    Every shell then finds that code already quickened and the type cache full of
    its lookups, and copies on write fewer of the zygote's pages (some 35 an idle guest).
    Each walk closes what it opened: no fd or thread is left for the shells to inherit.
    """
    for _ in range(ZYGOTE_REHEARSALS):
        _rehearse_boot()


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
        if "trace" in boot:
            trace.attach(fds[boot["trace"]], self.domid)
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
        self.balloon = Balloon(self)
        self.context: WorkloadContext | None = None
        self.workload: Callable | None = None
        self._suspending = threading.Lock()
        self._shutdown_reason: int | None = None
        self._running = True
        # Secondary vCPUs are forked now, before the event-loop thread does anything.
        # Of maxvcpus (the hypervisor's count), the image's vcpus are online at boot.
        self.vcpus_globals = WorkloadGlobals(self.start_info.image.get("workload", "idle"))
        max_vcpus = int(boot.get("vcpus", 1))
        online = min(max_vcpus, int(self.start_info.image.get("vcpus", max_vcpus)))
        self.vcpus = fork_vcpus(online, self.vcpu_process_name, self.vcpus_globals)
        self.cpu_hotplug = CpuHotplug(self, max_vcpus)

    def vcpu_process_name(self, index: int) -> str:
        """A secondary vCPU's process name, as ps shows it."""
        return f"xl-d{self.domid}v{index}-{self.name}"

    # -- boot and run --------------------------------------------------------------

    def run(self, prepared: PreparedShell) -> int:
        # `kill -USR1 <pid>` dumps every thread of the guest to the host's stderr log.
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__ or 2, all_threads=True)
        prepared.attach(self)  # its event-loop thread starts serving this kernel
        self._take_over_stdio()
        self.xenbus.watch_async("control/shutdown", "control-shutdown", self._on_shutdown_request)
        sysrq = SysrqHandler(self.label, self.xenbus, self._shutdown, self._memory_report)
        self.xenbus.watch_async(SYSRQ_PATH, "control-sysrq", sysrq)
        for feature in ("feature-poweroff", "feature-reboot", "feature-suspend"):
            self.xenbus.write_async(f"control/{feature}", "1")
        image = self.start_info.image
        try:
            record = self._take_back_record(image.get("resume"))  # before any driver allocates a frame
        except suspend_abi.SuspendRecordError as exc:
            return self._not_started(f"cannot resume from its image: {exc}")
        self.frontends.start()
        self.balloon.start()
        if image.get("disks"):
            self.blkfront.wait_for(image["disks"])  # as a kernel waits for its root device
        disks: dict[str, Any] = self.blkfront.disks  # ctx.disks: blkfront keeps it as disks come and go
        VdiskHotplug(self, disks).start()  # direct and passthrough disks, beside blkfront's, as they come and go
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
            resumed=record is not None,
        )
        self.workload = workload
        self._vcpus_up(workload)
        self.cpu_hotplug.start()  # after the workload is bound: a vCPU forked later serves its functions
        if record is not None:
            try:
                self._resume_workload(record.workload)
            except Exception as exc:
                return self._not_started(f"its workload's resume hook raised {_exception_line(exc)}")
            print(f"[{self.label}] resumed from its image")
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
            if request == suspend_abi.SUSPEND:
                self.xenbus.write_async("control/shutdown", "")  # acknowledge, as Linux's xenbus does
                threading.Thread(target=self._suspend, name="suspend", daemon=True).start()
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

    # -- suspend and resume (Linux's drivers/xen/manage.c do_suspend) ---------------

    def _suspend(self) -> None:
        """``control/shutdown = suspend``: quiesce the front ends, save the workload, SCHEDOP_shutdown(suspend).

        Runs in a thread of its own. The hypercall returns only if the suspend is
        cancelled (the domain runs on here); otherwise the domain is destroyed
        while stopped in it. A suspend that cannot be made is refused (its reason
        in ``~/workload/suspend-error``) and the guest runs on.
        """
        if not self._suspending.acquire(blocking=False):
            return  # one is under way
        try:
            ctx, workload = self.context, self.workload
            if ctx is None or workload is None:
                return self._refuse_suspend("its workload has not started yet")
            if getattr(workload, "suspendable", True) is False:
                return self._refuse_suspend("its workload cannot be suspended (suspendable = False)")
            # The workload first, then the devices, as Linux freezes processes before it suspends drivers:
            # a workload that stops itself may need its disks to do so.
            try:
                hook = getattr(workload, "suspend", None)
                blob = hook(ctx) if hook is not None else b""
                if not isinstance(blob, (bytes, bytearray)):
                    raise SuspendRefused(f"its suspend hook returned {type(blob).__name__}, not bytes")
            except SuspendRefused as exc:
                return self._refuse_suspend(str(exc))
            except Exception as exc:
                return self._refuse_suspend(f"its workload's suspend hook raised {_exception_line(exc)}")
            try:
                self.frontends.suspend()
            except FrontendError as exc:
                self._resume_quietly(bytes(blob))
                return self._refuse_suspend(str(exc))
            try:
                place = self._leave_record(bytes(blob))
            except (OutOfFrames, suspend_abi.SuspendRecordError) as exc:
                self.frontends.resume()
                self._resume_quietly(bytes(blob))
                return self._refuse_suspend(str(exc))
            log.info("%s: suspending", self.label)
            try:
                self.hypercall.call("sched_shutdown", reason=ShutdownReason.SUSPEND, record=list(place))
            except OSError as exc:
                self.pages.free(place[0])
                self.frontends.resume()
                self._resume_quietly(bytes(blob))
                return self._refuse_suspend(f"the hypervisor refused the suspend: {exc}")
            # Only a cancelled suspend comes back here: run on where we stopped.
            self.pages.free(place[0])
            self.frontends.resume()
            self._resume_quietly(bytes(blob))
            log.info("%s: resumed (the suspend was cancelled)", self.label)
        finally:
            self._suspending.release()

    def _leave_record(self, blob: bytes) -> tuple[int, int]:
        """Write the suspend record (the workload's runs and blob) into frames of our own; their (pfn, length)."""
        data = suspend_abi.SuspendRecord(self.pages.runs(), blob).pack()
        pfn = self.pages.alloc(-(-len(data) // PAGE_SIZE), owner="suspend-record")
        self.memory.view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + len(data)] = data
        return pfn, len(data)

    def _take_back_record(self, place: object) -> suspend_abi.SuspendRecord | None:
        """A restored guest: read the record its image names and take back its workload's frames."""
        if place is None:
            return None
        si = self.start_info
        pfn, length = suspend_abi.check_place(place, si.first_free_pfn, si.nr_pages)
        data = bytes(self.memory.view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length])
        record = suspend_abi.SuspendRecord.unpack(data, si.first_free_pfn, si.nr_pages)
        for start, count in record.runs:
            try:
                self.pages.reserve(start, count)
            except ValueError as exc:
                raise suspend_abi.SuspendRecordError(str(exc)) from None
        return record

    def _resume_workload(self, state: bytes) -> None:
        hook = getattr(self.workload, "resume", None)
        if hook is not None and self.context is not None:
            hook(self.context, state)

    def _resume_quietly(self, state: bytes) -> None:
        """The workload's resume hook where the guest runs on in this process; what it raises is shown, not fatal."""
        try:
            self._resume_workload(state)
        except Exception:
            traceback.print_exc()

    def _register_dirty_log(self) -> None:
        """Log-dirty mode (a live migration): hand the hypervisor this process's userfaultfd for its memory."""
        try:
            uffd = dirty_log.open_userfaultfd()
        except OSError as exc:
            print(f"[{self.label}] cannot keep a dirty log: {exc.strerror or exc}", file=sys.stderr)
            return
        try:
            self.hypercall.call(
                "logdirty_register", fds=[uffd], address=self.memory.address(0), nr_frames=self.memory.nr_frames
            )
        except OSError as exc:
            print(f"[{self.label}] the hypervisor refused the dirty log: {exc}", file=sys.stderr)
        finally:
            os.close(uffd)

    def _refuse_suspend(self, reason: str) -> None:
        line = workload_state.one_line(reason)
        print(f"[{self.label}] cannot be suspended: {line}", file=sys.stderr)
        self.xenbus.write_async(suspend_abi.SUSPEND_ERROR, line)

    def _memory_report(self) -> str:
        """What sysrq 'm' shows: the domain's frames and what its kernel has free."""
        si = self.start_info
        return (
            f"[{self.label}] {self.memory.nr_frames} frames ({self.memory.nr_frames * 4} KiB), "
            f"{self.pages.free_frames} free for the kernel, grant table {si.gnttab_frames} frames"
        )

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
        elif kind == "logdirty":
            # A hypercall from here would wait on the channel this event came on: answer from a thread.
            threading.Thread(target=self._register_dirty_log, name="logdirty", daemon=True).start()
        else:
            for fd in fds:
                os.close(fd)
