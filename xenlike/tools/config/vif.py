"""Network interface specs, as xl-network-configuration(5) writes them.

    vif = [ "mac=00:16:3e:01:02:03, bridge=xenbr0", "" ]

A spec is comma-separated ``key=value`` settings, all optional: ``""`` means
every default (``parse_nic_config`` in ``tools/xl/xl_parse.c``). The device
id is the entry's index in the list unless ``devid=`` says otherwise.
Defaults are libxl's (``libxl__device_nic_setdefault``): a random MAC in
Xen's OUI ``00:16:3e``, bridge ``xenbr0``, MTU 1500, back-end dom0, trusted;
the back-end interface is named ``vif<domid>.<devid>`` unless ``vifname=``.

Accepted and ignored, because they only matter to HVM device models or to
hotplug scripts that xenlike does not run: ``type`` (vif or ioemu),
``model``, ``script``, ``gatewaydev`` (and its old name ``netdev``).
Refused: ``vlan`` (xenlike's bridge has no VLANs), back-ends outside dom0,
multicast MACs.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import asdict, dataclass, fields
from typing import Any

from xenlike.tools.config.xlcfg import ConfigError, format_value

__all__ = ["VifSpec", "XEN_OUI", "parse_rate", "parse_vif_spec", "random_mac"]

XEN_OUI = (0x00, 0x16, 0x3E)
DEFAULT_BRIDGE = "xenbr0"
DEFAULT_MTU = 1500
DEFAULT_RATE_INTERVAL_US = 50_000
_KEYS = (
    "mac",
    "bridge",
    "ip",
    "rate",
    "mtu",
    "devid",
    "backend",
    "vifname",
    "type",
    "model",
    "script",
    "gatewaydev",
    "netdev",
    "vlan",
)
_MAC = re.compile(
    r"([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2}):"
    r"([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})"
)
_RATE = re.compile(r"([0-9]+)([GMK]?)([Bb])/s")
_INTERVAL = re.compile(r"([0-9]+)([mu]?)s?")
_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class VifSpec:
    """One ``vif=`` entry, checked and with its defaults filled in.

    ``rate`` is the spec's text (``"10Mb/s@20ms"``) or None for unlimited;
    ``rate_bytes_per_interval`` and ``rate_interval_us`` are what libxl writes
    to xenstore for it (0 and 0 when unlimited). ``vifname`` None means the
    default ``vif<domid>.<devid>`` (see :meth:`ifname`).
    """

    devid: int
    mac: str
    bridge: str = DEFAULT_BRIDGE
    vifname: str | None = None
    ip: str | None = None
    rate: str | None = None
    rate_bytes_per_interval: int = 0
    rate_interval_us: int = 0
    mtu: int = DEFAULT_MTU
    backend: str = "0"
    trusted: bool = True

    def ifname(self, domid: int) -> str:
        """The back-end interface name: ``vifname``, else ``vif<domid>.<devid>``."""
        return self.vifname or f"vif{domid}.{self.devid}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (str, int, bool, None), for msgpack."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VifSpec:
        """The inverse of :meth:`to_dict`; ConfigError for missing or unknown fields."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted({"devid", "mac"} - set(data))
        if unknown or missing:
            raise ConfigError(f"not a vif description: unknown fields {unknown}, missing fields {missing}")
        return cls(**data)


def random_mac() -> str:
    """A random MAC in Xen's OUI, as libxl makes one: ``00:16:3e`` then 23 random bits.

    The OUI makes it unicast and globally administered; the top bit of the
    fourth byte is clear (``r[0] & 0x7f`` in ``libxl__device_nic_setdefault``).
    """
    tail = bytearray(secrets.token_bytes(3))
    tail[0] &= 0x7F
    return ":".join(f"{b:02x}" for b in (*XEN_OUI, *tail))


def _spec_error(spec: str, problem: str) -> ConfigError:
    return ConfigError(f"vif spec {format_value(spec)}: {problem}")


def _ifname(spec: str, key: str, value: str) -> str:
    # Linux's dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or whitespace.
    if not value or len(value.encode()) > 15 or value in (".", "..") or any(ch in "/:" or ch.isspace() for ch in value):
        raise _spec_error(
            spec, f"{key}={value} is not an interface name: expected 1 to 15 characters without '/', ':' or spaces"
        )
    return value


def _mac(spec: str, value: str) -> str | None:
    match = _MAC.fullmatch(value)
    if match is None:
        raise _spec_error(spec, f"mac={value} is not a MAC address: expected six hex bytes like 00:16:3e:12:34:56")
    octets = [int(part, 16) for part in match.groups()]
    if not any(octets):
        return None  # libxl treats 00:00:00:00:00:00 as "not given"
    if octets[0] & 1:
        raise _spec_error(
            spec,
            f"mac={value} is a multicast address: a NIC needs a unicast MAC (the lowest bit of the first byte clear)",
        )
    return ":".join(f"{b:02x}" for b in octets)


def _decimal(spec: str, key: str, value: str) -> int:
    # xl reads these with strtoul(..., 10) (parse_ulong).
    if not re.fullmatch(r"[0-9]+", value):
        raise _spec_error(spec, f"{key}={value} is not a whole number")
    return int(value)


def _strtoull0(digits: str) -> int:
    return int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits)


