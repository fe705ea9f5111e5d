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
)
from xenlike.public.start_info import reserved_frames
from xenlike.public.suspend import (
    SHUTDOWN_NODE,
    SUSPEND,
    SUSPEND_ERROR,
    SuspendRecordError,
    check_place,
)
from xenlike.public.xen import PAGE_SIZE, ShutdownReason
from xenlike.public.xs_wire import XsError, home_path

from ..devices import DEVICE_TYPES
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from ..builder import BuiltDomain
    from .server import Toolstack

__all__ = ["save", "restore", "SUSPEND_TIMEOUT_S", "write_image", "read_image", "Image"]

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
            refusal = ts.xs.read(f"{home}/{SUSPEND_ERROR}").decode(errors="replace")
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


def first_free_pfn(config: dict[str, Any]) -> int:
    """The first frame of a guest's own memory: the builder's frames lie below it and are built afresh."""
    return reserved_frames(int(config.get("max_grant_frames", DEFAULT_MAX_GRANT_FRAMES)))


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


def write_image(
    ts: Toolstack, built: BuiltDomain, info: dict, writer: StreamWriter, pfns: list[int] | None = None
) -> None:
    """The image of a suspended domain: its static records, its pages (``pfns``, or every frame with data), the rest."""
    config = built.config
    vcpus = int(config.get("vcpus", 1))
    place = list(info["suspend_record"])
    writer.domain_info(DomainInfo(built.name, built.uuid, built.memory.nr_frames, vcpus, vcpus, config))
    for vcpu in range(vcpus):
        # As a PV guest's vCPU 0 holds its start info frame when it suspends, ours names the suspend record.
        writer.vcpu_context(VcpuContext(vcpu, {"online": True, **({"suspend_record": place} if vcpu == 0 else {})}))
    for row in DEVICE_TYPES:
        for spec in config.get(row.config_key, []):
            writer.device_state(DeviceState(row.kind, int(spec["devid"]), spec))
    writer.static_data_end()
    if pfns is None:
        pfns = list(data_frames(built, first_free_pfn(config)))
    memory = built.memory
    writer.page_data([(pfn, memory.frame(pfn)) for pfn in pfns])
    writer.xenstore_data(carried_nodes(ts, built))
    pfn, length = place
    writer.workload_state(bytes(memory.view[pfn * PAGE_SIZE : pfn * PAGE_SIZE + length]))
    writer.end()


@dataclass
class Image:
    """A whole image, read and checked: what a restore builds from."""

    info: DomainInfo
    place: tuple[int, int]
    pages: list[PageData] = field(default_factory=list)
    nodes: list[tuple[str, str]] = field(default_factory=list)
    record: bytes = b""
    skipped: list[int] = field(default_factory=list)

    @property
    def nr_pages(self) -> int:
        return sum(len(p.pfns) for p in self.pages)


def read_image(read: Callable[[int], bytes], where: str) -> Image:
    """Read a whole stream and check it against what a restore needs; StreamError naming ``where`` and the fault."""
    reader = StreamReader(read)
    info: DomainInfo | None = None
    place: tuple[int, int] | None = None
    pages: list[PageData] = []
    nodes: list[tuple[str, str]] = []
    record: bytes | None = None
    for item in reader:
        if isinstance(item, DomainInfo):
            info = item
        elif isinstance(item, VcpuContext) and item.vcpu_id == 0:
            assert info is not None  # the reader refuses a VCPU_CONTEXT before DOMAIN_INFO
            try:
                place = check_place(item.state.get("suspend_record"), first_free_pfn(info.config), info.nr_frames)
            except SuspendRecordError as exc:
                raise StreamError(f"{where}: vCPU 0's context: {exc}") from None
        elif isinstance(item, PageData):
            assert info is not None
            low = [pfn for pfn in item.pfns if pfn < first_free_pfn(info.config)]
            if low:
                raise StreamError(f"{where}: PAGE_DATA names frame {low[0]}, one the domain builder lays out afresh")
            pages.append(item)
        elif isinstance(item, list):
            for path, _ in item:
                if path != CARRIED_NODES and not path.startswith(CARRIED_NODES + "/"):
                    raise StreamError(f"{where}: XENSTORE_DATA names {path!r}; an image carries only {CARRIED_NODES}/")
            nodes.extend(item)
        elif isinstance(item, bytes) and record is None:
            record = item
    if info is None or place is None or record is None:
        missing = "DOMAIN_INFO" if info is None else "vCPU 0's context" if place is None else "WORKLOAD_STATE"
        raise StreamError(f"{where}: the image has no {missing}: nothing to resume")
    if len(record) != place[1]:
        raise StreamError(f"{where}: WORKLOAD_STATE is {len(record)} bytes; vCPU 0 names a record of {place[1]}")
    return Image(info, place, pages, nodes, record, reader.skipped)


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


def restore_image(ts: Toolstack, image: Image, paused: bool) -> BuiltDomain:
    """Build the domain an image describes (its name must be free here) and put its nodes back."""
    config = dict(image.info.config)
    expected = int(config.get("memory", 0)) * (1 << 20) // PAGE_SIZE
    if expected != image.info.nr_frames:
        raise ToolstackError(
            f"the image's domain has {image.info.nr_frames} frames but its config's memory gives {expected}"
        )
    built = ts.lifecycle.create(config, paused=paused, uuid=image.info.uuid, restore=fill_memory(image))
    home = home_path(built.domid)
    try:
        for path, value in image.nodes:
            ts.xs.write(f"{home}/{path}", value)
    except XsError as exc:
        log.warning("%s: a node of its image was not restored: %s", built.label, exc)
    return built


# -- the operations ------------------------------------------------------------------------


def save(ts: Toolstack, request: Request) -> None:
    """xl save [-c] [-p] DOMAIN FILE: suspend, write the image, then destroy (or run on with -c, paused with -p).

    The file is written as ``FILE.part`` and renamed once complete, so a save
    that fails leaves no image behind. The reply: ``{domid, pages, bytes,
    total_ms, downtime_ms, kept}``.
    """
    args = request.args
    built = ts.lifecycle.find(args["domain"])
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


def restore(ts: Toolstack, request: Request) -> None:
    """xl restore [-p] FILE: check the whole image, build its domain, answer once its guest runs again."""
    args = request.args
    path = _caller_path(args.get("file"), args.get("cwd"))
    started = time.monotonic()
    try:
        with open(path, "rb") as f:
            image = read_image(f.read, path)
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

    ts.poll(lambda: ts.lifecycle.start_settled(report), RESTORE_REPORT_TIMEOUT_S, finish)
