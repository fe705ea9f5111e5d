"""Save and restore (``tools/xl/xl_saverestore.c``; libxl's ``libxl_domain_suspend`` and
``libxl_domain_create_restore``; libxc's ``xg_sr_save.c`` and ``xg_sr_restore.c``).

``save`` asks the guest to suspend (``xenlike.public.suspend``), waits until the
hypervisor has it stopped, writes its image (``xenlike.public.migration_stream``)
and destroys it, or with ``-c``/``-p`` lets it run on (paused with ``-p``).
``restore`` reads and checks a whole image before anything is built, then builds
the domain with the image's memory and starts it resuming.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from xenlike.public.grant_table import DEFAULT_MAX_GRANT_FRAMES
from xenlike.public.migration_stream import (
    DeviceState,
    DomainInfo,
    PageData,
    PageType,
    StreamError,
    StreamReader,
    StreamWriter,
    VcpuContext,
    WorkloadState,
)
from xenlike.public.start_info import reserved_frames
from xenlike.public.suspend import (
    SHUTDOWN_NODE,
    SUSPEND,
    SUSPEND_ERROR,
    SuspendRecordError,
    check_place,
)
from xenlike.public.vdisk import MODEL_SPLIT, model_limits
from xenlike.public.workload_state import one_line
from xenlike.public.xen import PAGE_SIZE, ShutdownReason
from xenlike.public.xs_wire import XsError, home_path

from ..builder import max_vcpus
from ..devices import DEVICE_TYPES
from ..xenconsoled import HISTORY_BYTES
from ..xenstored import Quotas
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from ..builder import BuiltDomain
    from .server import Toolstack

__all__ = [
    "save",
    "restore",
    "SUSPEND_TIMEOUT_S",
    "write_image",
    "suspend_record",
    "read_image",
    "Image",
    "ImageAssembler",
    "migrate",
    "migrate_listen",
]

log = logging.getLogger("dom0.toolstack")

# How long a guest has to suspend once asked (libxl's LIBXL_SUSPEND_TIMEOUT is 60 s for a
# guest that must stop its devices; a xenlike guest has only its front ends to quiesce).
SUSPEND_TIMEOUT_S = 30.0
RESTORE_REPORT_TIMEOUT_S = 10.0
# The subtree of a domain's home its image carries: the guest's own values.
CARRIED_NODES = "data"
_ZERO_PAGE = bytes(PAGE_SIZE)


def _caller_path(path: Any, cwd: Any) -> str:
    """A path as the caller meant it: relative to its directory, not dom0's."""
    if not isinstance(path, str) or not path:
        raise ToolstackError("a save or restore needs a file name")
    if isinstance(cwd, str) and os.path.isabs(cwd) and not os.path.isabs(path):
        return os.path.normpath(os.path.join(cwd, path))
    return path


# -- suspending ----------------------------------------------------------------------------


def suspend_domain(ts: Toolstack, built: BuiltDomain, done: Callable[[dict | None, str], None]) -> None:
    """Ask ``built`` to suspend; ``done(info, "")`` once the hypervisor has it stopped, or ``done(None, why)``.

    A guest that refuses (its reason in ``~/workload/suspend-error``), ends, or
    does not suspend within SUSPEND_TIMEOUT_S is not touched further: it runs on.
    """
    home = home_path(built.domid)
    ts.xs.write(f"{home}/{SUSPEND_ERROR}", "")
    ts.xs.write(f"{home}/{SHUTDOWN_NODE}", SUSPEND)
    log.info("%s: suspend requested", built.label)
    outcome: dict[str, Any] = {}

    def settled() -> bool:
        try:
            info = ts.hypercall("domctl", cmd="getdomaininfo", domid=built.domid)[0][0]
        except OSError:
            outcome["why"] = "it was destroyed meanwhile"
            return True
        if info["shutdown"]:
            if info["shutdown_reason"] == ShutdownReason.SUSPEND and info.get("suspend_record"):
                outcome["info"] = info
            else:
                outcome["why"] = f"it shut down instead ({info.get('exit') or 'shut down'})"
            return True
        try:
            refusal = one_line(ts.xs.read(f"{home}/{SUSPEND_ERROR}").decode(errors="replace"))
        except XsError:
            refusal = ""
        if refusal:
            outcome["why"] = f"it refused: {refusal}"
            return True
        return False

    def finish(ok: bool) -> None:
        if not ok:
            try:
                ts.xs.write(f"{home}/{SHUTDOWN_NODE}", "")
            except XsError:
                pass
            done(None, f"it did not suspend within {SUSPEND_TIMEOUT_S:g}s")
            return
        done(outcome.get("info"), outcome.get("why", ""))

    ts.poll(settled, SUSPEND_TIMEOUT_S, finish)