def parse_rate(spec: str, value: str) -> tuple[int, int]:
    """``rate=`` as ``xlu_vif_parse_rate`` reads it: ``(bytes per interval, interval in µs)``.

    RATE is ``N[GMK](B|b)/s`` (``b`` is bits, units are powers of 1000, N is
    at most 2^32-1 before the unit), optionally ``@INTERVAL`` with ``N[m|u][s]``
    (seconds by default, at most 2^32-1 µs); the interval defaults to 50 ms.
    As libxlu, a rate whose bytes per second times the interval in µs does not
    fit in 64 bits is refused, although its bytes per interval would.
    """
    amount, at, interval = value.partition("@")
    match = _RATE.fullmatch(amount)
    if match is None:
        raise _spec_error(spec, f"rate={value} is not a rate: expected e.g. 10Mb/s, 250KB/s or 1MB/s@20ms")
    number = _strtoull0(match.group(1))
    if number == 0 or number > _UINT32_MAX:
        raise _spec_error(spec, f"rate={value}: the rate must be from 1 to {_UINT32_MAX} before its unit")
    bytes_per_sec = number * {"G": 10**9, "M": 10**6, "K": 10**3, "": 1}[match.group(2)]
    if match.group(3) == "b":
        bytes_per_sec //= 8
    interval_us = DEFAULT_RATE_INTERVAL_US
    if at:
        imatch = _INTERVAL.fullmatch(interval)
        if imatch is None:
            raise _spec_error(spec, f"rate={value}: {interval!r} is not an interval: expected e.g. 20ms, 500us or 1s")
        count = _strtoull0(imatch.group(1))
        interval_us = count * {"": 10**6, "m": 10**3, "u": 1}[imatch.group(2)]
        if count == 0 or count > _UINT32_MAX or interval_us > _UINT32_MAX:
            raise _spec_error(spec, f"rate={value}: the interval must be from 1 us to {_UINT32_MAX} us")
    if bytes_per_sec > _UINT64_MAX // interval_us:
        raise _spec_error(
            spec,
            f"rate={value} overflows: {bytes_per_sec} bytes/s times {interval_us} us is more "
            f"than 2^64-1 = {_UINT64_MAX}",
        )
    return bytes_per_sec * interval_us // 1_000_000, interval_us


def _ip(spec: str, value: str) -> str:
    addresses = value.split()
    try:
        for address in addresses:
            ipaddress.ip_interface(address)
    except ValueError:
        raise _spec_error(spec, f"ip={value} is not an IP address (or a space-separated list of them)") from None
    if not addresses:
        raise _spec_error(spec, "ip= is empty: leave it out, or give an address")
    return " ".join(addresses)


def parse_vif_spec(spec: str, devid: int) -> VifSpec:
    """Parse one vif spec (xl-network-configuration(5)); ``devid`` is its index in the list.

    Raises :class:`ConfigError` naming the spec and the problem.
    """
    if not isinstance(spec, str):
        raise ConfigError(
            f'vif spec {format_value(spec)} is not a string: expected "key=value, ...", or "" for every default'
        )
    values: dict[str, str] = {}
    trusted = True
    for token in spec.split(","):
        token = token.strip(" \t\n")
        if not token:
            continue
        if token in ("trusted", "untrusted"):
            trusted = token == "trusted"
            continue
        key, eq, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise _spec_error(spec, f"{token!r} is not key=value (nor the flag trusted or untrusted)")
        if key not in _KEYS:
            raise _spec_error(spec, f"unknown key {key!r}: expected one of {', '.join(_KEYS)}, trusted, untrusted")
        values[key] = value
    if "vlan" in values:
        raise _spec_error(spec, "vlan: xenlike's bridge has no VLANs")
    if values.get("type", "vif") not in ("vif", "ioemu"):
        raise _spec_error(spec, f"type={values['type']} is unknown: expected vif or ioemu")
    backend = values.get("backend", "0")
    if backend not in ("0", "Domain-0"):
        raise _spec_error(spec, f"backend={backend}: xenlike runs its back-ends in dom0 (0 or Domain-0) only")
    mac = _mac(spec, values["mac"]) if "mac" in values else None
    mtu = _decimal(spec, "mtu", values["mtu"]) if "mtu" in values else 0
    mtu = mtu or DEFAULT_MTU  # libxl: 0 means the default
    if not 68 <= mtu <= 65535:
        raise _spec_error(spec, f"mtu={mtu} is outside 68..65535")
    if "devid" in values:
        devid = _decimal(spec, "devid", values["devid"])
    if not 0 <= devid < 1 << 31:
        raise _spec_error(spec, f"devid {devid} is outside 0..2147483647")
    rate = values.get("rate")
    per_interval, interval_us = parse_rate(spec, rate) if rate is not None else (0, 0)
    return VifSpec(
        devid=devid,
        mac=mac or random_mac(),
        bridge=_ifname(spec, "bridge", values.get("bridge", DEFAULT_BRIDGE)),
        vifname=_ifname(spec, "vifname", values["vifname"]) if "vifname" in values else None,
        ip=_ip(spec, values["ip"]) if "ip" in values else None,
        rate=rate,
        rate_bytes_per_interval=per_interval,
        rate_interval_us=interval_us,
        mtu=mtu,
        backend="0",
        trusted=trusted,
    )
