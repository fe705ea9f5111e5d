"""How two hosts' toolstacks carry a migration stream: zmq over tcp, authenticated by the receiver's key.

``xl migrate`` pipes the stream over ssh to ``xl migrate-receive``; xenlike's
toolstacks speak to each other directly. The receiving host listens
(``xenlike up --listen ADDR:PORT``) with a ROUTER socket and a key of its own
(:func:`new_key`, shown by ``xenlike info``); the sender connects a DEALER. Each
message is a zmq multipart message whose first frame is its kind::

    sender                                  receiver
    HELLO   {"domain": name}          ->
                                      <-    CHALLENGE  nonce (32 random bytes)
    AUTH    HMAC(key, "xenlike-migrate" + nonce)  ->
                                      <-    OK {"window": w} | REFUSED reason
    then, each [kind, seq u64, body, mac] with mac = HMAC(key, nonce + kind + seq + body):
    STREAM  the migration stream's octets, in order, w messages ahead at most
                                      <-    CREDIT {"chunks": n}, as the target applies them
    ROUND   {"round": n}: the records before it are a whole round; answer when applied
                                      <-    ROUND_OK {"round": n} | REFUSED reason
    (the stream's END record) ...     <-    BUILDING {}, at once and every BUILDING_INTERVAL_S while it builds
                                      <-    DONE {"domid": id} (built, paused) | REFUSED reason
    GO      {}: the sender let its copy go   <-  STARTED {"domid": id} (unpaused)
    ABORT   reason: forget it all

The stream is flow-controlled as a TCP pipe is by its window: OK grants the
sender ``w`` STREAM messages (:data:`STREAM_WINDOW`), and each CREDIT grants ``n``
more, sent as the target's parser takes them. So the target never holds more
than ``w`` chunks that it has not applied, however much faster the network is
than its parser; a sender that goes beyond what it was granted is REFUSED. A
sender without credit waits for a CREDIT as it waits for any answer.

The receiver checks the key before it reads a byte of the stream, and every
later message's mac and sequence number before it applies it; anything else is
REFUSED and the session forgotten, with nothing half-built left. As libxl's
``migrate_receiver_ready``/``migrate_permission_to_go``, the target builds the
domain paused and runs it only on GO, so that a sender that gave up (and resumed
its guest) never finds a second copy running; without GO in time, the target
destroys its copy. BUILDING tells a build that takes long from a target that
stopped: the sender gives up on a target silent for longer than a step may take,
however long the build is allowed. ROUND 0 follows
the stream's static records (``STATIC_DATA_END``): its ROUND_OK says the target
can take the domain (its name is free, its disks are reachable, the memory is
there) before any page moves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from typing import Any

__all__ = [
    "HELLO",
    "CHALLENGE",
    "AUTH",
    "OK",
    "REFUSED",
    "STREAM",
    "CREDIT",
    "ROUND",
    "ROUND_OK",
    "BUILDING",
    "BUILDING_INTERVAL_S",
    "DONE",
    "GO",
    "STARTED",
    "ABORT",
    "KEY_BYTES",
    "STREAM_CHUNK",
    "STREAM_WINDOW",
    "MAX_FRAME",
    "new_key",
    "auth_reply",
    "check_auth",
    "seal",
    "unseal",
    "ChannelError",
    "parse_address",
    "encode",
    "decode",
]

HELLO = b"HELLO"
CHALLENGE = b"CHALLENGE"
AUTH = b"AUTH"
OK = b"OK"
REFUSED = b"REFUSED"
STREAM = b"STREAM"
CREDIT = b"CREDIT"
ROUND = b"ROUND"
ROUND_OK = b"ROUND_OK"
BUILDING = b"BUILDING"
DONE = b"DONE"
GO = b"GO"
STARTED = b"STARTED"
ABORT = b"ABORT"

KEY_BYTES = 32
STREAM_CHUNK = 1 << 20  # octets of stream one STREAM message carries, at most
STREAM_WINDOW = 32  # STREAM messages a target holds unapplied at most, per migration (32 MiB)
MAX_FRAME = STREAM_CHUNK + (64 << 10)  # the largest frame a receiver takes (ZMQ_MAXMSGSIZE): a chunk, and room
BUILDING_INTERVAL_S = 2.0  # how often a target that builds says so; a sender waits several times as long
_AUTH_CONTEXT = b"xenlike-migrate"
_SEQ = struct.Struct(">Q")


class ChannelError(ValueError):
    """A message that fails its check (mac, order, shape); the message says which."""


def new_key() -> str:
    """A receiving host's key: 32 random bytes, as hex."""
    return secrets.token_hex(KEY_BYTES)


def _key_bytes(key: str) -> bytes:
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raise ChannelError("the key is not hex (`xenlike info` on the receiving host shows it)") from None
    if len(raw) != KEY_BYTES:
        raise ChannelError(f"the key is {len(raw)} bytes; a migration key is {KEY_BYTES}")
    return raw


def auth_reply(key: str, nonce: bytes) -> bytes:
    """What the sender answers a CHALLENGE with."""
    return hmac.new(_key_bytes(key), _AUTH_CONTEXT + nonce, hashlib.sha256).digest()


def check_auth(key: str, nonce: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(auth_reply(key, nonce), answer)


def _mac(key: str, nonce: bytes, kind: bytes, seq: int, body: bytes) -> bytes:
    h = hmac.new(_key_bytes(key), nonce, hashlib.sha256)
    h.update(kind)
    h.update(_SEQ.pack(seq))
    h.update(body)
    return h.digest()


def seal(key: str, nonce: bytes, kind: bytes, seq: int, body: bytes) -> list[bytes]:
    """The frames of one message after the handshake."""
    return [kind, _SEQ.pack(seq), body, _mac(key, nonce, kind, seq, body)]


def unseal(key: str, nonce: bytes, frames: list[bytes], expected_seq: int) -> tuple[bytes, bytes]:
    """(kind, body) of a message whose mac and sequence number are right; ChannelError otherwise."""
    if len(frames) != 4 or len(frames[1]) != _SEQ.size:
        raise ChannelError(f"a message of {len(frames)} frames is not [kind, seq, body, mac]")
    kind, raw_seq, body, mac = frames
    (seq,) = _SEQ.unpack(raw_seq)
    if not hmac.compare_digest(_mac(key, nonce, kind, seq, body), mac):
        raise ChannelError(f"message {seq} ({kind.decode(errors='replace')}) fails its mac")
    if seq != expected_seq:
        raise ChannelError(f"message {seq} came where {expected_seq} was due")
    return kind, body


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def decode(body: bytes) -> Any:
    try:
        return json.loads(body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise ChannelError(f"a control message is not JSON: {str(exc)[:80]}") from None


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``127.0.0.1:8002``) as (addr, port); ValueError naming what is wrong."""
    addr, sep, port = text.rpartition(":")
    if not sep or not addr or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT (for example 127.0.0.1:8002)")
    return addr, int(port)
