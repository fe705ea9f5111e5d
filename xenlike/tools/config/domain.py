"""A domain's configuration: the xl.cfg(5) keys xenlike uses, checked, with libxl's defaults.

Defaults (xl.cfg(5), ``parse_config_data`` in ``tools/xl/xl_parse.c``,
``libxl__domain_build_info_setdefault``): 32 MiB, ``maxmem`` = ``memory`` (and
``memory`` = ``maxmem`` if only ``maxmem`` is set), 1 vCPU, ``maxvcpus`` = ``vcpus``
(the rest start offline), no pinning, ``cpu_weight`` 256, ``cap`` 0 (at most 100
per vCPU of ``maxvcpus``),
``on_poweroff``/``on_crash``/``on_watchdog`` destroy, ``on_reboot`` restart,
``on_soft_reset`` soft-reset, ``max_grant_frames`` 64 (xl.conf(5)). Numbers may
also be given as strings (``memory = "64"``), as xl reads every value with
``strtol``.

Every ``on_*`` key takes xl's seven actions (``action_on_shutdown_names`` in
``xl_parse.c``). Two act differently here: the coredump ones write no dump,
and ``soft-reset``, which in Xen resets a Xen-aware HVM guest in place
keeping its memory, acts as ``restart`` (the toolstack logs so when it does).

xenlike adds ``workload`` (what the guest runs: a name registered in the
entry-point group ``xenlike.workloads``, ``module:function`` or
``path/to/file.py:function``; default ``idle``), ``workload_args`` and
``weight`` (an alias of ``cpu_weight``).

Keys xl knows that mean nothing to xenlike (``type``, ``kernel``,
``bootloader``, ``pool``, ...) and unknown keys are reported in
``DomainConfig.warnings``, never as errors; an unknown key's warning offers
the known key most like it. Every bad value raises
:class:`ConfigError` naming the key, the value, where it was set and what was
expected.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from xenlike.tools.config.disk import DiskSpec, parse_disk_spec
from xenlike.tools.config.ports import PortForward, parse_port_forward
from xenlike.tools.config.vchan import parse_vchan_rules
from xenlike.tools.config.vif import VifSpec, parse_vif_spec
from xenlike.tools.config.xlcfg import (
    ConfigError,
    Settings,
    apply_overrides,
    format_value,
    parse_xlcfg,
    read_config_text,
)
from xenlike.tools.suggest import did_you_mean

__all__ = [
    "ACTIONS",
    "DomainConfig",
    "domain_config_from_xlcfg",
    "load_domain_config",
    "parse_cpus",
]

# xl's shutdown actions, in xl_parse.c's action_on_shutdown_names order.
ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy", "coredump-restart", "soft-reset")
INT_MAX = (1 << 31) - 1
DEFAULT_MEMORY_MIB = 32
DEFAULT_WEIGHT = 256
DEFAULT_MAX_GRANT_FRAMES = 64
USED_KEYS = frozenset(
    {
        "name",
        "uuid",
        "memory",
        "maxmem",
        "vcpus",
        "maxvcpus",
        "cpus",
        "cpu_weight",
        "weight",
        "cap",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "on_watchdog",
        "on_soft_reset",
        "disk",
        "vif",
        "ports",
        "vchan",
        "extra",
        "root",
        "cmdline",
        "max_grant_frames",
        "workload",
        "workload_args",
    }
)
# Documented in xl.cfg(5) but about real kernels, firmware, emulated hardware,
# passthrough or NUMA: accepted and ignored, with a warning.
XL_KEYS_IGNORED = frozenset(
    {
        "type",
        "builder",
        "pool",
        "cpus_soft",
        "vnuma",
        "kernel",
        "ramdisk",
        "firmware",
        "pvshim",
        "pvshim_path",
        "pvshim_cmdline",
        "pvshim_extra",
        "seclabel",
        "init_seclabel",
        "max_maptrack_frames",
        "max_grant_version",
        "nomigrate",
        "driver_domain",
        "device_tree",
        "passthrough",
        "xend_suspend_evtchn_compat",
        "vmtrace_buf_kb",
        "vpmu",
        "vtpm",
        "p9",
        "pvcalls",
        "vfb",
        "channel",
        "rdm",
        "usbctrl",
        "usbdev",
        "pci",
        "pci_permissive",
        "pci_msitranslate",
        "pci_seize",
        "pci_power_mgmt",
        "gfx_passthru",
        "rdm_mem_boundary",
        "dtdev",
        "ioports",
        "iomem",
        "irqs",
        "max_event_channels",
        "vdispl",
        "dm_restrict",
        "device_model_user",
        "vsnd",
        "vkb",
        "virtio",
        "tee",
        "bootloader",
        "bootloader_args",
        "bootloader_restrict",
        "bootloader_user",
        "e820_host",
        "boot",
        "hdtype",
        "hap",
        "oos",
        "shadow_memory",
        "bios",
        "bios_path_override",
        "pae",
        "acpi",
        "acpi_s3",
        "acpi_s4",
        "acpi_laptop_slate",
        "apic",
        "nx",
        "hpet",
        "altp2m",
        "altp2mhvm",
        "nestedhvm",
        "cpuid",
        "acpi_firmware",
        "smbios_firmware",
        "smbios",
        "ms_vm_genid",
        "tsc_mode",
        "localtime",
        "rtc_timeoffset",
        "vpt_align",
        "timer_mode",
        "mmio_hole",
        "xen_platform_pci",
        "viridian",
        "hvm_pirq",
        "videoram",
        "stdvga",
        "vga",
        "vnc",
        "vnclisten",
        "vncdisplay",
        "vncunused",
        "vncpasswd",
        "keymap",
        "sdl",
        "opengl",
        "nographic",
        "spice",
        "spicehost",
        "spiceport",
        "spicetls_port",
        "spicedisable_ticketing",
        "spicepasswd",
        "spiceagent_mouse",
        "spicevdagent",
        "spice_clipboard_sharing",
        "spiceusbredirection",
        "spice_image_compression",
        "spice_streaming_video",
        "serial",
        "soundhw",
        "vkb_device",
        "usb",
        "usbversion",
        "usbdevice",
        "vendor_device",
        "device_model_version",
        "device_model_override",
        "stubdomain_kernel",
        "stubdomain_cmdline",
        "stubdomain_ramdisk",
        "stubdomain_memory",
        "device_model_stubdomain_override",
        "device_model_stubdomain_seclabel",
        "device_model_args",
        "device_model_args_pv",
        "device_model_args_hvm",
        "gic_version",
        "vuart",
        "sve",
        "mca_caps",
        "msr_relaxed",
        "period",
        "slice",
        "latency",
        "extratime",
        "xenstore_quota",
        "vncviewer",
        "display",
        "xauthority",
    }
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ENTRY_POINT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CPU_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_CPUS_EXPECTED = 'pCPU numbers and ranges like "0-3,^1", "all", or a list of them'


@dataclass
class DomainConfig:
    """A checked domain configuration, every default filled in.

    ``cpus`` is the set of pCPUs the domain's vCPUs may run on (None: all);
    whether they exist is checked when the domain is created. ``cmdline`` is
    the guest command line as xl builds it (``cmdline``, else ``root=ROOT
    EXTRA``, else ``extra``). ``source`` says where the config came from and
    ``warnings`` lists the keys that were ignored. :meth:`to_dict` is what
    travels between processes.
    """

    name: str
    uuid: str | None = None
    memory: int = DEFAULT_MEMORY_MIB
    maxmem: int | None = None
    vcpus: int = 1
    maxvcpus: int | None = None
    cpus: frozenset[int] | None = None
    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    on_soft_reset: str = "soft-reset"
    disk: list[DiskSpec] = field(default_factory=list)
    vif: list[VifSpec] = field(default_factory=list)
    ports: list[PortForward] = field(default_factory=list)
    vchan: list[str] = field(default_factory=list)  # "client:port" pairs allowed to connect here
    extra: str = ""
    cmdline: str = ""
    max_grant_frames: int = DEFAULT_MAX_GRANT_FRAMES
    workload: str = "idle"
    workload_args: list[str] = field(default_factory=list)
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.maxmem is None:
            self.maxmem = self.memory
        if self.maxvcpus is None:
            self.maxvcpus = self.vcpus
        if self.cpus is not None:
            self.cpus = frozenset(self.cpus)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, bool, None, lists, dicts), for msgpack; ``cpus`` as a sorted list."""
        data: dict[str, Any] = {}
        for item in fields(self):
            data[item.name] = getattr(self, item.name)
        data["cpus"] = None if self.cpus is None else sorted(self.cpus)
        data["disk"] = [disk.to_dict() for disk in self.disk]
        data["vif"] = [vif.to_dict() for vif in self.vif]
        data["ports"] = [forward.to_dict() for forward in self.ports]
        data["workload_args"] = list(self.workload_args)
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DomainConfig:
        """The inverse of :meth:`to_dict`; ConfigError for a missing name or unknown fields."""
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown or "name" not in data:
            raise ConfigError(
                f"not a domain config: unknown fields {unknown}" + ("" if "name" in data else ", and no name")
            )
        values = dict(data)
        values["disk"] = [DiskSpec.from_dict(disk) for disk in values.get("disk") or []]
        values["vif"] = [VifSpec.from_dict(vif) for vif in values.get("vif") or []]
        values["ports"] = [PortForward(**forward) for forward in values.get("ports") or []]
        values["workload_args"] = list(values.get("workload_args") or [])
        values["warnings"] = list(values.get("warnings") or [])
        return cls(**values)


