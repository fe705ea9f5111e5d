"""Forwards from the host to a guest: a domain config's ``ports``, as ``docker compose``'s ``ports``.

    ports = [ "8080:80", "127.0.0.1:8443:443/tcp" ]

Each entry is ``[127.0.0.1:]HOST:GUEST[/tcp]``: dom0 listens on
``127.0.0.1:HOST`` in the host's network namespace and relays every
connection to port ``GUEST`` of the domain's first vif. Only TCP, and only the
loopback address: nothing of the host's own network is offered to a guest, and
a guest is reached from nowhere but this host.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from xenlike.tools.config.xlcfg import ConfigError, format_value

__all__ = ["PortForward", "parse_port_forward", "LOOPBACK"]

LOOPBACK = "127.0.0.1"
_FORWARD = re.compile(r"(?:(?P<address>[0-9.]+):)?(?P<host>[0-9]+):(?P<guest>[0-9]+)(?:/(?P<protocol>[a-z]+))?")


@dataclass(frozen=True)
class PortForward:
    """``127.0.0.1:host_port`` on the host relayed to ``guest_port`` of the guest, over TCP."""

    host_port: int
    guest_port: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{LOOPBACK}:{self.host_port}->{self.guest_port}/tcp"


def _port(spec: str, what: str, text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"port forward {format_value(spec)}: the {what} port {port} is outside 1..65535")
    return port


def parse_port_forward(spec: Any) -> PortForward:
    """One ``ports`` entry; ConfigError naming the entry and what is wrong with it."""
    if not isinstance(spec, str):
        raise ConfigError(f'port forward {format_value(spec)} is not a string like "8080:80"')
    match = _FORWARD.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(
            f'port forward {format_value(spec)}: expected "HOST:GUEST" '
            '(as "8080:80"; the host port is not chosen for you)'
        )
    address, protocol = match["address"], match["protocol"]
    if address is not None and address != LOOPBACK:
        raise ConfigError(
            f"port forward {format_value(spec)}: dom0 listens on {LOOPBACK} only; "
            f"a guest is reachable from this host alone (drop {address}:)"
        )
    if protocol not in (None, "tcp"):
        raise ConfigError(f"port forward {format_value(spec)}: only tcp is forwarded, not {protocol}")
    return PortForward(_port(spec, "host", match["host"]), _port(spec, "guest", match["guest"]))
