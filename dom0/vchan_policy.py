"""dom0's vchan policy: the xenstore directories that let one domU connect to another's vchan port.

A server's config lists the pairs it accepts (``vchan = ["client:5000"]``,
:mod:`xenlike.tools.config.vchan`). Whenever a domain is created, the toolstack
makes, for every pair whose two domains now run, the nodes of
:mod:`xenlike.public.vchan`'s contract: ``data/vchan`` and ``data/vchan/<client>``
under the server's home, owned by dom0; ``data/vchan/<client>/<port>``, owned by
the server and readable by the client, where the server publishes its ring and
port; and each side's ``vchan/<peer-name>`` (the peer's domid, so a guest can
name its peer). When a domain goes, the directories that named it go too.

The guests cannot widen this: ``data/vchan`` is dom0's, so a server writes only
inside the directories made for it, and a client finds only those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from xenlike.public.vchan import peer_name_path, port_path, vchan_dir
from xenlike.public.xs_wire import XsError
from xenlike.tools.config.vchan import parse_vchan_rule

if TYPE_CHECKING:
    from .builder import BuiltDomain

__all__ = ["VchanPolicy"]

log = logging.getLogger("dom0.vchan")


class _Xenstore(Protocol):
    def write(self, path: str, value: bytes | str, perms: Iterable[str] | None = None, tx: int = 0) -> None: ...

    def rm(self, path: str, tx: int = 0) -> None: ...


class VchanPolicy:
    """Keeps the vchan directories true to the running domains' configs; ``xs`` is dom0's xenstore.

    What a create or a destroy costs is what the pairs involving that domain
    cost, whatever else runs: the servers' rules are indexed by the client
    name they allow, and each domain's allowed pairs by domid.
    """

    def __init__(self, xs: _Xenstore) -> None:
        self.xs = xs
        self._wanted: dict[str, list[tuple[BuiltDomain, int]]] = {}  # client name -> (server, port)
        self._pairs: dict[int, set[tuple[int, int]]] = {}  # domid -> the (server, client) pairs it is in

    def domain_added(self, new: BuiltDomain, by_name: Mapping[str, BuiltDomain]) -> None:
        """``new`` was created: its own ``data/vchan`` (dom0's), and every pair it completes.

        ``by_name`` maps the running domains' names to them (``new`` among them).
        """
        server = new.domid
        self._rm(vchan_dir(server))  # whatever the guest might have made there first is not the policy
        self.xs.write(vchan_dir(server), "", perms=["n0", f"r{server}"])
        for rule in map(parse_vchan_rule, new.config.get("vchan") or []):
            self._wanted.setdefault(rule.client, []).append((new, rule.port))
            client = by_name.get(rule.client)
            if client is not None and client.domid != server:
                self._allow(new, client, rule.port)
        for server_dom, port in self._wanted.get(new.name, []):
            if server_dom.domid != new.domid and by_name.get(server_dom.name) is server_dom:
                self._allow(server_dom, new, port)

    def domain_removed(self, gone: BuiltDomain) -> None:
        """``gone`` was destroyed: its rules, and the directories under other domains that name it."""
        for name, wanted in list(self._wanted.items()):
            kept = [(server, port) for server, port in wanted if server is not gone]
            if kept:
                self._wanted[name] = kept
            else:
                del self._wanted[name]
        for pair in self._pairs.pop(gone.domid, set()):
            other = pair[1] if pair[0] == gone.domid else pair[0]
            self._pairs.get(other, set()).discard(pair)
            self._rm(f"{vchan_dir(other)}/{gone.domid}")
            self._rm(peer_name_path(other, gone.name))

    def _allow(self, server: BuiltDomain, client: BuiltDomain, port: int) -> None:
        s, c = server.domid, client.domid
        for domid in (s, c):
            self._pairs.setdefault(domid, set()).add((s, c))
        self.xs.write(f"{vchan_dir(s)}/{c}", "", perms=["n0", f"r{s}"])
        self.xs.write(port_path(s, c, port), "", perms=[f"n{s}", f"r{c}"])
        self.xs.write(peer_name_path(c, server.name), str(s), perms=["n0", f"r{c}"])
        self.xs.write(peer_name_path(s, client.name), str(c), perms=["n0", f"r{s}"])
        log.info("%s may connect to vchan port %d of %s", client.label, port, server.label)

    def _rm(self, path: str) -> None:
        try:
            self.xs.rm(path)
        except XsError:
            pass