# -- cpus ------------------------------------------------------------------------------------


def _cpu_item(text: str, everything: bool, chosen: set[int]) -> bool:
    """Apply one comma-separated item of a CPU list (xl_parse.c update_cpumap_range); returns "all"."""
    item = text.strip()
    negate = item.startswith("^")
    item = item[1:] if negate else item
    nodes = False
    for prefix in ("node:", "nodes:"):
        if item.startswith(prefix):
            item, nodes = item[len(prefix) :], True
    if item == "all":
        if negate:
            raise ValueError('"^" and "all" cannot be combined')
        chosen.clear()
        return True
    match = _CPU_RANGE.fullmatch(item)
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a pCPU number or range")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if high < low:
        raise ValueError(f"the range {text.strip()!r} runs backwards")
    if nodes:
        if high > 0:
            raise ValueError(f"{text.strip()!r}: a xenlike host has one NUMA node, node 0")
        if negate:
            chosen.clear()
            return False
        return True
    if negate:
        if everything:
            raise ValueError(
                f'{text.strip()!r} after "all": the host\'s pCPUs are not known yet, so list the pCPUs to use instead'
            )
        chosen.difference_update(range(low, high + 1))
    elif not everything:
        chosen.update(range(low, high + 1))
    return everything


def _cpuset(value: Any) -> frozenset[int] | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, list)):
        raise ValueError("it is neither a string nor a list")
    if isinstance(value, list):
        union: set[int] = set()
        for item in value:
            if isinstance(item, list):
                raise ValueError("a list of lists")
            cpus = _cpuset(item)
            if cpus is None:
                return None
            union |= cpus
        return frozenset(union) if value else None
    everything = False
    chosen: set[int] = set()
    for item in str(value).split(","):
        if item.strip():
            everything = _cpu_item(item, everything, chosen)
    if everything:
        return None
    if not chosen:
        raise ValueError("it leaves no pCPU")
    return frozenset(chosen)


