"""Disk specs, as xl-disk-configuration(5) writes them.

A spec is comma-separated flags, ``key=value`` parameters and positional
parameters (``tools/libs/util/libxlu_disk_l.l``)::

    [<key>=<value>|<flag>,]* [<target>, [<format>, [<vdev>, [<access>]]]] [<key>=<value>|<flag>,]* [target=<target>]

These four are equivalent (the man page's own example)::

    /dev/vg/guest-volume,,hda
    /dev/vg/guest-volume,raw,hda,rw
    format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume
    raw:/dev/vg/guest-volume,hda,w          (deprecated prefix syntax)

Rules kept from xl: words without ``=`` that are not flags fill the
positional parameters that are still unset, in the order target, format,
vdev, access; an empty value means the default; ``target=`` takes the whole
rest of the spec (commas included) and so must come last; the deprecated
``raw:``/``qcow:``/``qcow2:``/``vhd:`` prefixes set the format and
``phy:``, ``file:``, ``aio:``, ``tap:``, ``tap2:``, ``tapdisk:``, ``ioemu:``
are ignored; ``<vdev>:cdrom`` is the deprecated form of the ``cdrom`` flag;
``cdrom`` forces read-only access; a vdev may be a device number
(``51712``, ``0xca00``).

xenlike serves raw image files from dom0, so: formats other than ``raw``,
block scripts (``script=``, ``iscsi:``...), the virtio specification, COLO and
empty CD-ROM drives are refused with a clear error, and back-ends live in
dom0 only. xenlike adds ``size=64M`` (bytes, or K/M/G binary units; a
multiple of 512): create a sparse image of that size if the target does not
exist, and ``model=split|direct|passthrough`` (default ``split``): the device
model that serves the disk (``xenlike.public.vdisk``: blkfront/blkback, the
hypervisor itself, or the guest on the image's fd).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from xenlike.public.vdisk import MODEL_SPLIT, MODELS
from xenlike.tools.config.xlcfg import ConfigError, format_value

__all__ = ["DiskSpec", "parse_disk_spec", "vdev_to_devid"]

FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")
_ACCESS = {"r": "ro", "ro": "ro", "w": "rw", "rw": "rw"}
_FLAGS: dict[str, tuple[str, Any]] = {
    "cdrom": ("devtype", "cdrom"),
    "direct-io-safe": ("direct_io_safe", True),
    "discard": ("discard", True),
    "no-discard": ("discard", False),
    "trusted": ("trusted", True),
    "untrusted": ("trusted", False),
    "no-colo": ("colo", False),
    "colo": ("colo", True),
}
_KEYS = (
    "format",
    "vdev",
    "access",
    "devtype",
    "backend",
    "backendtype",
    "specification",
    "script",
    "grant_usage",
    "size",
    "model",
    "colo-host",
    "colo-port",
    "colo-export",
    "active-disk",
    "hidden-disk",
)
_COLO_KEYS = ("colo-host", "colo-port", "colo-export", "active-disk", "hidden-disk")
_FORMAT_PREFIXES = ("raw", "qcow", "qcow2", "vhd")
_SCRIPT_PREFIXES = ("iscsi", "nbd", "enbd", "drbd")
_IGNORED_PREFIXES = ("tapdisk", "tap", "tap2", "aio", "ioemu", "file", "phy")
_PREFIX = re.compile(r"([a-z][a-z0-9]*):")
_KEY = re.compile(r"[a-z][-a-z0-9_]*")
_SIZE = re.compile(r"([0-9]+)([KMGkmg]?)")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
SECTOR_SIZE = 512


@dataclass(frozen=True)
class DiskSpec:
    """One ``disk=`` entry, checked and with its defaults filled in.

    ``devid`` is the Xen virtual device number of ``vdev``
    (xen-vbd-interface(7)); ``access`` is ``"ro"`` or ``"rw"``; ``backend`` is
    the back-end domain (always dom0, ``"0"``); ``size`` is in bytes, or
    ``None`` when the image must already exist; ``model`` is the device model
    serving it (``split``, ``direct`` or ``passthrough``).
    """

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
    size: int | None = None
    model: str = MODEL_SPLIT

    @property
    def readonly(self) -> bool:
        """True when the guest may only read the disk."""
        return self.access == "ro"

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, bool, None), for msgpack."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiskSpec:
        """The inverse of :meth:`to_dict`; ConfigError for missing or unknown fields."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name in ("target", "vdev", "devid"))
        if unknown or missing:
            raise ConfigError(f"not a disk description: unknown fields {unknown}, missing fields {missing}")
        return cls(**data)


