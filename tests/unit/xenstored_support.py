"""Helpers the xenstored tests share: send one request, expect a reply or an error."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

from dom0.xenstored import Connection, Xenstored
from xenlike.public.xs_wire import XsdSockmsgType, join_strings

T = XsdSockmsgType


def fields(*items: bytes | str) -> bytes:
    """A payload of nul-terminated strings."""
    return join_strings(items)


def call(d: Xenstored, conn: Connection, msg_type: int, payload: bytes = b"", tx: int = 0) -> tuple[int, bytes]:
    """Send one request; the reply's type and payload (it must echo the transaction id)."""
    out = d.handle(conn, msg_type, 3, tx, payload)
    assert out[0].tx_id == tx
    return out[0].msg_type, out[0].payload


def ok(d: Xenstored, conn: Connection, msg_type: int, payload: bytes = b"", tx: int = 0) -> bytes:
    """Send one request that must succeed; its reply payload."""
    got, payload_out = call(d, conn, msg_type, payload, tx)
    assert got == msg_type, payload_out
    return payload_out


def err(d: Xenstored, conn: Connection, msg_type: int, payload: bytes = b"", tx: int = 0) -> str:
    """Send one request that must fail; the errno name of the ERROR reply."""
    got, payload_out = call(d, conn, msg_type, payload, tx)
    assert got == T.ERROR, payload_out
    assert payload_out.endswith(b"\0")
    return payload_out[:-1].decode()


def two_guests(name: Callable[[int], bytes] = lambda domid: f"guest{domid}".encode()) -> SimpleNamespace:
    """A daemon with guests 1 and 2 as libxl lays them out: a home [n0, r<id>] with a
    ``name`` and a guest-owned ``data``. Returns d, dom0, d1, d2 (their ring connections)."""
    d = Xenstored()
    dom0 = d.connect(0)
    for domid in (1, 2):
        home = f"/local/domain/{domid}"
        ok(d, dom0, T.MKDIR, fields(home))
        ok(d, dom0, T.SET_PERMS, fields(home, "n0", f"r{domid}"))
        ok(d, dom0, T.WRITE, fields(f"{home}/name") + name(domid))
        ok(d, dom0, T.MKDIR, fields(f"{home}/data"))
        ok(d, dom0, T.SET_PERMS, fields(f"{home}/data", f"n{domid}"))
    return SimpleNamespace(d=d, dom0=dom0)


def introduce_both(world: SimpleNamespace) -> SimpleNamespace:
    """Introduce guests 1 and 2 and drop the events that fired."""
    world.d1 = world.d.introduce_domain(1)
    world.d2 = world.d.introduce_domain(2)
    world.d.drain()
    return world