def parse_cpus(value: Any, key: str = "cpus") -> list[int] | None:
    """An xl CPU list (xl.cfg(5) ``cpus=``) as sorted pCPU numbers; None means every pCPU.

    Items are separated by commas and applied in order: ``N``, ``N-M``, ``^N``
    (remove), ``^N-M``, ``all``; ``node:0``/``nodes:0`` is the host's one NUMA
    node (every pCPU). A list of such strings or numbers gives the union of
    its items. ConfigError names ``key`` and the value.
    """
    try:
        cpus = _cpuset(value)
    except ValueError as exc:
        raise ConfigError(f"{key} = {format_value(value)}: expected {_CPUS_EXPECTED}; {exc}") from None
    return None if cpus is None else sorted(cpus)


# -- reading settings --------------------------------------------------------------------------


class _Reader:
    """The settings of one domain, with the place each key was set, for messages."""

    def __init__(
        self, settings: Mapping[str, Any], source: str, where: Callable[[str], str], base_dir: Callable[[str], Path]
    ) -> None:
        self.settings = settings
        self.source = source
        self.where = where
        self.base_dir = base_dir

    def error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{key} = {format_value(self.settings.get(key))} in {self.where(key)}: expected {expected}")

    def integer(self, key: str, default: int, low: int, high: int, what: str) -> int:
        if key not in self.settings:
            return default
        value = self.settings[key]
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            number = _strtol(value)
        if number is None:
            raise self.error(key, what)
        if not low <= number <= high:
            bounds = (
                f"at least {low}" if high >= INT_MAX else f"at most {high}" if low == 0 else f"from {low} to {high}"
            )
            raise self.error(key, f"{what}, {bounds}")
        return number

    def string(self, key: str, default: str, what: str = "a string") -> str:
        if key not in self.settings:
            return default
        value = self.settings[key]
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # xl keeps numbers as text; `extra = 5` is "5"
        if not isinstance(value, str):
            raise self.error(key, what)
        return value


