"""xl's output formats (``tools/xl/xl_info.c``, ``xl_vcpu.c``, ``xl_misc.c``) and xentop's
(``tools/xentop/xentop.c``, which ``xl top`` runs), used by the CLI.

Each function takes the plain data the toolstack returns and renders it the way
``xl`` prints it, so scripts written against ``xl`` read ``xenlike``'s output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from xenlike.public.xen import ShutdownReason

__all__ = [
    "state_letters",
    "xentop_state",
    "format_list",
    "format_uptime",
    "uptime_text",
    "format_info",
    "format_block_list",
    "cpu_bitmap",
    "format_vcpu_list",
    "format_sched_credit",
    "format_xentop",
]

# The shutdown-reason letter of xl list's fifth state column: poweroff, reboot,
# suspend, crash, watchdog, soft_reset (tools/xl/xl_info.c "-rscwS").
SHUTDOWN_LETTERS = "-rscwS"

# The domain states both tools show, from getdomaininfo's flags. xenstat splits
# "shut down" in two: a crash is not counted as a shutdown (tools/libs/stat/xenstat.c).
Predicate = Callable[[dict], bool]


def _running(info: dict) -> bool:
    return bool(info.get("running"))


def _blocked(info: dict) -> bool:
    return bool(info.get("blocked"))


def _paused(info: dict) -> bool:
    return bool(info.get("paused"))


def _dying(info: dict) -> bool:
    return bool(info.get("dying"))


def _shutdown_reason(info: dict) -> int | None:
    """The reason a shut-down domain gave (an index into SHUTDOWN_LETTERS), None while it has not shut down."""
    reason = info.get("shutdown_reason")
    return reason if info.get("shutdown") and reason is not None and 0 <= reason < len(SHUTDOWN_LETTERS) else None


def _crashed(info: dict) -> bool:
    return bool(info.get("shutdown")) and info.get("shutdown_reason") == ShutdownReason.CRASH


def _shut_down_cleanly(info: dict) -> bool:
    """xenstat_domain_shutdown: shut down for any reason but a crash."""
    return bool(info.get("shutdown")) and not _crashed(info)


def state_letters(info: dict) -> str:
    """xl list's six state columns: r b p s <reason> d."""
    reason = _shutdown_reason(info)
    return "".join(
        (
            "r" if _running(info) else "-",
            "b" if _blocked(info) else "-",
            "p" if _paused(info) else "-",
            "s" if info.get("shutdown") else "-",
            "-" if reason is None else SHUTDOWN_LETTERS[reason],
            "d" if _dying(info) else "-",
        )
    )


# xentop's STATE column, in its order (xentop.c's state_funcs[]).
XENTOP_STATES: tuple[tuple[str, Predicate], ...] = (
    ("d", _dying),
    ("s", _shut_down_cleanly),
    ("b", _blocked),
    ("c", _crashed),
    ("p", _paused),
    ("r", _running),
)
# xentop's summary counts each domain once, in this order of precedence (do_summary).
XENTOP_SUMMARY: tuple[tuple[str, Predicate], ...] = (
    ("running", _running),
    ("blocked", _blocked),
    ("paused", _paused),
    ("shutdown", _shut_down_cleanly),
    ("crashed", _crashed),
    ("dying", _dying),
)


def xentop_state(info: dict) -> str:
    """xentop's six state letters: d s b c p r, '-' for each state the domain is not in."""
    return "".join(letter if holds(info) else "-" for letter, holds in XENTOP_STATES)


def format_list(rows: Iterable[dict]) -> str:
    """``xl list``: ``Name ID Mem VCPUs State Time(s)``."""
    lines = ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
    for row in rows:
        lines.append(
            f"{row['name']:<40} {row['domid']:5d} {row['mem']:5d} {row['vcpus']:5d}     {row['state']}  "
            f"{row['cpu_time']:8.1f}"
        )
    return "\n".join(lines)


