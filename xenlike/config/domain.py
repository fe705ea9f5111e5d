"""A domain's configuration: the xl.cfg(5) keys xenlike uses, checked.

Defaults are libxl's: 1 vCPU, 32 MiB, weight 256, cap 0, ``on_poweroff=destroy``,
``on_reboot=restart``, ``on_crash=destroy``. xenlike adds ``workload`` (what the
guest runs: a registered name, ``module:function`` or ``path/file.py:function``)
and ``workload_args``. Keys xl knows that mean nothing here (``kernel``,
``type``, ...) and unknown keys are reported as warnings, not errors.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .disk import DiskSpec, parse_disk_spec
from .vif import VifSpec, parse_vif_spec
from .xlcfg import ConfigError, parse_override, parse_xlcfg

__all__ = ["DomainConfig", "domain_config_from_settings", "load_domain_config", "parse_cpus", "ACTIONS"]

ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy", "coredump-restart", "soft-reset")
# xl.cfg keys that xenlike accepts and ignores: they describe a real kernel or hardware.
IGNORED = {"type", "builder", "kernel", "ramdisk", "root", "bootloader", "bootloader_args", "pool", "device_model_version",
           "device_model_override", "vnc", "vncdisplay", "sdl", "serial", "usb", "usbdevice", "pci", "vfb", "vkb",
           "boot", "acpi", "apic", "pae", "hap", "nestedhvm", "viridian", "localtime", "on_xend_start",
           "on_xend_stop", "seclabel", "maxvcpus", "cpus_soft", "max_maptrack_frames", "nomigrate", "driver_domain",
           "xenstore_quota"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass
class DomainConfig:
    """A checked domain config; ``to_dict()`` is what travels to dom0."""

    name: str
    memory: int = 32
    maxmem: int | None = None
    vcpus: int = 1
    cpus: list[int] | None = None
    weight: int = 256
    cap: int = 0
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    on_soft_reset: str = "restart"
    workload: str = "idle"
    workload_args: list[str] = field(default_factory=list)
    extra: str = ""
    uuid: str | None = None
    max_grant_frames: int = 64
    disk: list[DiskSpec] = field(default_factory=list)
    vif: list[VifSpec] = field(default_factory=list)
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disk"] = [d.to_dict() for d in self.disk]
        data["vif"] = [v.to_dict() for v in self.vif]
        data.pop("warnings")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DomainConfig":
        data = dict(data)
        data["disk"] = [DiskSpec.from_dict(d) for d in data.get("disk", [])]
        data["vif"] = [VifSpec.from_dict(v) for v in data.get("vif", [])]
        return cls(**data)


def parse_cpus(value: Any, key: str = "cpus") -> list[int] | None:
    """xl's cpus= syntax: ``"all"``, ``"0-3,^1"``, ``"2"``, or a list of those."""
    if value in (None, "", "all"):
        return None
    items = value if isinstance(value, list) else [value]
    chosen: set[int] = set()
    removed: set[int] = set()
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            negate = part.startswith("^")
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.lstrip("^"))
            if not match:
                raise ConfigError(f"{key} = {value!r}: expected CPU numbers like \"0-3,^1\" or \"all\", not {part!r}")
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if high < low:
                raise ConfigError(f"{key} = {value!r}: range {part!r} runs backwards")
            (removed if negate else chosen).update(range(low, high + 1))
    cpus = sorted(chosen - removed)
    if not cpus:
        raise ConfigError(f"{key} = {value!r} leaves no CPU")
    return cpus


def _expect(key: str, value: Any, source: str, what: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} in {source}: expected {what}")