def _strtol(text: str) -> int | None:
    """``strtol(text, &end, 0)`` that must use the whole text, as ``xlu_cfg_get_long`` does."""
    match = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if match is None:
        return None
    sign, digits = match.groups()
    base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") and len(digits) > 1 else 10
    number = int(digits, base)
    return -number if sign == "-" else number


def _name(reader: _Reader) -> str:
    if "name" not in reader.settings:
        raise ConfigError(f'{reader.source} has no name: add name = "..." (xl.cfg(5): every domain needs one)')
    name = reader.string("name", "", "a name")
    if not _NAME.fullmatch(name) or name.isdigit():
        raise reader.error(
            "name",
            "a name of letters, digits, '.', '_' and '-', at most 64 characters, starting "
            "with a letter or digit and not all digits",
        )
    if name == "Domain-0":
        raise reader.error("name", "another name: Domain-0 is dom0's")
    return name


def _uuid(reader: _Reader) -> str | None:
    if "uuid" not in reader.settings:
        return None
    value = reader.string("uuid", "", "a UUID")
    if not _UUID.fullmatch(value):
        raise reader.error("uuid", 'a UUID like "3f2b9c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6f"')
    return value.lower()


def _action(reader: _Reader, key: str, default: str) -> str:
    value = reader.string(key, default, "an action")
    if value not in ACTIONS:
        raise reader.error(key, f"one of {', '.join(ACTIONS)}")
    return value


def _workload(reader: _Reader) -> str:
    value = reader.string("workload", "idle", "a workload")
    if ":" not in value:
        if not _ENTRY_POINT.fullmatch(value):
            raise reader.error("workload", "a registered workload name, module:function or path/to/file.py:function")
        return value
    target, _, function = value.rpartition(":")
    if not _FUNCTION.fullmatch(function):
        raise reader.error("workload", f"a function name after the last ':', not {function!r}")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = reader.base_dir("workload") / path
        return f"{os.path.abspath(path)}:{function}"
    if not _MODULE.fullmatch(target):
        raise reader.error("workload", f"a module name (or a path/to/file.py) before ':', not {target!r}")
    return value


def _workload_args(reader: _Reader) -> list[str]:
    if "workload_args" not in reader.settings:
        return []
    value = reader.settings["workload_args"]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise reader.error("workload_args", f"words split as a shell would ({exc})") from None
    if isinstance(value, list) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    raise reader.error("workload_args", "a list of strings, or one string split as a shell would")


def _devices(reader: _Reader, key: str, parse: Callable[[str, int], Any]) -> list[Any]:
    if key not in reader.settings:
        return []
    value = reader.settings[key]
    if not isinstance(value, list):
        raise reader.error(key, f"a [list] of {key} spec strings")
    result = []
    for index, spec in enumerate(value):
        try:
            result.append(parse(spec, index))
        except ConfigError as exc:
            raise ConfigError(f"{key} entry {index} in {reader.where(key)}: {exc}") from None
    return result


