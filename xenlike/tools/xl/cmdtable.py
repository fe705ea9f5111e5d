"""The command table (``tools/xl/xl_cmdtable.c``): one row per verb, and the parser it builds.

A row (xl's ``struct cmd_spec``) names the verb, the function that runs it,
its one-line help and its arguments, each an ``add_argument`` call. The table's
order is ``--help``'s. :data:`XL_VERBS` lists xl's own verbs, so that a verb
xenlike lacks is refused as xl's (:func:`unknown_verb`), and any other is
answered with the verb most like it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xenlike.tools.suggest import did_you_mean
from xenlike.tools.xl import (
    block,
    console,
    debug,
    host,
    info,
    inject,
    mem,
    migrate,
    network,
    saverestore,
    sched,
    top,
    trace,
    vcpu,
    vmcontrol,
    xenstore,
)
from xenlike.tools.xl.utils import XlError

__all__ = ["Arg", "CmdSpec", "CMD_TABLE", "XL_VERBS", "build_parser", "unknown_verb", "verb_of", "verbs"]

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


class Arg:
    """One argument of a verb: what ``ArgumentParser.add_argument`` is given."""

    def __init__(self, *flags: str, **options: Any) -> None:
        self.flags = flags
        self.options = options


@dataclass(frozen=True)
class CmdSpec:
    """A verb (xl's ``struct cmd_spec``): its name, the function running it, its help, its arguments."""

    name: str
    impl: Callable[[argparse.Namespace], int]
    desc: str
    args: tuple[Arg, ...] = ()


DOMAIN = Arg("domain", metavar="DOMAIN", help="domain name or id")
DOMAIN_OR_ALL = Arg("domain", metavar="DOMAIN", nargs="?", help="domain name or id (default: all)")

# xl's -F (xl_vmcontrol.c): for an HVM guest without PV drivers, an ACPI event in place of control/shutdown.
FALLBACK_TRIGGER = Arg(
    "-F",
    dest="fallback",
    action="store_true",
    help="xl's fallback to an ACPI event for HVM guests without PV drivers; accepted and never "
    "needed: xenlike guests are PV and always read control/shutdown",
)

GLOBAL_OPTIONS = (
    Arg("--version", action="version", version="xenlike 0.1.0"),
    Arg(
        "--run-dir",
        default=None,
        help="the host's run directory (default: $XENLIKE_RUN_DIR, else a per-user directory)",
    ),
)


def main_help(args: argparse.Namespace) -> int:
    """xl help [VERB] (xl.c's ``help()``): the parser's help, or one verb's."""
    if args.topic is None:
        build_parser().print_help()
        return 0
    if args.topic not in verbs():
        raise XlError(unknown_verb(args.topic))
    build_parser().parse_args([args.topic, "--help"])  # prints the verb's help and exits 0
    return 0


CMD_TABLE: tuple[CmdSpec, ...] = (
    CmdSpec(
        "up",
        host.main_up,
        "start a host (hypervisor, dom0) and the domains of a cluster; stream their consoles",
        (
            Arg("cluster", nargs="?", help="a TOML cluster file (default: the built-in cluster)"),
            Arg("-d", "--detach", action="store_true", help="return once the cluster is up"),
            Arg("--memory", type=int, help="host memory for domains, MiB (default: half the machine's, at most 8192)"),
            Arg(
                "--overcommit",
                action="store_true",
                help="allow --memory above the machine's (MemTotal): guests' memory costs only what they "
                "touch, but a guest that touches more than the machine has meets the OOM killer",
            ),
            Arg("--pcpus", type=int, help="physical CPUs to schedule on (default: all)"),
            Arg(
                "--sched",
                metavar="NAME",
                help="the scheduler: credit (default) or null, or any registered in xenlike.schedulers",
            ),
            Arg(
                "--no-jail",
                action="store_true",
                help="run guests without the jail (namespaces, Landlock, seccomp, rlimits, a uid each): "
                "for experiments only; logged, and shown by `info` and `list -l`",
            ),
            Arg(
                "--jail-uid-base",
                type=int,
                metavar="UID",
                help="as root, each domain runs as UID plus its domid (default 200000000)",
            ),
            Arg(
                "--page-sharing",
                action="store_true",
                help="let the kernel's KSM merge pages that are the same in several guests (most of what an idle "
                "guest owns alone); costs ksmd's CPU and opens a timing side channel between guests; starts "
                "ksmd as root if it is off, and `xenlike sharing` shows what is shared",
            ),
            Arg(
                "--listen",
                metavar="ADDR:PORT",
                help="accept migrations from other hosts there (zmq over tcp), with a key this host makes; "
                "`xenlike info` shows it",
            ),
        ),
    ),
    CmdSpec(
        "down",
        host.main_down,
        "shut every domain down (destroying those that do not stop), then the host",
        (Arg("--timeout", type=float, default=10.0, help="seconds domains get to shut down (default 10)"),),
    ),
    CmdSpec(
        "create",
        vmcontrol.main_create,
        "create a domain from an xl.cfg file",
        (
            Arg("config", metavar="CFG", help="domain config in xl.cfg syntax"),
            Arg("overrides", metavar="KEY=VALUE", nargs="*", help="settings that override the file's"),
            Arg("-p", dest="paused", action="store_true", help="leave the domain paused"),
            Arg("-c", dest="console", action="store_true", help="attach to its console"),
        ),
    ),
    CmdSpec(
        "list",
        info.main_list,
        "list domains (xl list's columns)",
        (
            DOMAIN_OR_ALL,
            Arg("-l", "--long", action="store_true", help="full information as JSON"),
        ),
    ),
    CmdSpec("info", info.main_info, "information about the host"),
    CmdSpec(
        "sharing",
        info.main_sharing,
        "how much of each domain's memory is shared with others (with `up --page-sharing`)",
        (DOMAIN_OR_ALL,),
    ),
    CmdSpec(
        "destroy",
        vmcontrol.main_destroy,
        "destroy a domain at once (pulling the plug)",
        (
            DOMAIN,
            Arg(
                "-f",
                dest="force",
                action="store_true",
                help="xl's leave to destroy domain 0; accepted, but Domain-0 runs xenlike's toolstack and is "
                "never destroyed (`xenlike down` stops the host)",
            ),
        ),
    ),
    CmdSpec(
        "shutdown",
        vmcontrol.main_shutdown,
        "ask a domain to shut down (control/shutdown = poweroff)",
        (
            DOMAIN_OR_ALL,
            Arg("-w", "--wait", action="store_true", help="wait until it has shut down"),
            Arg("-a", "--all", action="store_true", help="all domains"),
            FALLBACK_TRIGGER,
        ),
    ),
    CmdSpec(
        "reboot",
        vmcontrol.main_reboot,
        "ask a domain to reboot (control/shutdown = reboot)",
        (
            DOMAIN_OR_ALL,
            Arg("-w", "--wait", action="store_true", help="wait until it has shut down to reboot (and on_reboot ran)"),
            Arg("-a", "--all", action="store_true", help="all domains"),
            FALLBACK_TRIGGER,
        ),
    ),
    CmdSpec(
        "save",
        saverestore.main_save,
        "suspend a domain and save its memory, devices and state to a file, then destroy it",
        (
            DOMAIN,
            Arg("file", metavar="FILE", help="the image to write (on this host)"),
            Arg("-c", dest="checkpoint", action="store_true", help="leave the domain running (a checkpoint)"),
            Arg("-p", dest="paused", action="store_true", help="leave the domain paused"),
        ),
    ),
    CmdSpec(
        "migrate",
        migrate.main_migrate,
        "move a running domain to another host, live (pre-copy rounds, then stop-and-copy)",
        (
            DOMAIN,
            Arg("host", metavar="HOST", help="the target host's ADDR:PORT (its `up --listen`)"),
            Arg("--key", required=True, help="the target's migration key (`xenlike info` on the target shows it)"),
            Arg(
                "--stop-and-copy",
                action="store_true",
                help="no pre-copy: suspend at once and copy everything (the longest downtime)",
            ),
            Arg(
                "--max-rounds",
                type=int,
                default=5,
                metavar="N",
                help="pre-copy rounds at most before stop-and-copy (default 5, Xen's)",
            ),
            Arg(
                "--target-dirty",
                type=int,
                default=50,
                metavar="N",
                help="stop and copy once fewer pages than this were written in a round (default 50, Xen's)",
            ),
        ),
    ),
    CmdSpec(
        "restore",
        saverestore.main_restore,
        "build a domain from a saved image; it runs on where it was saved",
        (
            Arg("file", metavar="FILE", help="an image written by save"),
            Arg("-p", dest="paused", action="store_true", help="leave the restored domain paused"),
        ),
    ),
    CmdSpec(
        "mem-set",
        mem.main_mem_set,
        "set a domain's balloon target: it gives memory back to the host, or takes it again",
        (DOMAIN, Arg("mem", metavar="MEM", help="the target: a number with t, g, m (the default), k or b")),
    ),
    CmdSpec(
        "mem-max",
        mem.main_mem_max,
        "set the most memory a domain may hold",
        (DOMAIN, Arg("mem", metavar="MEM", help="the maximum: a number with t, g, m (the default), k or b")),
    ),
    CmdSpec("pause", vmcontrol.main_pause, "pause a domain (it keeps its memory, gets no CPU)", (DOMAIN,)),
    CmdSpec("unpause", vmcontrol.main_unpause, "unpause a paused domain", (DOMAIN,)),
    CmdSpec(
        "console",
        console.main_console,
        "attach to a domain's console (Ctrl-] detaches)",
        (
            DOMAIN,
            Arg(
                "-t",
                dest="type",
                metavar="TYPE",
                help="console type: pv, the one console a xenlike guest has (xl's serial and vuart are refused)",
            ),
            Arg("-n", dest="num", metavar="NUM", type=int, help="console number: 0, the pv console's"),
            Arg(
                "-e",
                dest="escape",
                metavar="CHAR",
                help="the escape character that detaches: a character or ^X (default ^])",
            ),
        ),
    ),
    CmdSpec("rename", vmcontrol.main_rename, "rename a domain", (DOMAIN, Arg("new_name", metavar="NEW_NAME"))),
    CmdSpec(
        "uptime",
        info.main_uptime,
        "domains' uptime",
        (
            DOMAIN_OR_ALL,
            Arg("-s", dest="short", action="store_true", help="short form: time, uptime, name and id on one line"),
        ),
    ),
    CmdSpec(
        "dmesg",
        info.main_dmesg,
        "the hypervisor's log",
        (Arg("-c", dest="clear", action="store_true", help="clear it after reading"),),
    ),
    CmdSpec(
        "xenstore-ls",
        xenstore.main_xenstore_ls,
        "list xenstore nodes below PATH",
        (
            Arg("path", nargs="?", default="/"),
            Arg("-p", dest="perms", action="store_true", help="show permissions"),
        ),
    ),
    CmdSpec("xenstore-read", xenstore.main_xenstore_read, "read a xenstore node", (Arg("path"),)),
    CmdSpec("xenstore-write", xenstore.main_xenstore_write, "write a xenstore node", (Arg("path"), Arg("value"))),
    CmdSpec("xenstore-rm", xenstore.main_xenstore_rm, "remove a xenstore node and its children", (Arg("path"),)),
    CmdSpec(
        "xenstore-watch",
        xenstore.main_xenstore_watch,
        "print the path of every change at or below PATH (Ctrl-C stops)",
        (Arg("path"),),
    ),
    CmdSpec(
        "block-attach",
        block.main_block_attach,
        "hotplug a disk: SPEC in xl's disk syntax, e.g. 'vdev=xvdb, target=/x.img, size=64M'",
        (
            DOMAIN,
            Arg("spec", metavar="SPEC"),
        ),
    ),
    CmdSpec(
        "block-detach",
        block.main_block_detach,
        "unplug a disk (the guest sees it go)",
        (
            DOMAIN,
            Arg("vdev", metavar="VDEV", help="xvdb, or the device number"),
        ),
    ),
    CmdSpec("block-list", block.main_block_list, "a domain's disks (xl block-list's columns)", (DOMAIN,)),
    CmdSpec(
        "network-attach",
        network.main_network_attach,
        "hotplug a vif: SPEC in xl's network syntax, e.g. 'mac=00:16:3e:00:00:01, bridge=xenbr0' (none: defaults)",
        (
            DOMAIN,
            Arg("spec", metavar="SPEC", nargs="*", help="key=value settings (xl-network-configuration(5))"),
        ),
    ),
    CmdSpec(
        "network-detach",
        network.main_network_detach,
        "unplug a vif (the guest sees its eth<devid> go)",
        (
            DOMAIN,
            Arg("vif", metavar="DEVID|MAC", help="the vif's device id, or its MAC"),
        ),
    ),
    CmdSpec(
        "network-list",
        network.main_network_list,
        "domains' vifs (xl network-list's columns)",
        (Arg("domains", metavar="DOMAIN", nargs="+"),),
    ),
    CmdSpec("workloads", info.main_workloads, "list the registered guest workloads"),
    CmdSpec(
        "sched-credit",
        sched.main_sched_credit,
        "show or set credit scheduler weights and caps",
        (
            Arg("-d", "--domain", metavar="DOMAIN", help="the domain to show or set (default: all)"),
            Arg("-w", "--weight", type=int, help="its weight, 1 to 65535 (default 256)"),
            Arg("-c", "--cap", type=int, help="its cap, percent of one pCPU (0: none)"),
        ),
    ),
    CmdSpec(
        "top",
        top.main_top,
        "domains' CPU, memory and disk figures, refreshed (xentop's columns; q quits)",
        (
            Arg(
                "-d", "--delay", type=float, default=3.0, metavar="SECONDS", help="seconds between updates (default 3)"
            ),
            Arg("-b", "--batch", action="store_true", help="plain text, frame after frame, no screen control"),
            Arg("-i", "--iterations", type=int, metavar="N", help="frames to show before exiting (default: no limit)"),
            Arg("-f", "--full-name", action="store_true", help="full domain names (not cut to 10 characters)"),
            Arg("-n", "--networks", action="store_true", help="a line per vif under each domain (RX, TX, NOTIF/s)"),
            Arg("-x", "--vbds", action="store_true", help="a line per disk under each domain (OO, RD, WR, NOTIF/s)"),
        ),
    ),
    CmdSpec(
        "vcpu-list",
        vcpu.main_vcpu_list,
        "the vCPUs of domains: pCPU, state, CPU time, affinity",
        (Arg("domains", metavar="DOMAIN", nargs="*", help="domain names or ids (default: all)"),),
    ),
    CmdSpec(
        "vcpu-pin",
        vcpu.main_vcpu_pin,
        "set the pCPUs a vCPU may run on (hard affinity)",
        (
            DOMAIN,
            Arg("vcpu", metavar="VCPU", help="a vCPU number, or all"),
            Arg("cpus", metavar="CPUS", help="pCPUs in xl's syntax: 1, 0-3, 0-3,^2, all"),
        ),
    ),
    CmdSpec("domid", debug.main_domid, "a domain's id", (Arg("name", metavar="NAME", help="the domain's name"),)),
    CmdSpec("domname", debug.main_domname, "a domain's name", (Arg("domid", metavar="ID", help="the domain's id"),)),
    CmdSpec(
        "debug-keys",
        debug.main_debug_keys,
        "the hypervisor dumps its state into its log (`xenlike dmesg`): q domains, e event channels, "
        "g grant maptrack, r run queues, h the keys",
        (Arg("keys", metavar="KEYS", help="the keys to press, e.g. qer"),),
    ),
    CmdSpec(
        "dump-core",
        debug.main_dump_core,
        "write a domain's memory to FILE as an ELF core (one PT_LOAD per run of frames; readelf -l FILE)",
        (DOMAIN, Arg("file", metavar="FILE", help="the core file to write (relative to this directory)")),
    ),
    CmdSpec(
        "sysrq",
        debug.main_sysrq,
        "send a magic SysRq letter to a domain's kernel: h help, t threads, m memory, b reboot, o poweroff, c crash",
        (DOMAIN, Arg("letter", metavar="LETTER")),
    ),
    CmdSpec(
        "trigger",
        debug.main_trigger,
        "send a trigger to a domain: nmi (its kernel's threads' stacks into logs/hypervisor-stderr.log); "
        "reset, init, power, sleep and s3resume are HVM's and refused",
        (
            DOMAIN,
            Arg("trigger", metavar="TRIGGER", choices=debug.TRIGGERS),
            Arg("vcpu", metavar="VCPU", type=int, nargs="?", default=0, help="the vCPU (default 0)"),
        ),
    ),
    CmdSpec(
        "trace",
        trace.main_trace,
        "what the hypervisor, dom0, back ends and guests do, live: hypercalls, events, xenbus, xenstore, "
        "grants, scheduling, builds (xentrace, readable)",
        (
            Arg(
                "-d",
                "--domain",
                metavar="DOMAIN",
                help="only what concerns this domain (name or id; a --record file keeps it for --export)",
            ),
            Arg("--class", dest="classes", metavar="LIST", help=trace.CLASSES_HELP),
            Arg("--json", action="store_true", help="one JSON object per record instead of a readable line"),
            Arg("-T", "--time", type=float, metavar="SECONDS", help="stop after SECONDS (default: at Ctrl-C)"),
            Arg("--record", metavar="FILE", help="copy the records, undecoded, to FILE for --export"),
            Arg("--export", metavar="FILE", help="read a --record FILE instead of the host (with --perfetto)"),
            Arg(
                "--perfetto",
                metavar="OUT",
                help="with --export: write a timeline in Chrome's trace format (JSON) for ui.perfetto.dev or "
                "chrome://tracing: a track per domain and vCPU, calls as spans, events as instants",
            ),
        ),
    ),
    CmdSpec(
        "inject",
        inject.main_inject,
        "break one part on purpose (each fault's outcome is documented); --list shows them, --clear undoes",
        (
            Arg("kind", metavar="KIND", nargs="?", help=inject.KINDS_HELP + " (with --clear: a fault's id)"),
            Arg("words", metavar="ARG", nargs="*", help="the fault's arguments"),
            Arg("--list", action="store_true", help="the faults injected, each with its outcome"),
            Arg("--clear", action="store_true", help="undo every fault, or the one whose id is given"),
        ),
    ),
    CmdSpec(
        "vcpu-set",
        vcpu.main_vcpu_set,
        "set how many of a domain's vCPUs are online (1 to its maxvcpus)",
        (DOMAIN, Arg("count", metavar="N", help="the vCPUs to have online; the rest of maxvcpus go offline")),
    ),
    CmdSpec(
        "help",
        main_help,
        "every verb, or one verb's options",
        (Arg("topic", metavar="VERB", nargs="?", help="the verb to explain"),),
    ),
)


# Every verb of xl, in xl_cmdtable.c's order, so that one xenlike lacks is
# named as xl's rather than taken for a typo.
XL_VERBS: tuple[str, ...] = (
    "create",
    "config-update",
    "list",
    "destroy",
    "shutdown",
    "reboot",
    "pci-attach",
    "pci-detach",
    "pci-list",
    "pci-assignable-add",
    "pci-assignable-remove",
    "pci-assignable-list",
    "pause",
    "unpause",
    "console",
    "vncviewer",
    "save",
    "migrate",
    "restore",
    "migrate-receive",
    "suspend",
    "resume",
    "dump-core",
    "cd-insert",
    "cd-eject",
    "mem-max",
    "mem-set",
    "button-press",
    "vcpu-list",
    "vcpu-pin",
    "vcpu-set",
    "vm-list",
    "info",
    "sharing",
    "sched-credit",
    "sched-credit2",
    "sched-rtds",
    "domid",
    "domname",
    "rename",
    "trigger",
    "sysrq",
    "debug-keys",
    "set-parameters",
    "dmesg",
    "top",
    "network-attach",
    "network-list",
    "network-detach",
    "channel-list",
    "block-attach",
    "block-list",
    "block-detach",
    "vtpm-attach",
    "vtpm-list",
    "vtpm-detach",
    "vkb-attach",
    "vkb-list",
    "vkb-detach",
    "vdispl-attach",
    "vdispl-list",
    "vdispl-detach",
    "vsnd-attach",
    "vsnd-list",
    "vsnd-detach",
    "uptime",
    "claims",
    "cpupool-create",
    "cpupool-list",
    "cpupool-destroy",
    "cpupool-rename",
    "cpupool-cpu-add",
    "cpupool-cpu-remove",
    "cpupool-migrate",
    "cpupool-numa-split",
    "getenforce",
    "setenforce",
    "loadpolicy",
    "remus",
    "devd",
    "psr-hwinfo",
    "psr-cmt-attach",
    "psr-cmt-detach",
    "psr-cmt-show",
    "psr-cat-set",
    "psr-cat-show",
    "psr-mba-set",
    "psr-mba-show",
    "usbctrl-attach",
    "usbctrl-detach",
    "usbdev-attach",
    "usbdev-detach",
    "usb-list",
    "qemu-monitor-command",
    "dt-overlay",
    "xenstore-quota-get",
    "xenstore-quota-set",
)


def verbs() -> tuple[str, ...]:
    """The verbs xenlike has, in :data:`CMD_TABLE`'s order."""
    return tuple(spec.name for spec in CMD_TABLE)


def verb_of(argv: Sequence[str]) -> str | None:
    """The verb of a command line: its first word after the global options (None when it has none).

    The global options are read as :func:`build_parser` reads them; a command
    line they make no sense of gives None, and the parser then says what is wrong.
    """
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for arg in GLOBAL_OPTIONS:
        if arg.options.get("action") != "version":
            parser.add_argument(*arg.flags, **arg.options)
    parser.add_argument("verb", nargs="?")
    try:
        known, _ = parser.parse_known_args(list(argv))
    except argparse.ArgumentError:
        return None
    return known.verb


def unknown_verb(verb: str) -> str:
    """Why ``verb`` is refused, in one line: a verb of xl xenlike lacks, or the xenlike verb meant
    (xl.c's ``command not implemented``)."""
    if verb in XL_VERBS:
        return f"xl has {verb!r}; xenlike does not (yet)"
    return f"unknown verb {verb!r}" + (did_you_mean(verb, verbs()) or "; `xenlike --help` lists the verbs")


def build_parser() -> argparse.ArgumentParser:
    """The ``xenlike`` parser: the global options, then a sub-parser per row of :data:`CMD_TABLE`.

    A parsed verb's row is ``args.cmd``.
    """
    parser = argparse.ArgumentParser(
        prog="xenlike", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for arg in GLOBAL_OPTIONS:
        parser.add_argument(*arg.flags, **arg.options)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for spec in CMD_TABLE:
        sub = verbs.add_parser(spec.name, help=spec.desc, description=spec.desc)
        sub.set_defaults(cmd=spec)
        for arg in spec.args:
            sub.add_argument(*arg.flags, **arg.options)
    return parser
