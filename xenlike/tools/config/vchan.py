"""Who may connect to a domain's vchans: the ``vchan`` key of a server's domain config.

    name = "server"
    vchan = [ "client:5000", "backup:5001" ]

Each entry is ``<client-name>:<port>``: the domain named ``client-name`` may
connect to this domain's vchan port ``port`` (1..65535). The key is xenlike's
(xl.cfg has none: in Xen the toolstack or an XSM policy decides, as Qubes'
qrexec policy does); it is read by dom0's toolstack, which makes the xenstore
directories of :mod:`xenlike.public.vchan` for every pair whose two domains run,
and removes them when one goes. A guest cannot add a pair: the policy is the
config's alone.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from xenlike.tools.config.xlcfg import ConfigError

__all__ = ["VchanRule", "parse_vchan_rule", "parse_vchan_rules"]

_RULE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):([0-9]{1,5})")


class VchanRule(NamedTuple):
    """One allowed pair: the client's name and the server's port."""

    client: str
    port: int

    def __str__(self) -> str:
        return f"{self.client}:{self.port}"


def parse_vchan_rule(spec: Any) -> VchanRule:
    """``"client-name:port"`` as a :class:`VchanRule`; ConfigError saying what is wrong."""
    if not isinstance(spec, str):
        raise ConfigError(f'{spec!r} is not a string like "client-name:5000"')
    match = _RULE.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(f'{spec!r} is not "client-name:port" (a domain name, a colon and a port number)')
    client, port = match.group(1), int(match.group(2))
    if client.isdigit():
        raise ConfigError(f"{spec!r} names a domid; name the client domain (domids change when it restarts)")
    if client == "Domain-0":
        raise ConfigError(f"{spec!r}: dom0 is not a vchan peer in xenlike (vchans join two domUs)")
    if not 1 <= port <= 65535:
        raise ConfigError(f"{spec!r}: port {port} is outside 1..65535")
    return VchanRule(client, port)


def parse_vchan_rules(value: Any, own_name: str) -> list[str]:
    """The ``vchan`` list checked, each entry as ``"client:port"``; no duplicates, not the domain itself."""
    if not isinstance(value, list):
        raise ConfigError('a [list] of "client-name:port" strings')
    rules: list[str] = []
    for index, spec in enumerate(value):
        try:
            rule = parse_vchan_rule(spec)
        except ConfigError as exc:
            raise ConfigError(f"entry {index}: {exc}") from None
        if rule.client == own_name:
            raise ConfigError(f"entry {index}: {spec!r} names this domain; a vchan joins two domains")
        if str(rule) in rules:
            raise ConfigError(f"entry {index}: {spec!r} is listed twice")
        rules.append(str(rule))
    return rules