def _letters_index(letters: str) -> int:
    # Bijective base 26, as libxl's device_virtdisk_matches: a=0 .. z=25, aa=26.
    index = -1
    for ch in letters:
        index = (index + 1) * 26 + (ord(ch) - ord("a"))
    return index


_VDEV = re.compile(r"(xvd|hd|sd)([a-z]+)([1-9][0-9]*)?|d([0-9]+)(?:p([0-9]+))?")
# A device number as strtoul(vdev, &end, 0) reads it whole: hex, octal or decimal.
_VDEV_NUMBER = re.compile(r"0[xX]([0-9a-fA-F]+)|0([0-7]*)|([1-9][0-9]*)")
INT_MAX = (1 << 31) - 1


def _device_number(match: re.Match) -> int:
    hex_digits, octal_digits, decimal_digits = match.groups()
    if hex_digits is not None:
        return int(hex_digits, 16)
    if octal_digits is not None:
        return int(octal_digits or "0", 8)
    return int(decimal_digits)


def vdev_to_devid(vdev: str) -> int:
    """The Xen virtual device number of a vdev name (xen-vbd-interface(7), docs/misc/vbd-interface.txt).

    ``xvd<letters>[N]``: disk < 2^20, partition < 256, ``202 << 8 | disk << 4 |
    N`` when both fit in 4 bits, else ``1 << 28 | disk << 8 | N``;
    ``d<disk>[p<N>]`` is the same number written with digits;
    ``sd<a-p>[N]``: ``8 << 8 | disk << 4 | N`` (N up to 15);
    ``hd<a-d>[N]``: ``3 << 8`` (hda, hdb) or ``22 << 8`` (hdc, hdd) ``| (disk & 1) << 6 | N``
    (N up to 63). A number (``51712``, ``0xca00``, at most INT_MAX) is the
    device number itself, as ``libxl__device_disk_dev_number`` takes it.
    Raises ConfigError for any other name.
    """
    number = _VDEV_NUMBER.fullmatch(vdev) if isinstance(vdev, str) else None
    if number is not None:
        devid = _device_number(number)
        if devid > INT_MAX:
            raise ConfigError(f"vdev {format_value(vdev)}: a device number is at most {INT_MAX}")
        return devid
    match = _VDEV.fullmatch(vdev) if isinstance(vdev, str) else None
    if match is None:
        raise ConfigError(
            f"vdev {format_value(vdev)} is not a virtual device name: expected xvda, xvdb, ... "
            "(or sda-sdp, hda-hdd, d0, d1p2, a device number; xen-vbd-interface(7))"
        )
    kind, letters, part_text, disk_text, dpart_text = match.groups()
    if kind is None:
        kind, disk, partition = "xvd", int(disk_text), int(dpart_text or 0)
    else:
        disk, partition = _letters_index(letters), int(part_text or 0)
    if kind == "xvd":
        if disk >= 1 << 20 or partition > 255:
            raise ConfigError(f"vdev {format_value(vdev)}: Xen virtual disks go up to disk 1048575, partition 255")
        if disk <= 15 and partition <= 15:
            return (202 << 8) | (disk << 4) | partition
        return (1 << 28) | (disk << 8) | partition
    if kind == "sd":
        if disk > 15 or partition > 15:
            raise ConfigError(
                f"vdev {format_value(vdev)}: SCSI disks go from sda to sdp, partitions up to 15 "
                "(higher numbers are deprecated); use xvd names"
            )
        return (8 << 8) | (disk << 4) | partition
    if disk > 3 or partition > 63:
        raise ConfigError(
            f"vdev {format_value(vdev)}: IDE disks go from hda to hdd, partitions up to 63; use xvd names"
        )
    return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | partition