def _disk(reader: _Reader) -> list[DiskSpec]:
    disks: list[DiskSpec] = _devices(reader, "disk", lambda spec, index: parse_disk_spec(spec))
    seen: dict[int, DiskSpec] = {}
    resolved = []
    for disk in disks:
        if disk.devid in seen:
            raise reader.error(
                "disk", f"one disk per device: {seen[disk.devid].vdev} and {disk.vdev} are both device {disk.devid}"
            )
        seen[disk.devid] = disk
        target = Path(disk.target).expanduser()
        if not target.is_absolute():  # an image file named relative to the config that names it
            target = reader.base_dir("disk") / target
        resolved.append(replace(disk, target=os.path.abspath(target)))
    return resolved


def _vif(reader: _Reader) -> list[VifSpec]:
    vifs: list[VifSpec] = _devices(reader, "vif", parse_vif_spec)
    devids: dict[int, int] = {}
    macs: dict[str, int] = {}
    for index, vif in enumerate(vifs):
        if vif.devid in devids:
            raise reader.error(
                "vif", f"one interface per devid: entries {devids[vif.devid]} and {index} are both devid {vif.devid}"
            )
        if vif.mac in macs:
            raise reader.error("vif", f"distinct MACs: entries {macs[vif.mac]} and {index} are both {vif.mac}")
        devids[vif.devid] = index
        macs[vif.mac] = index
    return vifs


def _ports(reader: _Reader, vifs: list[VifSpec]) -> list[PortForward]:
    if "ports" not in reader.settings:
        return []
    value = reader.settings["ports"]
    if not isinstance(value, list):
        raise reader.error("ports", 'a [list] of forwards like "8080:80"')
    forwards: list[PortForward] = []
    for index, spec in enumerate(value):
        try:
            forwards.append(parse_port_forward(spec))
        except ConfigError as exc:
            raise ConfigError(f"ports entry {index} in {reader.where('ports')}: {exc}") from None
    hosts = [forward.host_port for forward in forwards]
    twice = sorted({port for port in hosts if hosts.count(port) > 1})
    if twice:
        raise reader.error("ports", f"one forward per host port: {', '.join(map(str, twice))} is given twice")
    if forwards and not vifs:
        raise reader.error("ports", 'a vif to forward to: add vif = [ "" ] (a forward reaches the first vif)')
    return forwards


def _vchan(reader: _Reader, name: str) -> list[str]:
    if "vchan" not in reader.settings:
        return []
    try:
        return parse_vchan_rules(reader.settings["vchan"], name)
    except ConfigError as exc:
        raise ConfigError(f"vchan in {reader.where('vchan')}: {exc}") from None


