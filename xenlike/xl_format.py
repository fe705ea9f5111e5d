"""xl's output formats (``tools/xl/xl_info.c``, ``xl_vcpu.c``, ``xl_misc.c``), used by the CLI.

Each function takes the plain data the toolstack returns and renders it the way
``xl`` prints it, so scripts written against ``xl`` read ``xenlike``'s output.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["state_letters", "format_list", "format_uptime", "uptime_text", "format_info", "format_block_list",
           "cpu_bitmap", "format_vcpu_list", "format_sched_credit"]

# The shutdown-reason letter of xl list's fifth state column: poweroff, reboot,
# suspend, crash, watchdog, soft_reset (tools/xl/xl_info.c "-rscwS").
SHUTDOWN_LETTERS = "-rscwS"


def state_letters(info: dict) -> str:
    """xl list's six state columns: r b p s <reason> d."""
    shutdown = bool(info.get("shutdown"))
    reason = info.get("shutdown_reason")
    reason_letter = SHUTDOWN_LETTERS[reason] if shutdown and reason is not None and 0 <= reason < 6 else "-"
    return "".join((
        "r" if info.get("running") else "-",
        "b" if info.get("blocked") else "-",
        "p" if info.get("paused") else "-",
        "s" if shutdown else "-",
        reason_letter,
        "d" if info.get("dying") else "-",
    ))


def format_list(rows: Iterable[dict]) -> str:
    """``xl list``: ``Name ID Mem VCPUs State Time(s)``."""
    lines = ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
    for row in rows:
        lines.append(
            f"{row['name']:<40} {row['domid']:5d} {row['mem']:5d} {row['vcpus']:5d}     {row['state']}  {row['cpu_time']:8.1f}"
        )
    return "\n".join(lines)


def uptime_text(seconds: float) -> str:
    """xl's uptime: ``H:MM:SS``, or ``N day(s), H:MM:SS``."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:2d}:{minutes:02d}:{secs:02d}"
    if days == 0:
        return clock
    return f"{days} day{'s' if days > 1 else ''}, {clock.strip()}"


def format_uptime(rows: Iterable[dict]) -> str:
    """``xl uptime``: ``Name ID Uptime``."""
    lines = [f"{'Name':<33} {'ID':>4} Uptime"]
    for row in rows:
        lines.append(f"{row['name']:<33} {row['domid']:4d} {uptime_text(row['uptime'])}")
    return "\n".join(lines)


def format_info(physinfo: dict, extra: dict[str, str]) -> str:
    """``xl info``: ``key : value`` lines, memory in MB."""
    frames_mb = 4096 / (1 << 20)
    version = physinfo["version"]
    pairs = {
        **extra,
        "nr_cpus": physinfo["nr_cpus"],
        "nr_pcpus_scheduled": len(physinfo["pcpus"]),
        "total_memory": int(physinfo["total_frames"] * frames_mb),
        "free_memory": int(physinfo["free_frames"] * frames_mb),
        "xen_major": version["major"],
        "xen_minor": version["minor"],
        "xen_extra": version["extra"],
        "xen_caps": version["caps"],
        "xen_pagesize": 4096,
    }
    width = max(len(k) for k in pairs)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in pairs.items())


def format_block_list(rows: Iterable[dict]) -> str:
    """``xl block-list``: ``Vdev BE handle state evt-ch ring-ref BE-path``."""
    lines = [f"{'Vdev':<5} {'BE':<3} {'handle':<6} {'state':<5} {'evt-ch':<6} {'ring-ref':<8} {'BE-path':<30}"]
    for row in rows:
        lines.append(f"{row['vdev']:<5} {row['backend']:<3} {row['handle']:<6} {row['state']:<5} {row['evtch']:<6} "
                     f"{row['ring_ref']:<8} {row['be_path']:<30}")
    return "\n".join(lines)


def cpu_bitmap(cpus: Iterable[int], nr_cpus: int) -> str:
    """xl's ``print_bitmap`` (``tools/xl/xl_utils.c``): ``all``, ``none`` or ranges like ``0-3,6``."""
    chosen = sorted({c for c in cpus if 0 <= c < nr_cpus})
    if not chosen:
        return "none"
    if chosen == list(range(nr_cpus)):
        return "all"
    parts = []
    start = prev = chosen[0]
    for cpu in chosen[1:] + [None]:  # type: ignore[list-item]
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


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
        lines.append(f"Cpupool {pool.get('name', 'Pool-0')}: tslice={pool['tslice_ms']}ms "
                     f"ratelimit={pool['ratelimit_us']}us migration-delay={pool['migration_delay_us']}us")
    lines.append(f"{'Name':<33} {'ID':>4} {'Weight':>6} {'Cap':>4}")
    for row in rows:
        lines.append(f"{row['name']:<33} {row['domid']:4d} {row['weight']:6d} {row['cap']:4d}")
    return "\n".join(lines)
