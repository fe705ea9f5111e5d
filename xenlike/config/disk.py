"""Disk specs, as xl-disk-configuration(5) writes them.

    disk = [ "format=raw, vdev=xvda, access=rw, target=/images/web.img" ]
    disk = [ "/images/web.img,raw,xvda,rw" ]          # positional: target, format, vdev, access
    disk = [ "/images/web.img,,xvda" ]                 # empty positions take defaults
    disk = [ "raw:/images/web.img,xvda,w" ]            # deprecated prefix form

``target=`` swallows the rest of the spec and must come last. xenlike adds
``size=64M``: create a sparse image of that size when the target does not exist.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from .xlcfg import ConfigError

__all__ = ["DiskSpec", "parse_disk_spec", "vdev_to_devid"]

FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
_ACCESS = {"r": "ro", "ro": "ro", "w": "rw", "rw": "rw"}
_FLAGS = {"cdrom": ("devtype", "cdrom"), "discard": ("discard", True), "no-discard": ("discard", False),
          "direct-io-safe": ("direct_io_safe", True), "trusted": ("trusted", True), "untrusted": ("trusted", False)}
_KEYS = ("target", "format", "vdev", "access", "devtype", "backend", "backendtype", "script", "size", "specification")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class DiskSpec:
    """One ``disk=`` entry, resolved."""

    target: str
    vdev: str
    devid: int
    format: str = "raw"
    access: str = "rw"
    devtype: str = "disk"
    backend: str = "0"
    discard: bool = True
    direct_io_safe: bool = False
    trusted: bool = True
    size: int | None = None  # bytes; create the image if missing

    @property
    def readonly(self) -> bool:
        return self.access == "ro"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiskSpec":
        return cls(**data)


def vdev_to_devid(vdev: str) -> int:
    """The Xen virtual device number of a vdev name (docs/misc/vbd-interface.txt)."""
    match = re.fullmatch(r"xvd([a-z]+)", vdev)
    if match:
        index = 0
        for ch in match.group(1):
            index = index * 26 + (ord(ch) - ord("a") + 1)
        index -= 1
        return (202 << 8) | (index << 4) if index < 16 else (1 << 28) | (index << 8)
    match = re.fullmatch(r"hd([a-d])", vdev)
    if match:
        index = ord(match.group(1)) - ord("a")
        return ((3 if index < 2 else 22) << 8) | ((index % 2) << 6)
    match = re.fullmatch(r"sd([a-p])", vdev)
    if match:
        return (8 << 8) | ((ord(match.group(1)) - ord("a")) << 4)
    raise ConfigError(f"vdev {vdev!r} is not a virtual device name: use xvda, xvdb, ... (or hda-hdd, sda-sdp)")


def _size(text: str, spec: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise ConfigError(f"disk spec {spec!r}: size {text!r} is not a size like 64M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_disk_spec(spec: str) -> DiskSpec:
    """Parse one disk spec; ConfigError names the spec and what is wrong with it."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"disk spec {spec!r} is empty: write e.g. 'format=raw, vdev=xvda, access=rw, target=/path/disk.img'")
    text = spec.strip()
    fields: dict[str, Any] = {}
    if re.match(r"(raw|qcow2?|vhd|qed):", text) and "=" not in text.split(",")[0]:
        prefix, _, text = text.partition(":")  # deprecated "format:target,vdev,access"
        fields["format"] = prefix
        parts = text.split(",")
        positional = [parts[0], None, *parts[1:]]
    else:
        positional = []
        rest = text
        while rest:
            item, sep, tail = rest.partition(",")
            item = item.strip()
            if item.startswith("target="):
                fields["target"] = rest.strip()[len("target="):]  # swallows the rest, commas and all
                break
            rest = tail if sep else ""
            if "=" in item:
                key, _, value = item.partition("=")
                key, value = key.strip(), value.strip()
                if key not in _KEYS:
                    raise ConfigError(f"disk spec {spec!r}: unknown key {key!r} (known: {', '.join(_KEYS)})")
                fields[key] = value
            elif item in _FLAGS:
                name, value = _FLAGS[item]
                fields[name] = value
            else:
                positional.append(item)
    for name, value in zip(("target", "format", "vdev", "access"), positional):
        if value:
            if name in fields:
                raise ConfigError(f"disk spec {spec!r}: {name} is given twice")
            fields[name] = value
    if len(positional) > 4:
        raise ConfigError(f"disk spec {spec!r}: too many positional parameters (target, format, vdev, access)")
    return _resolve(fields, spec)


def _resolve(fields: dict[str, Any], spec: str) -> DiskSpec:
    target = fields.get("target")
    if not target:
        raise ConfigError(f"disk spec {spec!r} has no target: add target=/path/to/disk.img")
    fmt = fields.get("format", "raw") or "raw"
    if fmt not in FORMATS:
        raise ConfigError(f"disk spec {spec!r}: format {fmt!r} is unknown (xl knows {', '.join(FORMATS)})")
    if fmt != "raw":
        raise ConfigError(f"disk spec {spec!r}: xenlike serves raw images only, not {fmt}")
    vdev = fields.get("vdev")
    if not vdev:
        raise ConfigError(f"disk spec {spec!r} has no vdev: add vdev=xvda (the name the guest sees)")
    devtype = fields.get("devtype", "disk")
    if devtype not in ("disk", "cdrom"):
        raise ConfigError(f"disk spec {spec!r}: devtype {devtype!r} must be disk or cdrom")
    access_text = fields.get("access", "ro" if devtype == "cdrom" else "rw")
    access = _ACCESS.get(access_text)
    if access is None:
        raise ConfigError(f"disk spec {spec!r}: access {access_text!r} must be ro, r, rw or w")
    size = _size(fields["size"], spec) if "size" in fields else None
    return DiskSpec(
        target=target,
        vdev=vdev,
        devid=vdev_to_devid(vdev),
        format=fmt,
        access=access,
        devtype=devtype,
        backend=str(fields.get("backend", "0")),
        discard=fields.get("discard", True),
        direct_io_safe=fields.get("direct_io_safe", False),
        trusted=fields.get("trusted", True),
        size=size,
    )