def _build(reader: _Reader) -> DomainConfig:
    settings = reader.settings
    warnings: list[str] = []
    for key in settings:
        if key in XL_KEYS_IGNORED:
            warnings.append(f"key {key!r} in {reader.where(key)} is an xl setting xenlike does not use, ignored")
        elif key not in USED_KEYS:
            warnings.append(
                f"unknown key {key!r} in {reader.where(key)}, ignored" + did_you_mean(key, USED_KEYS | XL_KEYS_IGNORED)
            )
    name = _name(reader)
    # libxl: maxmem without memory is both (target_memkb = max_memkb).
    maxmem_only = "maxmem" in settings and "memory" not in settings
    if maxmem_only:
        maxmem = reader.integer("maxmem", DEFAULT_MEMORY_MIB, 1, INT_MAX, "a whole number of MiB")
        memory = maxmem
    else:
        memory = reader.integer("memory", DEFAULT_MEMORY_MIB, 1, INT_MAX, "a whole number of MiB")
        maxmem = reader.integer("maxmem", memory, 1, INT_MAX, "a whole number of MiB")
    if maxmem < memory:
        raise reader.error("maxmem", f"at least memory ({memory} MiB)")
    vcpus = reader.integer("vcpus", 1, 1, INT_MAX, "a whole number of vCPUs")
    maxvcpus = reader.integer("maxvcpus", vcpus, 1, INT_MAX, "a whole number of vCPUs")
    if maxvcpus < vcpus:
        raise reader.error("maxvcpus", f"at least vcpus ({vcpus})")
    cpus = None
    if "cpus" in settings:
        try:
            cpus = _cpuset(settings["cpus"])
        except ValueError as exc:
            raise reader.error("cpus", f"{_CPUS_EXPECTED}; {exc}") from None
    weight_keys = [key for key in ("cpu_weight", "weight") if key in settings]
    weights = {key: reader.integer(key, DEFAULT_WEIGHT, 1, 65535, "a weight") for key in weight_keys}
    if len(set(weights.values())) > 1:
        raise reader.error("weight", f"the same value as cpu_weight = {weights['cpu_weight']} (weight is its alias)")
    cap = reader.integer("cap", 0, 0, 100 * maxvcpus, "a cap in percent of one pCPU (0 = none, 100 per vCPU)")
    extra = reader.string("extra", "")
    root = reader.string("root", "")
    if "cmdline" in settings:
        cmdline = reader.string("cmdline", "")
        if "root" in settings or "extra" in settings:
            warnings.append(f"root and extra in {reader.source} are ignored in favour of cmdline (xl.cfg(5))")
    else:
        cmdline = f"root={root} {extra}" if root and extra else f"root={root}" if root else extra
    vifs = _vif(reader)
    ports = _ports(reader, vifs)
    return DomainConfig(
        name=name,
        uuid=_uuid(reader),
        memory=memory,
        maxmem=maxmem,
        vcpus=vcpus,
        maxvcpus=maxvcpus,
        cpus=cpus,
        weight=next(iter(weights.values()), DEFAULT_WEIGHT),
        cap=cap,
        on_poweroff=_action(reader, "on_poweroff", "destroy"),
        on_reboot=_action(reader, "on_reboot", "restart"),
        on_crash=_action(reader, "on_crash", "destroy"),
        on_watchdog=_action(reader, "on_watchdog", "destroy"),
        on_soft_reset=_action(reader, "on_soft_reset", "soft-reset"),
        disk=_disk(reader),
        vif=vifs,
        ports=ports,
        vchan=_vchan(reader, name),
        extra=extra,
        cmdline=cmdline,
        max_grant_frames=reader.integer(
            "max_grant_frames", DEFAULT_MAX_GRANT_FRAMES, 1, INT_MAX, "a whole number of grant-table frames"
        ),
        workload=_workload(reader),
        workload_args=_workload_args(reader),
        source=reader.source,
        warnings=warnings,
    )


def domain_config_from_xlcfg(
    settings: Mapping[str, Any], source: str = "<config>", *, base_dir: Path | str | None = None
) -> DomainConfig:
    """Check parsed xl.cfg settings (xl.cfg(5)) and build a :class:`DomainConfig`.

    ``source`` names the config in messages; when ``settings`` is a
    :class:`Settings` its per-key locations (``"web.cfg line 3"``) are used.
    Relative disk targets and ``path/file.py:function`` workloads are taken
    relative to ``base_dir`` (default: the current directory) and made
    absolute. Raises :class:`ConfigError`; ignored keys become warnings.
    """
    locations = settings.locations if isinstance(settings, Settings) else {}
    directory = Path(base_dir) if base_dir is not None else Path.cwd()
    reader = _Reader(settings, source, lambda key: locations.get(key, source), lambda key: directory)
    return _build(reader)


def domain_config_from_sources(
    settings: Mapping[str, Any], source: str, where: Callable[[str], str], base_dir: Callable[[str], Path]
) -> DomainConfig:
    """:func:`domain_config_from_xlcfg` for settings merged from several files.

    ``where(key)`` names the place a key was set and ``base_dir(key)`` the
    directory its relative paths are relative to.
    """
    return _build(_Reader(settings, source, where, base_dir))


def read_xlcfg(path: Path | str) -> Settings:
    """Read and parse an xl.cfg file; ConfigError if it cannot be read or parsed."""
    return parse_xlcfg(read_config_text(path, "config file"), str(path))


def load_domain_config(path: Path | str, overrides: Iterable[str] = ()) -> DomainConfig:
    """Read an xl.cfg file and apply command-line ``KEY=VALUE`` overrides (xl(1) ``create``).

    Overrides are read after the file (see :func:`~xenlike.tools.config.xlcfg.apply_overrides`).
    Relative paths in the file are relative to the file's directory.
    """
    settings = apply_overrides(read_xlcfg(path), overrides)
    return domain_config_from_xlcfg(settings, str(path), base_dir=Path(path).parent)
