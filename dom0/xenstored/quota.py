"""Per-domain xenstore quotas.

Mirrors the hard quotas of tools/xenstored/domain.c (``hard_quotas[]``) and the
GET_QUOTA/SET_QUOTA wire commands: a global set of limits, optionally
overridden per domain. Quotas bind unprivileged connections only; dom0 and the
local tool sockets are never limited.

Which error a breach gives follows C xenstored:

============================  =======================  ==========
quota (wire name)             limits                   error
============================  =======================  ==========
``nodes``                     nodes owned by a domain  ``ENOSPC``
``watches``                   watches of a domain      ``E2BIG``
``outstanding``               replies a domain has     (requests
                              not taken off its ring   wait unread)
``transactions``              open transactions        ``ENOSPC``
``transaction-nodes``         nodes one transaction    ``ENOSPC``
                              may touch
``node-permissions``          entries in SET_PERMS     ``ENOSPC``
``path-max``                  path length below        ``EINVAL``
                              ``/local/domain/<id>/``
``node-size``                 header + permissions +   ``ENOSPC``
                              value + child names
============================  =======================  ==========

Each limit is the largest allowed count or size: a domain may own exactly
``nodes`` nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from xenlike.public.xs_wire import XENSTORE_REL_PATH_MAX

__all__ = ["Quotas", "QUOTA_NAMES", "QuotaTable"]


@dataclass(frozen=True, slots=True)
class Quotas:
    """A full set of limits; the defaults are C xenstored's."""

    nodes: int = 1000
    watches: int = 128
    outstanding: int = 20
    transactions: int = 10
    transaction_nodes: int = 1024
    node_permissions: int = 5
    path_max: int = XENSTORE_REL_PATH_MAX
    node_size: int = 2048

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"quota {f.name} must be a non-negative integer, not {value!r}")


#: Wire name (GET_QUOTA/SET_QUOTA, ``xenstored -Q``) -> :class:`Quotas` field,
#: in the order C xenstored lists them.
QUOTA_NAMES: dict[str, str] = {
    "nodes": "nodes",
    "watches": "watches",
    "outstanding": "outstanding",
    "transactions": "transactions",
    "transaction-nodes": "transaction_nodes",
    "node-permissions": "node_permissions",
    "path-max": "path_max",
    "node-size": "node_size",
}


class QuotaTable:
    """The global quotas plus per-domain overrides of single quotas."""

    def __init__(self, defaults: Quotas | None = None) -> None:
        self.global_quotas = defaults if defaults is not None else Quotas()
        self._overrides: dict[int, dict[str, int]] = {}

    def for_domain(self, domid: int) -> Quotas:
        """The limits that apply to ``domid``: its overrides, else the global values."""
        overrides = self._overrides.get(domid)
        if not overrides:
            return self.global_quotas
        return replace(self.global_quotas, **overrides)

    def get(self, name: str, domid: int | None = None) -> int:
        """One quota by wire name, global or for ``domid``; ``KeyError`` if unknown."""
        field = QUOTA_NAMES[name]
        quotas = self.global_quotas if domid is None else self.for_domain(domid)
        value: int = getattr(quotas, field)
        return value

    def set(self, name: str, value: int, domid: int | None = None) -> None:
        """Change one quota by wire name, globally or for ``domid`` only.

        A domain follows later global changes of every quota it has not
        overridden itself.
        """
        field = QUOTA_NAMES[name]
        if domid is None:
            self.global_quotas = replace(self.global_quotas, **{field: value})
        else:
            replace(self.global_quotas, **{field: value})  # validates the value
            self._overrides.setdefault(domid, {})[field] = value

    def forget(self, domid: int) -> None:
        """Drop the overrides of a domain that went away."""
        self._overrides.pop(domid, None)
