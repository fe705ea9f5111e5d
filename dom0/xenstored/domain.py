"""What xenstored knows about an introduced domain (tools/xenstored/domain.c ``struct domain``).

A domain becomes known to xenstored when the toolstack INTRODUCEs it and is
forgotten on RELEASE. While known it has one ring connection and a
``server_features`` word (GET_FEATURE/SET_FEATURE) that the transport
publishes in the domain's ``xenstore_domain_interface`` page.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenlike.public.xen import DOMID_FIRST_RESERVED

from .connection import Connection

__all__ = ["Domain", "is_real_domid"]


def is_real_domid(domid: int) -> bool:
    """True for ids that can name an actual domain (not the special DOMID_* values)."""
    return 0 <= domid < DOMID_FIRST_RESERVED


@dataclass(slots=True)
class Domain:
    """An introduced domain: its ring connection and negotiated features."""

    domid: int
    conn: Connection
    features: int