def _int(key: str, low: int, high: int, what: str) -> Callable[[Any, str], int]:
    def check(value: Any, source: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            else:
                raise _expect(key, value, source, what)
        if not low <= value <= high:
            raise _expect(key, value, source, f"{what} from {low} to {high}")
        return value

    return check


def _string(key: str, pattern: re.Pattern | None = None, what: str = "a quoted string") -> Callable[[Any, str], str]:
    def check(value: Any, source: str) -> str:
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise _expect(key, value, source, what)
        return value

    return check


def _action(key: str) -> Callable[[Any, str], str]:
    def check(value: Any, source: str) -> str:
        if value not in ACTIONS:
            raise _expect(key, value, source, f"one of {', '.join(ACTIONS)}")
        return value

    return check


def _uuid(value: Any, source: str) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError:
        raise _expect("uuid", value, source, "a UUID like 3f2b9c1e-...") from None


def _args(value: Any, source: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return [str(v) for v in value]
    raise _expect("workload_args", value, source, "a list of strings, or one string split like a shell")


def _list_of(key: str, parse: Callable[..., Any]) -> Callable[[Any, str], list]:
    def check(value: Any, source: str) -> list:
        if not isinstance(value, list):
            raise _expect(key, value, source, f"a [list] of {key} specs")
        result = []
        for index, item in enumerate(value):
            try:
                result.append(parse(item) if key == "disk" else parse(item, index))
            except ConfigError as exc:
                raise ConfigError(f"{key} entry {index} in {source}: {exc}") from None
        return result

    return check


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "name": _string("name", _NAME, "a name of letters, digits, '.', '_' and '-' (at most 64)"),
    "memory": _int("memory", 1, 1 << 20, "a whole number of MiB"),
    "maxmem": _int("maxmem", 1, 1 << 20, "a whole number of MiB"),
    "vcpus": _int("vcpus", 1, 128, "a whole number of vCPUs"),
    "cpus": lambda v, s: parse_cpus(v),
    "weight": _int("weight", 1, 65535, "a weight"),
    "cap": _int("cap", 0, 100 * 128, "a cap in percent of one CPU (0 = none)"),
    "on_poweroff": _action("on_poweroff"),
    "on_reboot": _action("on_reboot"),
    "on_crash": _action("on_crash"),
    "on_watchdog": _action("on_watchdog"),
    "on_soft_reset": _action("on_soft_reset"),
    "workload": _string("workload", re.compile(r"\S+"), "a workload: a registered name, module:function or file.py:function"),
    "workload_args": _args,
    "extra": _string("extra"),
    "cmdline": _string("cmdline"),
    "uuid": _uuid,
    "max_grant_frames": _int("max_grant_frames", 1, 1024, "a number of grant-table frames"),
    "disk": _list_of("disk", parse_disk_spec),
    "vif": _list_of("vif", parse_vif_spec),
}
_ALIASES = {"cpu_weight": "weight", "cmdline": "extra"}


def domain_config_from_settings(settings: dict[str, Any], source: str = "<config>",
                                lines: dict[str, int] | None = None, base_dir: Path | None = None) -> DomainConfig:
    """Check xl.cfg settings (already parsed) and build a DomainConfig.

    ``base_dir`` resolves a relative ``path/file.py:function`` workload and
    relative disk targets.
    """
    lines = lines or {}
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in settings.items():
        where = f"{source} line {lines[key]}" if key in lines else source
        target = _ALIASES.get(key, key)
        if target in _CHECKS:
            values[target] = _CHECKS[key if key in _CHECKS else target](value, where)
        elif key in IGNORED:
            warnings.append(f"{key} in {where} means nothing to xenlike; ignored")
        else:
            warnings.append(f"unknown key {key!r} in {where}, ignored")
    if "name" not in values:
        raise ConfigError(f"{source} has no name: add name = \"...\" (every domain needs one)")
    if values["name"] == "Domain-0":
        raise ConfigError(f"name = 'Domain-0' in {source}: that name is dom0's")
    memory = values.get("memory", 32)
    if values.get("maxmem") is not None and values["maxmem"] < memory:
        raise ConfigError(f"maxmem = {values['maxmem']} in {source}: expected at least memory ({memory})")
    vcpus = values.get("vcpus", 1)
    if values.get("cap", 0) > 100 * vcpus:
        raise ConfigError(f"cap = {values['cap']} in {source}: expected at most {100 * vcpus} (100 per vCPU)")
    devices = [d.vdev for d in values.get("disk", [])]
    if len(devices) != len(set(devices)):
        raise ConfigError(f"disk in {source}: two disks use the same vdev ({', '.join(devices)})")
    workload = values.get("workload")
    if workload and base_dir is not None and ".py:" in workload and not workload.startswith("/"):
        values["workload"] = str((base_dir / workload).resolve())
    if base_dir is not None:  # relative images live beside the config that names them
        values["disk"] = [d if os.path.isabs(d.target) else dataclasses.replace(d, target=str((base_dir / d.target).resolve()))
                          for d in values.get("disk", [])]
    return DomainConfig(**values, source=source, warnings=warnings)


def load_domain_config(path: Path, overrides: Sequence[str] = ()) -> DomainConfig:
    """Read an xl.cfg file and apply ``key=value`` overrides from the command line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    parsed = parse_xlcfg(text, str(path))
    for override in overrides:
        key, value = parse_override(override)
        parsed.settings[key] = value
        parsed.lines.pop(key, None)
    return domain_config_from_settings(parsed.settings, str(path), parsed.lines, Path(path).parent)