def resume_domain(ts: Toolstack, built: BuiltDomain, paused: bool = False) -> None:
    """Cancel ``built``'s suspend (``libxl_domain_resume`` with ``suspend_cancel``): it runs on where it stopped."""
    ts.hypercall("domctl", cmd="resumedomain", domid=built.domid, paused=paused)
    ts.lifecycle.resumed(built)


# -- the image -------------------------------------------------------------------------------


def data_frames(built: BuiltDomain, first: int) -> Iterator[int]:
    """Frames ``first..`` of ``built``'s memory that hold anything: the memfd's data extents, zero pages left out."""
    memory = built.memory
    end = memory.nr_frames * PAGE_SIZE
    offset = first * PAGE_SIZE
    while offset < end:
        try:
            start = os.lseek(memory.fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            raise
        stop = min(os.lseek(memory.fd, start, os.SEEK_HOLE), end)
        for pfn in range(start // PAGE_SIZE, -(-stop // PAGE_SIZE)):
            if memory.frame(pfn) != _ZERO_PAGE:
                yield pfn
        offset = stop


def carried_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config an image or a sender carries, as this host builds it: its disks must be here already.

    ``size=`` creates nothing then: a saved guest's disk holds its data, which a new
    empty image would silently lose, and the path is the sender's to choose.
    """
    disks = config.get("disk") or []
    return {**config, "disk": [{**disk, "size": None} if isinstance(disk, dict) else disk for disk in disks]}


def first_free_pfn(config: dict[str, Any]) -> int:
    """The first frame of a guest's own memory: the builder's frames lie below it and are built afresh."""
    frames = config.get("max_grant_frames", DEFAULT_MAX_GRANT_FRAMES)
    if type(frames) is not int or frames < 1:  # as xl.cfg's parser takes it
        raise ToolstackError(f"the config's max_grant_frames {str(frames)[:40]!r} is not a number of frames")
    return reserved_frames(frames)


def carried_nodes(ts: Toolstack, built: BuiltDomain) -> list[tuple[str, str]]:
    """The ``data/...`` nodes under the domain's home, relative to it."""
    home = home_path(built.domid)
    pairs: list[tuple[str, str]] = []
    stack = [CARRIED_NODES]
    while stack:
        rel = stack.pop()
        try:
            value = ts.xs.read(f"{home}/{rel}").decode(errors="replace")
            children = ts.xs.directory(f"{home}/{rel}")
        except XsError:
            continue
        if rel != CARRIED_NODES:
            pairs.append((rel, value))
        stack.extend(f"{rel}/{child}" for child in children)
    return sorted(pairs)


def write_domain_records(built: BuiltDomain, writer: StreamWriter) -> None:
    """DOMAIN_INFO (``vcpus`` online of ``max_vcpus``) and a VCPU_CONTEXT for each of its vCPUs."""
    config = built.config
    online, most = int(config.get("vcpus", 1)), max_vcpus(config)
    writer.domain_info(DomainInfo(built.name, built.uuid, built.memory.nr_frames, online, most, config))
    for vcpu in range(most):
        writer.vcpu_context(VcpuContext(vcpu, {"online": vcpu < online}))


def write_image(
    ts: Toolstack, built: BuiltDomain, info: dict, writer: StreamWriter, pfns: list[int] | None = None
) -> None:
    """The image of a suspended domain: its static records, its pages (``pfns``, or every frame with data), the rest."""
    config = built.config
    write_domain_records(built, writer)
    for row in DEVICE_TYPES:
        for spec in config.get(row.config_key, []):
            writer.device_state(DeviceState(row.kind, int(spec["devid"]), spec))
    writer.static_data_end()
    if pfns is None:
        pfns = list(data_frames(built, first_free_pfn(config)))
    memory = built.memory
    writer.page_data([(pfn, memory.frame(pfn)) for pfn in pfns])
    writer.xenstore_data(carried_nodes(ts, built))
    writer.workload_state(suspend_record(built, info))
    writer.console_history(ts.xenconsoled.history(built.domid))
    writer.end()


def suspend_record(built: BuiltDomain, info: dict) -> WorkloadState:
    """The suspend record a suspended guest left in its memory, where ``getdomaininfo`` says."""
    pfn, length = info["suspend_record"]
    return WorkloadState(pfn, bytes(built.memory.view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length]))


@dataclass
class Image:
    """A whole image, read and checked: what a restore builds from."""

    info: DomainInfo
    place: tuple[int, int]
    pages: list[PageData] = field(default_factory=list)
    nodes: list[tuple[str, str]] = field(default_factory=list)
    record: bytes = b""
    skipped: list[int] = field(default_factory=list)
    console: bytes = b""  # CONSOLE_HISTORY: what the guest printed before

    @property
    def nr_pages(self) -> int:
        return sum(len(p.pfns) for p in self.pages)


class ImageAssembler:
    """Checks a stream's records as they come against what a restore needs, and keeps all but the pages.

    ``on_pages(page_data)`` gets each PAGE_DATA record once it is checked;
    ``on_info(info)`` the DOMAIN_INFO, before any page. :meth:`finish` gives the
    :class:`Image` (its ``pages`` empty) once END has come. XENSTORE_DATA is held
    to what the guest could have written under ``quotas`` (this host's xenstore
    quotas for a domain): at most ``nodes`` nodes of ``node_size`` octets each, so
    an image's nodes cost what a domain's may, however long the stream.
    """

    def __init__(
        self,
        where: str,
        on_pages: Callable[[PageData], None],
        on_info: Callable[[DomainInfo], None] | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.where = where
        self.quotas = quotas if quotas is not None else Quotas()
        self.on_pages = on_pages
        self.on_info = on_info
        self.info: DomainInfo | None = None
        self.place: tuple[int, int] | None = None
        self.nodes: list[tuple[str, str]] = []
        self.record: bytes | None = None
        self.console = b""
        self.pages = 0

    def take(self, item: Any) -> None:
        where = self.where
        if isinstance(item, DomainInfo):
            self.info = item
            if self.on_info is not None:
                self.on_info(item)
        elif isinstance(item, PageData):
            assert self.info is not None
            low = [pfn for pfn in item.pfns if pfn < first_free_pfn(self.info.config)]
            if low:
                raise StreamError(f"{where}: PAGE_DATA names frame {low[0]}, one the domain builder lays out afresh")
            self.pages += len(item.pfns)
            self.on_pages(item)
        elif isinstance(item, list):
            quotas = self.quotas
            if len(self.nodes) + len(item) > quotas.nodes:
                raise StreamError(
                    f"{where}: XENSTORE_DATA carries more than {quotas.nodes} nodes, "
                    f"the most a domain may hold here (xenstore quota 'nodes')"
                )
            for path, value in item:
                if path != CARRIED_NODES and not path.startswith(CARRIED_NODES + "/"):
                    raise StreamError(
                        f"{where}: XENSTORE_DATA names {path[:80]!r}; an image carries only {CARRIED_NODES}/"
                    )
                if len(value) > quotas.node_size:
                    raise StreamError(
                        f"{where}: XENSTORE_DATA's node {path[:80]!r} holds {len(value)} characters, "
                        f"over the {quotas.node_size} a node may (xenstore quota 'node_size')"
                    )
            self.nodes.extend(item)
        elif isinstance(item, WorkloadState):
            assert self.info is not None
            try:
                self.place = check_place(
                    [item.pfn, len(item.record)], first_free_pfn(self.info.config), self.info.nr_frames
                )
            except SuspendRecordError as exc:
                raise StreamError(f"{where}: WORKLOAD_STATE: {exc}") from None
            self.record = item.record
        elif isinstance(item, bytes):  # CONSOLE_HISTORY: only its tail is kept, as xenconsoled keeps it
            self.console = item[-HISTORY_BYTES:]

    def finish(self, skipped: list[int]) -> Image:
        info, place, record = self.info, self.place, self.record
        if info is None or place is None or record is None:
            missing = "DOMAIN_INFO" if info is None else "WORKLOAD_STATE"
            raise StreamError(f"{self.where}: the image has no {missing}: nothing to resume")
        return Image(info, place, [], self.nodes, record, skipped, self.console)


def domain_quotas(ts: Toolstack) -> Quotas:
    """This host's xenstore quotas for a domain (``xenstore-control quota``), what an image's nodes are held to."""
    quotas: Quotas = ts.xs.daemon.quotas.global_quotas
    return quotas


def read_image(read: Callable[[int], bytes], where: str, quotas: Quotas | None = None) -> Image:
    """Read a whole stream and check it against what a restore needs; StreamError naming ``where`` and the fault."""
    pages: list[PageData] = []
    assembler = ImageAssembler(where, pages.append, quotas=quotas)
    reader = StreamReader(read)
    for item in reader:
        assembler.take(item)
    image = assembler.finish(reader.skipped)
    image.pages = pages
    return image


def fill_memory(image: Image) -> Callable[[BuiltDomain], dict[str, Any]]:
    """The builder's restore step: the image's pages and record into the new domain's memory."""

    def fill(built: BuiltDomain) -> dict[str, Any]:
        memory = built.memory
        for page_data in image.pages:
            for pfn, kind, data in page_data.pages():
                if kind == PageType.XTAB:
                    continue
                memory.frame(pfn)[:] = data if data is not None else _ZERO_PAGE
        pfn, length = image.place
        memory.view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length] = image.record
        return {"resume": list(image.place)}

    return fill


def restore_image(
    ts: Toolstack,
    image: Image,
    paused: bool,
    fill: Callable[[BuiltDomain], dict[str, Any]] | None = None,
    precreated: tuple[dict[str, Any], int] | None = None,
) -> BuiltDomain:
    """Build the domain an image describes (its name must be free here) and put its nodes back.

    ``fill`` writes its memory (by default from the image's own pages);
    ``precreated`` is the domain made for it already (see the builder).
    """
    config = carried_config(image.info.config)
    memory = config.get("memory", 0)
    if type(memory) is not int or memory < 0:
        raise ToolstackError(f"the image's config gives memory {str(memory)[:40]!r}: not a number of MiB")
    if not isinstance(config.get("name"), str):
        raise ToolstackError("the image's config has no name")
    expected = memory * (1 << 20) // PAGE_SIZE
    if expected != image.info.nr_frames:
        raise ToolstackError(
            f"the image's domain has {image.info.nr_frames} frames but its config's memory gives {expected}"
        )
    built = ts.lifecycle.create(
        config, paused=paused, uuid=image.info.uuid, restore=fill or fill_memory(image), precreated=precreated
    )
    ts.xenconsoled.restore_history(built.domid, image.console)
    home = home_path(built.domid)
    for path, value in image.nodes:
        try:
            ts.xs.write(f"{home}/{path}", value)
        except (XsError, ValueError) as exc:  # ValueError: no path xenstore takes (a NUL, text that is no UTF-8)
            log.warning("%s: a node of its image was not restored: %s: %s", built.label, path[:80], exc)
    return built


# -- the operations ------------------------------------------------------------------------


def _refuse_passthrough(built: BuiltDomain, what: str) -> None:
    """A passthrough disk cannot be saved or migrated: the guest holds this host's fd of its image."""
    for disk in built.config.get("disk", []):
        if not model_limits(disk.get("model", MODEL_SPLIT))["migratable"]:
            raise ToolstackError(
                f"{built.label} cannot be {what}: its {disk['vdev']} is a passthrough disk (the guest holds "
                "this host's fd of its image and does its own I/O); give the disk model=split or model=direct"
            )


def save(ts: Toolstack, request: Request) -> None:
    """xl save [-c] [-p] DOMAIN FILE: suspend, write the image, then destroy (or run on with -c, paused with -p).

    The file is written as ``FILE.part`` and renamed once complete, so a save
    that fails leaves no image behind. The reply: ``{domid, pages, bytes,
    total_ms, downtime_ms, kept}``.
    """
    args = request.args
    built = ts.lifecycle.find(args["domain"])
    _refuse_passthrough(built, "saved")
    path = _caller_path(args.get("file"), args.get("cwd"))
    keep = bool(args.get("checkpoint")) or bool(args.get("paused"))
    partial = f"{path}.part"
    try:
        out = open(partial, "wb")  # a file dom0 cannot write fails before the guest is asked anything
    except OSError as exc:
        raise ToolstackError(f"cannot write {path}: {exc.strerror}") from None
    started = time.monotonic()

    def suspended(info: dict | None, why: str) -> None:
        stopped = time.monotonic()
        if info is None:
            out.close()
            os.unlink(partial)
            log.info("%s: not saved: %s", built.label, why)
            request.fail(f"{built.name} (domain {built.domid}) was not saved: {why}; it runs on")
            return
        try:
            writer = StreamWriter(out.write)
            write_image(ts, built, info, writer)
            out.close()
            os.replace(partial, path)
        except Exception as exc:
            out.close()
            os.unlink(partial)
            resume_domain(ts, built)
            log.exception("%s: writing its image failed; resumed", built.label)
            request.fail(f"{built.name} was not saved: writing {path} failed: {exc}; it runs on")
            return
        if keep:
            resume_domain(ts, built, paused=bool(args.get("paused")))
        else:
            ts.lifecycle.destroy(built)
        done = time.monotonic()
        log.info("%s: saved to %s (%d pages, %d bytes)", built.label, path, writer.pages, writer.octets)
        request.reply(
            {
                "domid": built.domid,
                "name": built.name,
                "pages": writer.pages,
                "bytes": writer.octets,
                "rounds": 1,
                "total_ms": (done - started) * 1000,
                "downtime_ms": (done - stopped) * 1000 if keep else None,
                "kept": keep,
            }
        )

    suspend_domain(ts, built, suspended)


def _regular_file_opener(path: str, flags: int) -> int:
    """Open without waiting (a FIFO with no writer would stop dom0's loop), and only a regular file."""
    fd = os.open(path, flags | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (a saved image is one)")
    os.set_blocking(fd, True)
    return fd


def restore(ts: Toolstack, request: Request) -> None:
    """xl restore [-p] FILE: check the whole image, build its domain, answer once its guest runs again."""
    args = request.args
    path = _caller_path(args.get("file"), args.get("cwd"))
    started = time.monotonic()
    try:
        with open(path, "rb", opener=_regular_file_opener) as f:
            image = read_image(f.read, path, domain_quotas(ts))
    except OSError as exc:
        raise ToolstackError(f"cannot read {path}: {exc.strerror}") from None
    except StreamError as exc:
        raise ToolstackError(f"{exc}; nothing was restored") from None
    paused = bool(args.get("paused"))
    built = restore_image(ts, image, paused)
    result = {
        "domid": built.domid,
        "name": built.name,
        "pages": image.nr_pages,
        "skipped": [f"{t:#010x}" for t in image.skipped],
    }
    if paused:
        request.reply({**result, "total_ms": (time.monotonic() - started) * 1000})
        return
    report = ts.lifecycle.await_start(built)

    def finish(ok: bool) -> None:
        if not ok:
            ts.lifecycle.stop_awaiting(report)
        total = (time.monotonic() - started) * 1000
        request.reply({**result, "start": report.to_dict(RESTORE_REPORT_TIMEOUT_S), "total_ms": total})

    ts.poll(lambda: ts.lifecycle.start_settled(report), RESTORE_REPORT_TIMEOUT_S, finish, request=request)


def migrate(ts: Toolstack, request: Request) -> None:
    """xl migrate DOMAIN HOST: live to another host's toolstack (``host`` ADDR:PORT, ``key`` the target's).

    Events ``{"progress": {round, pages, sent, mib_s, dirty, final}}`` (and ``{"note": ...}``)
    come while it runs; the reply is the summary (rounds, pages, bytes, total_ms,
    downtime_ms, live), or an error saying why and that the guest runs on here.
    """
    from xenlike.public import migration_channel as ch

    from .migrate_send import Migration, Policy

    args = request.args
    built = ts.lifecycle.find(args["domain"])
    _refuse_passthrough(built, "migrated")
    try:
        addr, port = ch.parse_address(str(args.get("host", "")))
        key = args.get("key")
        if not isinstance(key, str) or not key:
            raise ch.ChannelError("migrate needs the target's key: `xenlike info` on the target shows it (--key)")
        ch.auth_reply(key, b"")  # a key that is not one is refused before anything moves
    except (ValueError, ch.ChannelError) as exc:
        raise ToolstackError(str(exc)) from None
    policy = Policy(
        target_dirty=int(args.get("target_dirty", 50)),
        max_rounds=int(args.get("max_rounds", 5)),
        live=not args.get("stop_and_copy"),
    )
    if policy.target_dirty < 0 or policy.max_rounds < 1:
        raise ToolstackError("--target-dirty is 0 or more and --max-rounds 1 or more")
    log.info("%s: migrating to %s:%d (%s)", built.label, addr, port, "live" if policy.live else "stop-and-copy")
    Migration(ts, request, built, f"tcp://{addr}:{port}", key, policy).start()


def migrate_listen(ts: Toolstack, request: Request) -> Any:
    """``up --listen ADDR:PORT``: accept migrations there, with a key this host makes; returns both."""
    from xenlike.public import migration_channel as ch

    from .migrate_receive import MigrationListener

    try:
        addr, port = ch.parse_address(str(request.args.get("address", "")))
    except ValueError as exc:
        raise ToolstackError(str(exc)) from None
    if ts.migration_listener is not None:
        raise ToolstackError(f"this host already accepts migrations on {ts.migration_listener.endpoint}")
    ts.migration_listener = MigrationListener(ts, addr, port)
    return ts.migration_listener.info()