def _parse_size(text: str, spec: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise _spec_error(spec, f"size={text} is not a size: expected bytes or a number with K, M or G, like 64M")
    size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size == 0 or size % SECTOR_SIZE:
        raise _spec_error(spec, f"size={text} is not a positive multiple of {SECTOR_SIZE} bytes (the sector size)")
    return size


def _spec_error(spec: str, problem: str) -> ConfigError:
    return ConfigError(f"disk spec {format_value(spec)}: {problem}")


class _Fields:
    """What a spec said so far; a parameter given twice with different values is an error."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.values: dict[str, Any] = {}

    def given(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value in (None, "") else value

    def put(self, name: str, value: Any) -> None:
        old = self.values.get(name)
        if old not in (None, "") and value != old:
            raise _spec_error(
                self.spec,
                f"{name} respecified ({format_value(old)}, then {format_value(value)}): give each parameter once",
            )
        if old in (None, "") or value != "":
            self.values[name] = value


def _vdev_and_devtype(text: str, found: _Fields) -> None:
    # Deprecated "<vdev>:<devtype>" (libxlu_disk_l.l vdev_and_devtype).
    vdev, colon, devtype = text.rpartition(":")
    if not colon:
        found.put("vdev", text)
        return
    if devtype not in ("cdrom", "disk"):
        raise _spec_error(found.spec, f"{text!r}: unknown device type {devtype!r} after ':' (cdrom or disk)")
    found.put("vdev", vdev)
    found.put("devtype", devtype)


def parse_disk_spec(spec: str) -> DiskSpec:
    """Parse one disk spec (xl-disk-configuration(5), libxlu_disk_l.l) into a :class:`DiskSpec`.

    Raises :class:`ConfigError` naming the spec and the problem.
    """
    if not isinstance(spec, str):
        raise ConfigError(
            f'disk spec {format_value(spec)} is not a string: expected "target,format,vdev,access" '
            'or "vdev=xvda, target=/path/disk.img"'
        )
    if not spec.strip():
        raise _spec_error(spec, 'empty: expected e.g. "format=raw, vdev=xvda, access=rw, target=/path/disk.img"')
    found = _Fields(spec)
    deprecated_prefix = False
    access_positional = False
    pos = 0
    while pos < len(spec):
        while pos < len(spec) and spec[pos] in " \t\n":
            pos += 1
        if pos >= len(spec):
            break
        if spec.startswith("target=", pos):
            target = spec[pos + len("target=") :]
            found.put("target", target[:-1] if target.endswith(",") else target)
            break
        prefix = _PREFIX.match(spec, pos)
        if prefix and (
            prefix.group(1) in _FORMAT_PREFIXES + _SCRIPT_PREFIXES + _IGNORED_PREFIXES
            or not re.match(r"[a-z0-9]", spec[prefix.end() : prefix.end() + 1])
        ):
            word = prefix.group(1)
            if word in _FORMAT_PREFIXES:
                found.put("format", word)
            elif word in _SCRIPT_PREFIXES:
                raise _spec_error(
                    spec,
                    f"the {word}: prefix names a block script (block-{word}); xenlike serves "
                    "image files itself and runs no block scripts",
                )
            elif word not in _IGNORED_PREFIXES:
                raise _spec_error(spec, f"unknown deprecated disk prefix {word}:")
            deprecated_prefix = True
            pos = prefix.end()
            continue
        comma = spec.find(",", pos)
        end = len(spec) if comma < 0 else comma
        token = spec[pos:end].rstrip(" \t\n")
        pos = end + 1
        if token in _FLAGS:
            name, value = _FLAGS[token]
            if name == "colo" and value:
                raise _spec_error(spec, "xenlike has no COLO replication (colo)")
            found.values[name] = value
        elif "=" in token:
            key, _, value = token.partition("=")
            key, value = key.strip(), value.strip()
            if not _KEY.fullmatch(key):
                raise _spec_error(
                    spec,
                    f"{token!r} is neither key=value nor a positional parameter (a positional "
                    "parameter cannot contain '='; write target=... last for such a path)",
                )
            if key not in _KEYS:
                raise _spec_error(
                    spec,
                    f"unknown key {key!r}: expected format, vdev, access, devtype, backend, "
                    "backendtype, specification, grant_usage, model, target (last) or size",
                )
            if key == "devtype":
                if value not in ("disk", "cdrom"):
                    raise _spec_error(spec, f"devtype={value} is unknown: expected disk or cdrom")
                found.values["devtype"] = value
            else:
                found.put(key, value)
        elif not found.given("target"):
            found.put("target", token)
        elif not deprecated_prefix and not found.given("format"):
            if found.get("target") is None and ":" in token:
                raise _spec_error(
                    spec, "an empty CD-ROM drive: xenlike has no removable media; give the drive a target"
                )
            found.put("format", token)
        elif not found.given("vdev"):
            _vdev_and_devtype(token, found)
        elif not access_positional:
            access_positional = True
            found.put("access", token)
        else:
            raise _spec_error(
                spec, f"too many positional parameters at {token!r}: the order is target, format, vdev, access"
            )
    return _resolve(found)


def _resolve(found: _Fields) -> DiskSpec:
    spec = found.spec
    for key in _COLO_KEYS:
        if found.given(key):
            raise _spec_error(spec, f"xenlike has no COLO replication ({key})")
    if found.given("script"):
        raise _spec_error(spec, "xenlike serves image files itself and runs no block scripts (script=)")
    specification = found.get("specification", "xen")
    if specification not in ("xen", "virtio"):
        raise _spec_error(spec, f"specification={specification} is unknown: expected xen or virtio")
    if specification == "virtio":
        raise _spec_error(spec, "xenlike speaks the Xen block protocol (blkif) only, not virtio")
    backendtype = found.get("backendtype", "phy")
    if backendtype not in ("phy", "qdisk", "tap", "standalone"):
        raise _spec_error(spec, f"backendtype={backendtype} is unknown: expected phy, qdisk, tap or standalone")
    if backendtype == "standalone":
        raise _spec_error(spec, "backendtype=standalone serves virtio only; xenlike's back-end is blkback in dom0")
    if found.get("grant_usage", "0") not in ("0", "1"):
        raise _spec_error(spec, f"grant_usage={found.get('grant_usage')} is not 0 or 1")
    fmt = found.get("format", "raw")
    if fmt not in FORMATS:
        raise _spec_error(spec, f"format {fmt!r} is unknown (xl knows {', '.join(FORMATS[:-1])})")
    if fmt == "empty":
        raise _spec_error(spec, "an empty drive: xenlike has no removable media; give the drive a target")
    if fmt != "raw":
        raise _spec_error(spec, f"format {fmt!r}: xenlike serves raw images only")
    devtype = found.get("devtype", "disk")
    access_text = found.get("access", "rw")
    if access_text not in _ACCESS:
        raise _spec_error(spec, f"access {access_text!r} is unknown: expected ro, r, rw or w")
    access = "ro" if devtype == "cdrom" else _ACCESS[access_text]
    vdev = found.get("vdev")
    if vdev is None:
        raise _spec_error(spec, "no vdev: add vdev=xvda (the device name the guest sees)")
    try:
        devid = vdev_to_devid(vdev)
    except ConfigError as exc:
        raise _spec_error(spec, str(exc)) from None
    target = found.get("target")
    if target is None:
        if devtype == "cdrom":
            raise _spec_error(spec, "an empty CD-ROM drive: xenlike has no removable media; give it a target")
        raise _spec_error(spec, "no target: add target=/path/to/disk.img (it must come last)")
    backend = found.get("backend", "0")
    if backend not in ("0", "Domain-0"):
        raise _spec_error(spec, f"backend={backend}: xenlike runs its back-ends in dom0 (0 or Domain-0) only")
    size = _parse_size(found.get("size"), spec) if found.get("size") is not None else None
    model = found.get("model", MODEL_SPLIT)
    if model not in MODELS:
        raise _spec_error(
            spec,
            f"model={model} is unknown: expected split (blkfront/blkback, the default), direct "
            "(each request a hypercall the hypervisor serves) or passthrough (the guest does its own I/O)",
        )
    return DiskSpec(
        target=target,
        vdev=vdev,
        devid=devid,
        format=fmt,
        access=access,
        devtype=devtype,
        backend="0",
        discard=found.values.get("discard", True),
        direct_io_safe=found.values.get("direct_io_safe", False),
        trusted=found.values.get("trusted", True),
        size=size,
        model=model,
    )
