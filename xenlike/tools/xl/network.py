"""Virtual network interfaces (``tools/xl/xl_nic.c``): network-attach, network-detach, network-list."""

from __future__ import annotations

import argparse

from xenlike.tools.xl.utils import call
from xenlike.tools.xl_format import format_network_list

__all__ = ["main_network_attach", "main_network_detach", "main_network_list"]

DETACH_TIMEOUT_S = 60


def main_network_attach(args: argparse.Namespace) -> int:
    """xl network-attach DOMAIN [SPEC...]: hotplug a vif given in xl-network-configuration(5) syntax."""
    spec = ", ".join(args.spec)
    result = call(args, "network_attach", domain=args.domain, spec=spec)
    print(f"xenlike: attached vif {result['devid']} ({result['mac']}, {result['name']} in the guest) to {args.domain}")
    return 0


def main_network_detach(args: argparse.Namespace) -> int:
    """xl network-detach DOMAIN DEVID|MAC: close the vif with the front end, forcing it if the front end does not."""
    result = call(args, "network_detach", domain=args.domain, vif=args.vif, timeout=DETACH_TIMEOUT_S)
    print(f"xenlike: detached vif {result['vdev']} from {args.domain}" + (" (forced)" if result.get("forced") else ""))
    return 0


def main_network_list(args: argparse.Namespace) -> int:
    """xl network-list DOMAIN...: ``Idx BE Mac Addr. handle state evt-ch tx-/rx-ring-ref BE-path``."""
    rows = []
    for domain in args.domains:
        rows.extend(call(args, "network_list", domain=domain))
    print(format_network_list(rows))
    return 0