def uptime_text(seconds: float, short: bool = False) -> str:
    """xl's ``uptime_to_string``: ``%2d:%02d:%02d``, after ``%d day, `` or ``%d days, `` (``short``: no seconds)."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:2d}:{minutes:02d}" if short else f"{hours:2d}:{minutes:02d}:{secs:02d}"
    if days == 0:
        return clock
    return f"{days} day{'s' if days > 1 else ''}, {clock}"


def format_uptime(rows: Iterable[dict], short: bool = False, now: float | None = None) -> str:
    """``xl uptime`` (``print_uptime``): a ``Name ID Uptime`` table (``"%-33s %4d %s"``).

    ``short`` (``-s``) prints no header and one ``uptime(1)``-like line per
    domain instead, `` HH:MM:SS up <uptime>, <name> (<id>)``, the clock being
    ``now`` (default: the current local time).
    """
    if short:
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        return "\n".join(
            f" {clock} up {uptime_text(row['uptime'], short=True)}, {row['name']} ({row['domid']})" for row in rows
        )
    lines = [f"{'Name':<33} {'ID':>4} Uptime"]
    for row in rows:
        lines.append(f"{row['name']:<33} {row['domid']:4d} {uptime_text(row['uptime'])}")
    return "\n".join(lines)


def format_sharing(rows: Iterable[dict]) -> str:
    """``xl sharing`` (``sharing`` in ``tools/xl/xl_mem.c``): ``Name ID Mem Shared``, memory in MiB
    (``"%-40s %5d %5lu  %5lu"``)."""
    lines = ["Name                                        ID   Mem Shared"]
    for row in rows:
        mem, shared = row["memory_kb"] // 1024, row["shared_kb"] // 1024
        lines.append(f"{row['name']:<40} {row['domid']:5d} {mem:5d}  {shared:5d}")
    return "\n".join(lines)


# xl's `key : value` lines: "%-23s: %s" (maybe_printf in tools/xl/xl_info.c).
INFO_KEY_WIDTH = 23


def format_info(physinfo: dict, node: dict[str, str], extra: dict[str, object] | None = None) -> str:
    """``xl info`` (``print_info``): ``output_nodeinfo``'s, ``output_physinfo``'s and ``output_xeninfo``'s
    lines, in xl's order and format, then xenlike's own (``extra``).

    ``node`` is uname's ``host``, ``release``, ``version`` and ``machine``;
    ``physinfo`` is the toolstack's ``info`` (the ``physinfo`` sysctl, its
    ``version`` the ``xen_version`` answer, ``sched`` the scheduler). Memory is
    in MiB, ``cpu_mhz`` is ``cpu_khz`` as ``%d.%03d``, ``xen_version`` is
    ``%d.%d%s`` of major, minor and extra. The sharing lines are ksmd's, with
    ``--page-sharing`` (:mod:`xenlike.kernel.ksm`). Fields xl prints that xenlike has no
    figure for (``hw_caps``, ``virt_caps``, ``platform_params``, the compiler's)
    are left out rather than made up.
    """
    frames_mib = 4096 / (1 << 20)
    version = physinfo["version"]
    khz = int(physinfo["cpu_khz"])
    pairs: dict[str, object] = {
        # output_nodeinfo
        "host": node["host"],
        "release": node["release"],
        "version": node["version"],
        "machine": node["machine"],
        # output_physinfo
        "nr_cpus": physinfo["nr_cpus"],
        "nr_nodes": physinfo["nr_nodes"],
        "cores_per_socket": physinfo["cores_per_socket"],
        "threads_per_core": physinfo["threads_per_core"],
        "cpu_mhz": f"{khz // 1000}.{khz % 1000:03d}",
        "total_memory": int(physinfo["total_frames"] * frames_mib),
        "free_memory": int(physinfo["free_frames"] * frames_mib),
        "sharing_freed_memory": int(physinfo.get("sharing_freed_frames", 0) * frames_mib),
        "sharing_used_memory": int(physinfo.get("sharing_used_frames", 0) * frames_mib),
        # output_xeninfo
        "xen_major": version["major"],
        "xen_minor": version["minor"],
        "xen_extra": version["extra"],
        "xen_version": f"{version['major']}.{version['minor']}{version['extra']}",
        "xen_caps": version["caps"],
        "xen_scheduler": physinfo.get("sched", "credit"),
        "xen_pagesize": 4096,
        "xen_commandline": version.get("commandline", ""),
        # xenlike's own
        "nr_pcpus_scheduled": len(physinfo["pcpus"]),
        "page_sharing": "on (ksmd)" if physinfo.get("page_sharing") else "off (--page-sharing turns it on)",
        **(_jail_lines(physinfo["jail"]) if "jail" in physinfo else {}),
        **_fit_lines(physinfo.get("max_new_domains")),
        **(extra or {}),
    }
    return "\n".join(f"{key:<{INFO_KEY_WIDTH}}: {value}" for key, value in pairs.items())


def _fit_lines(fit: dict | None) -> dict[str, object]:
    """``max_new_domains``: how many more guests fit, and the limit that says so."""
    if fit is None:
        return {}
    return {"max_new_domains": f"{fit['count']} (limited by {fit['limit']})"}


def _jail_lines(jail: dict) -> dict[str, object]:
    """``jail`` on or OFF, then each of its mechanisms on or off, with what it gives or what is missing."""
    if not jail.get("enabled"):
        return {"jail": "OFF (--no-jail): guests can reach what the host's user can"}
    lines: dict[str, object] = {"jail": "on"}
    for name, available, detail in jail.get("mechanisms", []):
        lines[f"jail_{name.replace('-', '_')}"] = f"{'on ' if available else 'off'} ({detail})"
    return lines


def format_block_list(rows: Iterable[dict]) -> str:
    """``xl block-list`` (``tools/xl/xl_block.c``): ``Vdev BE handle state evt-ch ring-ref BE-path``.

    As ``main_blocklist`` prints a ``libxl_diskinfo``: Vdev is the device number,
    BE the back end's domid and handle the front end's. A disk of another device
    model than split is not on xenbus: its state, port and ring are -1 and its
    BE-path says who serves it (``hypervisor``, or the ``guest`` itself); under the
    table one line per such disk names its model and what it cannot be.
    """
    rows = list(rows)
    lines = [f"{'Vdev':<5} {'BE':<3} {'handle':<6} {'state':<5} {'evt-ch':<6} {'ring-ref':<8} {'BE-path':<30}"]
    for row in rows:
        lines.append(
            f"{row['vdev']:<5} {row['backend']:<3} {row['frontend_id']:<6} {row['state']:<5} "
            f"{row['evtch']:<6} {row['ring_ref']:<8} {row['be_path']:<30}"
        )
    for row in rows:
        model = row.get("model", "split")
        if model != "split":
            cannot = [what for key, what in _LIMITS if row.get(key) is False]
            limits = f": cannot be {', '.join(cannot)}" if cannot else ""
            lines.append(f"{row['name']}: {model} disk{limits}")
    return "\n".join(lines)


_LIMITS = (("shareable", "shared"), ("hot_unplug", "hot-unplugged"), ("migratable", "migrated"))


def format_network_list(rows: Iterable[dict]) -> str:
    """``xl network-list`` (``tools/xl/xl_nic.c``): ``Idx BE Mac Addr. handle state evt-ch tx-/rx-ring-ref BE-path``.

    As ``main_networklist`` prints a ``libxl_nicinfo``: Idx is the device id, BE the
    back end's domid, then the MAC, the front end's handle, the back end's state,
    the event channel and the two ring references.
    """
    lines = [
        f"{'Idx':<3} {'BE':<2} {'Mac Addr.':<17} {'handle':<6} {'state':<5} {'evt-ch':<6} "
        f"{'tx-':>5}/{'rx-ring-ref':<11} {'BE-path':<30}"
    ]
    for row in rows:
        lines.append(
            f"{row['idx']:<3} {row['backend']:<2} {row['mac']:<17} {row['handle']:>6} {row['state']:>5} "
            f"{row['evtch']:>6} {row['tx_ring_ref']:>5}/{row['rx_ring_ref']:<11} {row['be_path']:<30}"
        )
    return "\n".join(lines)


def cpu_bitmap(cpus: Iterable[int], nr_cpus: int) -> str:
    """xl's ``print_bitmap`` (``tools/xl/xl_utils.c``): ``all``, ``none`` or ranges like ``0-3,6``."""
    chosen = sorted({c for c in cpus if 0 <= c < nr_cpus})
    if not chosen:
        return "none"
    if chosen == list(range(nr_cpus)):
        return "all"
    runs = []
    start = prev = chosen[0]
    for cpu in chosen[1:]:
        if cpu != prev + 1:
            runs.append((start, prev))
            start = cpu
        prev = cpu
    runs.append((start, prev))
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def format_vcpu_list(rows: Iterable[dict], nr_cpus: int) -> str:
    """``xl vcpu-list``: ``Name ID VCPU CPU State Time(s) Affinity (Hard / Soft)`` (``tools/xl/xl_vcpu.c``)."""
    lines = [f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} Affinity (Hard / Soft)"]
    for row in rows:
        head = f"{row['name']:<32} {row['domid']:5d} {row['vcpu']:5d}"
        if not row["online"]:
            state = f"{'-':>5} {'-':>3}-p "
        else:
            state = f"{row['cpu']:5d} {'r' if row['running'] else '-':>3}{'b' if row['blocked'] else '-'}- "
        affinity = f"{cpu_bitmap(row['hard'], nr_cpus)} / {cpu_bitmap(row['soft'], nr_cpus)}"
        lines.append(f"{head}{state}{row['time']:9.1f}  {affinity}")
    return "\n".join(lines)


def format_sched_credit(pool: dict | None, rows: Iterable[dict]) -> str:
    """``xl sched-credit``: the pool line (when given), then ``Name ID Weight Cap`` (``tools/xl/xl_sched.c``)."""
    lines = []
    if pool is not None:
        lines.append(
            f"Cpupool {pool.get('name', 'Pool-0')}: tslice={pool['tslice_ms']}ms "
            f"ratelimit={pool['ratelimit_us']}us migration-delay={pool['migration_delay_us']}us"
        )
    lines.append(f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}")
    for row in rows:
        lines.append(f"{row['name']:<33} {row['domid']:4d} {row['weight']:6d} {row['cap']:4d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# xentop (tools/xentop/xentop.c).

# Its fields[] table: header and default width, in print order.
XENTOP_COLUMNS = (
    ("NAME", 10),
    ("STATE", 6),
    ("CPU(sec)", 10),
    ("CPU(%)", 6),
    ("MEM(k)", 10),
    ("MEM(%)", 6),
    ("MAXMEM(k)", 10),
    ("MAXMEM(%)", 9),
    ("VCPUS", 5),
    ("NETS", 4),
    ("NETTX(k)", 8),
    ("NETRX(k)", 8),
    ("VBDS", 4),
    ("VBD_OO", 8),
    ("VBD_RD", 8),
    ("VBD_WR", 8),
    ("VBD_RSECT", 10),
    ("VBD_WSECT", 10),
    ("SSID", 4),
    ("NOTIF/s", 8),  # not xentop's: see _notifications_per_s
)
# The columns adjust_field_widths widens to fit every value of the frame.
XENTOP_GROWING = ("NETTX(k)", "NETRX(k)", "VBD_RD", "VBD_WR", "VBD_RSECT", "VBD_WSECT")
# A VBD_* column and the blkback counter it sums (Linux blkback's statistics/ in sysfs).
XENTOP_VBD_COUNTERS = {
    "VBD_OO": "oo_requests",
    "VBD_RD": "read_requests",
    "VBD_WR": "write_requests",
    "VBD_RSECT": "read_sectors",
    "VBD_WSECT": "write_sectors",
}
XENTOP_NAME_WIDTH = 10

Cell = str | int | float | None  # None prints as "-"


def format_xentop(
    sample: dict,
    previous: dict | None = None,
    full_names: bool = False,
    summary: bool = True,
    networks: bool = False,
    vbds: bool = False,
) -> str:
    """One xentop frame of the toolstack's ``top`` sample: ``do_summary``, ``do_header``, a ``do_domain`` row each.

    ``previous`` is the sample before, for CPU(%) (0.0 without one, as on xentop's
    first frame). Rows are sorted by name, xentop's default sort. Names are cut to
    10 characters unless ``full_names`` (``-f``). ``summary`` is off in batch mode:
    xentop prints its three summary lines only on the screen (``top()``).
    ``networks`` (``-n``) and ``vbds`` (``-x``) add xentop's ``do_network`` and
    ``do_vbd`` lines under each domain's row, one per device, each ending with
    that device's ring notifications per second.
    """
    host = sample["host"]
    domains = sorted(sample["domains"], key=lambda d: d["name"].casefold())
    rows = [
        {
            **_xentop_cells(d, host, _cpu_percent(d, sample, previous), full_names),
            "NOTIF/s": _notifications_per_s(d, sample, previous),
        }
        for d in domains
    ]
    widths = _xentop_widths(rows)
    lines = _xentop_summary(sample) if summary else []
    lines.append(" ".join(f"{header:>{widths[header]}}" for header, _ in XENTOP_COLUMNS))
    for domain, row in zip(domains, rows, strict=True):
        lines.append(" ".join(_xentop_cell(row[header], widths[header]) for header, _ in XENTOP_COLUMNS))
        before = _same_domain(previous, domain)
        elapsed = 0.0 if previous is None else sample["monotonic"] - previous["monotonic"]
        if networks:
            lines.extend(_xentop_network_lines(domain, before, elapsed))
        if vbds:
            lines.extend(_xentop_vbd_lines(domain, before, elapsed))
    return "\n".join(lines)


def _same_domain(sample: dict | None, domain: dict) -> dict | None:
    """The domain in an earlier sample, by domid (None: no sample, or it was not there)."""
    if sample is None:
        return None
    return next((d for d in sample["domains"] if d["domid"] == domain["domid"]), None)


def _device_notifications_per_s(now: dict | None, before: dict | None, elapsed: float) -> str:
    """One device ring's notifications per second both ways between two samples ("-": its back end has no count)."""
    count = _notify_count([now])
    if count is None:
        return "-"
    return f"{_rate(count, _notify_count([before]), elapsed):.1f}"


def _earlier_device(before: dict | None, field: str, devid: int) -> dict | None:
    """The same device's counters in the domain's earlier sample, by its id."""
    if before is None:
        return None
    ids = before.get("devids", {}).get(field, [])
    return before[field][ids.index(devid)] if devid in ids else None


def _xentop_network_lines(domain: dict, before: dict | None, elapsed: float) -> list[str]:
    """xentop's do_network: ``NetN RX: ... TX: ...`` per vif, then NOTIF/s (not xentop's)."""
    lines = []
    devids = domain.get("devids", {}).get("nets", [])
    for index, (devid, net) in enumerate(zip(devids, domain.get("nets", []), strict=False)):
        notifications = _device_notifications_per_s(net, _earlier_device(before, "nets", devid), elapsed)
        lines.append(
            f"Net{index} RX: {_net_counts(net, 'rx')}  TX: {_net_counts(net, 'tx')}   NOTIF/s: {notifications:>8}"
        )
    return lines


def _net_counts(net: dict | None, way: str) -> str:
    """One direction of a vif as do_network prints it: bytes, packets, errors, drops (netback's counters)."""
    if net is None:
        return f"{'-':>8}bytes {'-':>8}pkts {'-':>8}err {'-':>8}drop"
    return (
        f"{net.get(way + '_bytes', 0):8}bytes {net.get(way + '_packets', 0):8}pkts "
        f"{net.get(way + '_errors', 0):8}err {net.get(way + '_dropped', 0):8}drop"
    )


def _xentop_vbd_lines(domain: dict, before: dict | None, elapsed: float) -> list[str]:
    """xentop's do_vbd: ``VBD BlkBack DEV [MAJ:MIN] OO: ... WSECT: ...`` per disk, then NOTIF/s (not xentop's).

    DEV is the vbd's device number (51712 is xvda: major 202, minor 0, as Linux's
    ``MAJOR()``/``MINOR()`` of it); a disk no back end reports shows dashes, as
    xentop does for a vbd whose statistics it cannot read.
    """
    lines = []
    devids = domain.get("devids", {}).get("vbds", [])
    for devid, vbd in zip(devids, domain.get("vbds", []), strict=False):
        details = f"[{devid >> 8 & 0xFFF:2x}:{devid & 0xFF:2x}] "
        if vbd is None:
            figures = f"OO: {'-':>8}   RD: {'-':>8}   WR: {'-':>8}   RSECT: {'-':>10}   WSECT: {'-':>10}"
        else:
            figures = (
                f"OO: {vbd.get('oo_requests', 0):8}   RD: {vbd.get('read_requests', 0):8}   "
                f"WR: {vbd.get('write_requests', 0):8}   RSECT: {vbd.get('read_sectors', 0):10}   "
                f"WSECT: {vbd.get('write_sectors', 0):10}"
            )
        notifications = _device_notifications_per_s(vbd, _earlier_device(before, "vbds", devid), elapsed)
        lines.append(f"VBD BlkBack {devid:4} {details}{figures}   NOTIF/s: {notifications:>8}")
    return lines


def _xentop_summary(sample: dict) -> list[str]:
    """xentop's three summary lines: time and version, domains by state, memory and CPUs."""
    host = sample["host"]
    counts = dict.fromkeys((state for state, _ in XENTOP_SUMMARY), 0)
    for domain in sample["domains"]:
        state = next((state for state, holds in XENTOP_SUMMARY if holds(domain)), None)
        if state is not None:
            counts[state] += 1
    clock = time.strftime("%H:%M:%S", time.localtime(sample["time"]))
    total, free = host["total_kb"], host["free_kb"]
    return [
        f"xentop - {clock}   Xen {host['version']}",
        f"{len(sample['domains'])} domains: {counts['running']} running, {counts['blocked']} blocked, "
        f"{counts['paused']} paused, {counts['crashed']} crashed, {counts['dying']} dying, "
        f"{counts['shutdown']} shutdown ",
        f"Mem: {total}k total, {total - free}k used, {free}k free    CPUs: {host['nr_cpus']} @ {host['cpu_mhz']}MHz",
    ]


def _cpu_percent(domain: dict, sample: dict, previous: dict | None) -> float:
    """xentop's get_cpu_pct: CPU time accounted between two samples over the wall time between them."""
    if previous is None:
        return 0.0
    before = _same_domain(previous, domain)
    elapsed = sample["monotonic"] - previous["monotonic"]
    if before is None or elapsed <= 0:
        return 0.0
    return (domain["cpu_time"] - before["cpu_time"]) / elapsed * 100


def _ring_notifications(domain: dict) -> int | None:
    """Notifications both ways on the rings of a domain's devices, as their back ends count them; None: no ring."""
    return _notify_count((*domain.get("vbds", []), *domain.get("nets", [])))


def _notify_count(devices: Iterable[dict | None]) -> int | None:
    """Kicks sent plus upcalls taken over the devices whose back ends count them; None if none does."""
    counted = [d["notify_sent"] + d["notify_received"] for d in devices if d is not None and "notify_sent" in d]
    return sum(counted) if counted else None


def _rate(now: int, then: int | None, elapsed: float) -> float:
    """A counter's increase per second (0.0 without an earlier count, as on xentop's first frame)."""
    if then is None or elapsed <= 0:
        return 0.0
    return max(now - then, 0) / elapsed


def _notifications_per_s(domain: dict, sample: dict, previous: dict | None) -> float | None:
    """NOTIF/s, a column xentop lacks: event-channel notifications per second on the domain's device rings.

    Both directions of every ring its back ends serve: the kicks a back end sent
    (pushes of responses the event index did not suppress) and the upcalls it
    took from the front end. Between two samples, as CPU(%); "-" for a domain
    with no device ring, 0.0 on the first frame.
    """
    now = _ring_notifications(domain)
    if now is None:
        return None
    before = _same_domain(previous, domain)
    then = None if before is None else _ring_notifications(before)
    return _rate(now, then, 0.0 if previous is None else sample["monotonic"] - previous["monotonic"])


def _vbd_total(vbds: list[dict | None], counter: str) -> int | None:
    """tot_vbd_reqs: a counter summed over the disks that report; None ("-") if none of its disks does."""
    reporting = [vbd for vbd in vbds if vbd is not None]
    if vbds and not reporting:
        return None
    return sum(vbd.get(counter, 0) for vbd in reporting)


def _xentop_cells(domain: dict, host: dict, cpu_percent: float, full_names: bool) -> dict[str, Cell]:
    """A domain's row, column by column, before padding."""
    total_kb = host["total_kb"] or 1
    nets = domain.get("nets", [])
    vbds = domain.get("vbds", [])
    return {
        "NAME": domain["name"] if full_names else domain["name"][:XENTOP_NAME_WIDTH],
        "STATE": xentop_state(domain),
        "CPU(sec)": int(domain["cpu_time"]),
        "CPU(%)": float(cpu_percent),
        "MEM(k)": domain["memory_kb"],
        "MEM(%)": domain["memory_kb"] / total_kb * 100,
        "MAXMEM(k)": domain["maxmem_kb"],
        "MAXMEM(%)": domain["maxmem_kb"] / total_kb * 100,
        "VCPUS": domain["vcpus"],
        "NETS": len(nets),
        "NETTX(k)": sum((net or {}).get("tx_bytes", 0) for net in nets) // 1024,
        "NETRX(k)": sum((net or {}).get("rx_bytes", 0) for net in nets) // 1024,
        "VBDS": len(vbds),
        **{column: _vbd_total(vbds, counter) for column, counter in XENTOP_VBD_COUNTERS.items()},
        "SSID": domain.get("ssid", 0),
    }


def _xentop_widths(rows: list[dict[str, Cell]]) -> dict[str, int]:
    """Each column's width for this frame: its default, widened to fit names (-f) and big counters."""
    widths = dict(XENTOP_COLUMNS)
    for row in rows:
        widths["NAME"] = max(widths["NAME"], len(str(row["NAME"])))
        for header in XENTOP_GROWING:
            # INT_FIELD_WIDTH(value + 1), as adjust_field_widths computes it
            widths[header] = max(widths[header], len(str(int(row[header] or 0) + 1)))
    return widths


def _xentop_cell(value: Cell, width: int) -> str:
    """A cell right-aligned in its column: %N.1f for percentages, "-" for a figure nobody reported."""
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{value:{width}.1f}"
    return f"{value:>{width}}"
