"""Network interface specs, as xl-network-configuration(5) writes them.

    vif = [ "mac=00:16:3e:01:02:03, bridge=xenbr0", "" ]

Every key is optional (``""`` means all defaults); the device id is the entry's
index. A MAC left out is random inside Xen's OUI ``00:16:3e``.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Any

from .xlcfg import ConfigError

__all__ = ["VifSpec", "parse_vif_spec"]

XEN_OUI = (0x00, 0x16, 0x3E)
_KEYS = ("mac", "bridge", "ip", "rate", "mtu", "backend", "vifname", "script", "type", "model", "devid", "gatewaydev", "vlan")


@dataclass(frozen=True)
class VifSpec:
    devid: int
    mac: str
    bridge: str = "xenbr0"
    ip: str | None = None
    rate: str | None = None
    mtu: int = 1500
    backend: str = "0"
    vifname: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VifSpec":
        return cls(**data)


def random_mac() -> str:
    """A MAC in the Xen OUI (unicast, globally administered, as libxl makes them)."""
    tail = [random.randrange(256) for _ in range(3)]
    return ":".join(f"{b:02x}" for b in (*XEN_OUI, *tail))


def parse_vif_spec(spec: str, devid: int) -> VifSpec:
    """Parse one vif spec; ConfigError names the spec and the problem."""
    if not isinstance(spec, str):
        raise ConfigError(f"vif spec {spec!r} is not a string")
    fields: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            if item in ("trusted", "untrusted"):
                continue
            raise ConfigError(f"vif spec {spec!r}: {item!r} is not key=value")
        if key.strip() not in _KEYS:
            raise ConfigError(f"vif spec {spec!r}: unknown key {key.strip()!r} (known: {', '.join(_KEYS)})")
        fields[key.strip()] = value.strip()
    mac = fields.get("mac") or random_mac()
    if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", mac) or int(mac[:2], 16) & 1:
        raise ConfigError(f"vif spec {spec!r}: mac {mac!r} is not a unicast MAC like 00:16:3e:12:34:56")
    try:
        mtu = int(fields.get("mtu", 1500))
    except ValueError:
        raise ConfigError(f"vif spec {spec!r}: mtu {fields['mtu']!r} is not a number") from None
    if not 68 <= mtu <= 65535:
        raise ConfigError(f"vif spec {spec!r}: mtu {mtu} is outside 68..65535")
    return VifSpec(
        devid=int(fields.get("devid", devid)),
        mac=mac.lower(),
        bridge=fields.get("bridge", "xenbr0"),
        ip=fields.get("ip"),
        rate=fields.get("rate"),
        mtu=mtu,
        backend=fields.get("backend", "0"),
        vifname=fields.get("vifname"),
    )
