"""Helpers the xenstored tests share: send one request, expect a reply or an error."""

from __future__ import annotations

from dom0.xenstored import Connection, Xenstored
from xenlike.xs_wire import XsdSockmsgType, join_strings

T = XsdSockmsgType


def fields(*items: bytes | str) -> bytes:
    """A payload of nul-terminated strings."""
    return join_strings(items)


def call(d: Xenstored, conn: Connection, msg_type: int, payload: bytes, tx: int = 0) -> tuple[int, bytes]:
    """Send one request; the reply's type and payload (it must echo the transaction id)."""
    out = d.handle(conn, msg_type, 3, tx, payload)
    assert out[0].tx_id == tx
    return out[0].msg_type, out[0].payload


def ok(d: Xenstored, conn: Connection, msg_type: int, payload: bytes, tx: int = 0) -> bytes:
    """Send one request that must succeed; its reply payload."""
    got, payload_out = call(d, conn, msg_type, payload, tx)
    assert got == msg_type, payload_out
    return payload_out


def err(d: Xenstored, conn: Connection, msg_type: int, payload: bytes, tx: int = 0) -> str:
    """Send one request that must fail; the errno name of the ERROR reply."""
    got, payload_out = call(d, conn, msg_type, payload, tx)
    assert got == T.ERROR, payload_out
    return payload_out[:-1].decode()
