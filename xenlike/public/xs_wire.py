"""The xenstore wire protocol: the ABI shared by xenstored and its clients.

This module mirrors ``xen/include/public/io/xs_wire.h`` and the payload rules of
``docs/misc/xenstore.txt``:

* every message, in either direction, is a 16-byte ``struct xsd_sockmsg``
  header ``{type, req_id, tx_id, len}`` in native byte order, followed by
  ``len`` payload bytes, ``len <= XENSTORE_PAYLOAD_MAX``;
* payloads are nul-terminated strings (``WRITE`` carries raw value bytes after
  its path, ``READ`` replies with raw bytes);
* errors come back as type ``ERROR`` with the errno *name* as payload, e.g.
  ``b"ENOENT\\0"``;
* paths use ASCII alphanumerics and ``-/_@``; relative paths name nodes under
  ``/local/domain/<domid>``;
* node permissions travel as ``w<domid>``, ``r<domid>``, ``b<domid>`` and
  ``n<domid>`` strings.

The ``xenstore_domain_interface`` page that carries the byte rings between a
domain and xenstored sits here too, next to the messages it carries, as in
xs_wire.h: its layout and :class:`XenstoreInterface`, the page's two
:class:`~xenlike.public.ring.ByteRing` halves. Nothing here performs I/O or
signals an event channel.
"""

from __future__ import annotations

import errno
import re
import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum, IntFlag
from typing import NamedTuple

from xenlike.public.ring import ByteRing, PageLayout

__all__ = [
    "XsdSockmsgType",
    "XS_TYPE_COUNT",
    "XsWatchType",
    "XSD_ERRORS",
    "XSD_ERRNO",
    "XsError",
    "XsWireError",
    "XENSTORE_PAYLOAD_MAX",
    "XENSTORE_ABS_PATH_MAX",
    "XENSTORE_REL_PATH_MAX",
    "XENSTORE_RING_SIZE",
    "XENSTORE_DOMAIN_INTERFACE",
    "XENSTORE_REQ_OFFSET",
    "XENSTORE_RSP_OFFSET",
    "XENSTORE_REQ_CONS_OFFSET",
    "XENSTORE_REQ_PROD_OFFSET",
    "XENSTORE_RSP_CONS_OFFSET",
    "XENSTORE_RSP_PROD_OFFSET",
    "XENSTORE_SERVER_FEATURES_OFFSET",
    "XENSTORE_CONNECTION_OFFSET",
    "XENSTORE_ERROR_OFFSET",
    "XENSTORE_EVTCHN_PORT_OFFSET",
    "XENSTORE_DOMAIN_INTERFACE_SIZE",
    "mask_xenstore_idx",
    "XENSTORE_SERVER_FEATURE_RECONNECTION",
    "XENSTORE_SERVER_FEATURE_ERROR",
    "XENSTORE_SERVER_FEATURE_WATCHDEPTH",
    "XENSTORE_SERVER_FEATURE_DOMID_ANY",
    "XENSTORE_CONNECTED",
    "XENSTORE_RECONNECT",
    "XENSTORE_ERROR_NONE",
    "XENSTORE_ERROR_COMM",
    "XENSTORE_ERROR_RINGIDX",
    "XENSTORE_ERROR_PROTO",
    "describe_ring_error",
    "XenstoreInterface",
    "XSD_SOCKMSG",
    "XSD_SOCKMSG_SIZE",
    "XsMessage",
    "pack_msg",
    "unpack_header",
    "MessageReader",
    "OK_PAYLOAD",
    "split_strings",
    "one_arg",
    "join_strings",
    "error_payload",
    "parse_error_payload",
    "VALID_PATH_CHARS",
    "SPECIAL_INTRODUCE_DOMAIN",
    "SPECIAL_RELEASE_DOMAIN",
    "home_path",
    "is_special_path",
    "is_relative_path",
    "validate_path",
    "canonicalize",
    "XsPerm",
    "Permission",
    "parse_perm",
    "format_perm",
    "parse_perms",
    "perms_payload",
]


class XsdSockmsgType(IntEnum):
    """``enum xsd_sockmsg_type`` (xs_wire.h), one value per request type.

    ``WATCH_EVENT`` and ``ERROR`` only travel from xenstored to clients.
    ``RESTRICT`` (20) was removed from Xen and is kept here only so every
    value in 0..26 has a name: xenstored answers it with ``ENOSYS``.
    """

    CONTROL = 0
    DEBUG = 0  # the old name of CONTROL, still accepted by xs_wire.h users
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    INVALID = 0xFFFF


#: ``XS_TYPE_COUNT``: one past the highest defined request type.
XS_TYPE_COUNT = 27


class XsWatchType(IntEnum):
    """``enum xs_watch_type``: field indexes of a WATCH_EVENT payload."""

    PATH = 0
    TOKEN = 1


#: The ``xsd_errors[]`` table of xs_wire.h, in its order. Only these names may
#: appear in an ERROR payload.
XSD_ERRORS: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)

#: errno name -> the host's errno number, as xenbus clients convert them.
XSD_ERRNO: dict[str, int] = {name: getattr(errno, name) for name in XSD_ERRORS}

# --- Limits (xs_wire.h) -------------------------------------------------------

#: Maximum payload length in either direction; violating it kills the connection.
XENSTORE_PAYLOAD_MAX = 4096
#: Maximum length of an absolute path.
XENSTORE_ABS_PATH_MAX = 3072
#: Maximum length of a path relative to a domain's home.
XENSTORE_REL_PATH_MAX = 2048

# --- struct xenstore_domain_interface (xs_wire.h, xenstore-ring.txt) ---------

XENSTORE_RING_SIZE = 1024

#: ``struct xenstore_domain_interface``: one page shared by a domain and xenstored.
#: ``req`` carries guest->xenstored bytes, ``rsp`` xenstored->guest; the fields after
#: ``rsp_prod`` came with the reconnection and error extensions.
XENSTORE_DOMAIN_INTERFACE = PageLayout(
    "xenstore_domain_interface",
    [
        ("req", f"{XENSTORE_RING_SIZE}s"),
        ("rsp", f"{XENSTORE_RING_SIZE}s"),
        ("req_cons", "I"),
        ("req_prod", "I"),
        ("rsp_cons", "I"),
        ("rsp_prod", "I"),
        ("server_features", "I"),
        ("connection", "I"),
        ("error", "I"),
        ("evtchn_port", "I"),
    ],
)
XENSTORE_REQ_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("req")
XENSTORE_RSP_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("rsp")
XENSTORE_REQ_CONS_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("req_cons")
XENSTORE_REQ_PROD_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("req_prod")
XENSTORE_RSP_CONS_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("rsp_cons")
XENSTORE_RSP_PROD_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("rsp_prod")
XENSTORE_SERVER_FEATURES_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("server_features")
XENSTORE_CONNECTION_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("connection")
XENSTORE_ERROR_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("error")
XENSTORE_EVTCHN_PORT_OFFSET = XENSTORE_DOMAIN_INTERFACE.offsetof("evtchn_port")
#: Bytes of the page used by the interface (the page itself is 4 KiB).
XENSTORE_DOMAIN_INTERFACE_SIZE = XENSTORE_DOMAIN_INTERFACE.size


def mask_xenstore_idx(idx: int) -> int:
    """``MASK_XENSTORE_IDX``: the ring slot of a free-running 32-bit index."""
    return idx & (XENSTORE_RING_SIZE - 1)


#: ``server_features`` bits.
XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_SERVER_FEATURE_WATCHDEPTH = 4
XENSTORE_SERVER_FEATURE_DOMID_ANY = 8

#: ``connection`` field values.
XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

#: ``error`` field values (docs/misc/xenstore-ring.txt, "The connection error feature"): set by
#: xenstored, once the feature is offered, when it stops serving a ring, and only for diagnosis.
XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3

_ERROR_MEANINGS = {
    XENSTORE_ERROR_COMM: ("XENSTORE_ERROR_COMM", "the event channel does not work"),
    XENSTORE_ERROR_RINGIDX: ("XENSTORE_ERROR_RINGIDX", "ring indices that cannot be right"),
    XENSTORE_ERROR_PROTO: ("XENSTORE_ERROR_PROTO", "a message longer than the protocol allows"),
}


def describe_ring_error(code: int) -> str:
    """An ``error`` field's value in words, then its name, e.g. ``"... (XENSTORE_ERROR_RINGIDX)"``.

    A value the table does not know is named as a number (new values may come without a new feature bit).
    """
    name, meaning = _ERROR_MEANINGS.get(code, (f"error {code}", "an error this client does not know"))
    return f"{meaning} ({name})"


class XenstoreInterface:
    """``struct xenstore_domain_interface`` over a mapped page: its two byte rings.

    The guest produces into :attr:`req` and consumes :attr:`rsp`; xenstored does the
    reverse. Whoever moves an index signals the event channel
    (:class:`xenlike.kernel.byte_channel.ByteChannel` does both halves). The
    fields after the rings are read with one aligned 32-bit load each.
    """

    def __init__(self, page: memoryview) -> None:
        layout = XENSTORE_DOMAIN_INTERFACE
        self.req = ByteRing(
            page, XENSTORE_REQ_OFFSET, XENSTORE_RING_SIZE, layout.word("req_cons"), layout.word("req_prod")
        )
        self.rsp = ByteRing(
            page, XENSTORE_RSP_OFFSET, XENSTORE_RING_SIZE, layout.word("rsp_cons"), layout.word("rsp_prod")
        )
        self._words = page[: layout.size].cast("I")

    @property
    def server_features(self) -> int:
        """``XENSTORE_SERVER_FEATURE_*`` bits xenstored offers."""
        return self._words[XENSTORE_DOMAIN_INTERFACE.word("server_features")]

    @property
    def connection(self) -> int:
        """``XENSTORE_CONNECTED`` or ``XENSTORE_RECONNECT``."""
        return self._words[XENSTORE_DOMAIN_INTERFACE.word("connection")]

    @property
    def error(self) -> int:
        """``XENSTORE_ERROR_*``: why xenstored stopped serving the ring, if it did."""
        return self._words[XENSTORE_DOMAIN_INTERFACE.word("error")]

    @property
    def evtchn_port(self) -> int:
        """The guest's port of the xenstore event channel, when the builder publishes it here."""
        return self._words[XENSTORE_DOMAIN_INTERFACE.word("evtchn_port")]

    def publish_server_features(self, features: int) -> None:
        """xenstored's side: offer ``features`` (``XENSTORE_SERVER_FEATURE_*``) in the page."""
        self._words[XENSTORE_DOMAIN_INTERFACE.word("server_features")] = features

    def set_error(self, code: int) -> None:
        """xenstored's side: say why it stopped serving this ring (``XENSTORE_ERROR_*``)."""
        self._words[XENSTORE_DOMAIN_INTERFACE.word("error")] = code

    def release(self) -> None:
        """Drop the views of the page (before unmapping it)."""
        self.req.release()
        self.rsp.release()
        self._words.release()


# --- Errors -------------------------------------------------------------------


class XsError(Exception):
    """A xenstore request failed with one of the :data:`XSD_ERRORS` names.

    ``errno_name`` is what goes on the wire; ``errno`` is the host number.
    """

    def __init__(self, errno_name: str, message: str | None = None) -> None:
        if errno_name not in XSD_ERRNO:
            raise ValueError(f"{errno_name!r} is not an xs_wire.h error name")
        self.errno_name = errno_name
        self.errno = XSD_ERRNO[errno_name]
        super().__init__(message or errno_name)


class XsWireError(Exception):
    """The byte stream broke the framing rules (e.g. ``len`` > 4096).

    xenstored treats this as fatal for the connection (xenstore.txt: the
    connection "will be immediately killed").
    """


# --- struct xsd_sockmsg -------------------------------------------------------

#: ``struct xsd_sockmsg {uint32 type, req_id, tx_id, len}``, native endian.
XSD_SOCKMSG = struct.Struct("=IIII")
XSD_SOCKMSG_SIZE = XSD_SOCKMSG.size


class XsMessage(NamedTuple):
    """One complete message: the header fields (without ``len``) and payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes


def pack_msg(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Serialise a header and its payload.

    Raises :class:`XsWireError` if the payload exceeds
    :data:`XENSTORE_PAYLOAD_MAX`, which no conforming peer would accept.
    """
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise XsWireError(f"payload of {len(payload)} bytes exceeds XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})")
    return XSD_SOCKMSG.pack(msg_type, req_id, tx_id, len(payload)) + bytes(payload)


def unpack_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """Decode the first 16 bytes of ``data`` as ``(type, req_id, tx_id, len)``."""
    return XSD_SOCKMSG.unpack_from(data, 0)


class MessageReader:
    """Incremental decoder for a stream of xsd_sockmsg messages.

    Feed it bytes in chunks of any size (as they come off a byte ring or a
    stream socket); :meth:`feed` returns every message completed so far, in
    order. A header announcing more than :data:`XENSTORE_PAYLOAD_MAX` bytes
    raises :class:`XsWireError` and leaves the reader broken: the stream can no
    longer be trusted, and every later :meth:`feed` raises again.
    """

    __slots__ = ("_buf", "_broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: str | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete message."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[XsMessage]:
        """Append ``data`` and return the messages it completed."""
        if self._broken is not None:
            raise XsWireError(self._broken)
        buf = self._buf
        buf += data
        out: list[XsMessage] = []
        pos = 0
        end = len(buf)
        while end - pos >= XSD_SOCKMSG_SIZE:
            msg_type, req_id, tx_id, length = XSD_SOCKMSG.unpack_from(buf, pos)
            if length > XENSTORE_PAYLOAD_MAX:
                self._broken = (
                    f"message announces {length} payload bytes, more than XENSTORE_PAYLOAD_MAX ({XENSTORE_PAYLOAD_MAX})"
                )
                del buf[:]
                raise XsWireError(self._broken)
            start = pos + XSD_SOCKMSG_SIZE
            if end - start < length:
                break
            out.append(XsMessage(msg_type, req_id, tx_id, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out

    def reset(self) -> None:
        """Forget buffered bytes and any framing error (after a reconnect)."""
        self._buf.clear()
        self._broken = None


# --- Payload helpers ----------------------------------------------------------

#: The acknowledgement of requests without a specific reply.
OK_PAYLOAD = b"OK\0"


def split_strings(payload: bytes) -> list[bytes]:
    """The nul-terminated strings of a payload (xenstored ``get_strings``).

    Bytes after the last nul are not a string and are ignored, as xenstored
    ignores them.
    """
    parts = payload.split(b"\0")
    # The final element is whatever follows the last nul: never a full string.
    parts.pop()
    return parts


def one_arg(payload: bytes) -> bytes | None:
    """The single argument of a one-string payload (xenstored ``onearg``).

    The payload must hold exactly one nul, at its end; otherwise ``None``.
    """
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def join_strings(items: Iterable[bytes | str]) -> bytes:
    """Build a payload of nul-terminated strings."""
    out = bytearray()
    for item in items:
        raw = item.encode("ascii") if isinstance(item, str) else item
        if b"\0" in raw:
            raise ValueError("xenstore strings cannot contain nul bytes")
        out += raw
        out += b"\0"
    return bytes(out)


def error_payload(name: str) -> bytes:
    """The payload of an ERROR reply: the errno name, nul-terminated."""
    if name not in XSD_ERRNO:
        raise ValueError(f"{name!r} is not an xs_wire.h error name")
    return name.encode("ascii") + b"\0"


def parse_error_payload(payload: bytes) -> str:
    """The errno name carried by an ERROR reply (``EINVAL`` if unreadable)."""
    name = payload.split(b"\0", 1)[0].decode("ascii", "replace")
    return name if name in XSD_ERRNO else "EINVAL"


# --- Paths (xenstore.txt, xenstored ``canonicalize``) -------------------------

#: Every character a path may contain.
VALID_PATH_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
_VALID_PATH_RE = re.compile(rb"[A-Za-z0-9\-/_@]*")

#: Special watch paths, fired by xenstored itself.
SPECIAL_INTRODUCE_DOMAIN = "@introduceDomain"
SPECIAL_RELEASE_DOMAIN = "@releaseDomain"


def home_path(domid: int) -> str:
    """A domain's home, where its relative paths resolve: ``/local/domain/<domid>``."""
    return f"/local/domain/{domid}"


def is_special_path(path: str) -> bool:
    """True for ``@``-paths, which only name watch events and their permissions."""
    return path.startswith("@")


def is_relative_path(path: bytes | str) -> bool:
    """True if the path is resolved under the caller's home (no ``/`` or ``@`` first)."""
    head = path[:1].decode("ascii", "replace") if isinstance(path, bytes) else path[:1]
    return head not in ("/", "@")


def validate_path(path: bytes | str, *, allow_special: bool = False) -> str:
    """Check a path's syntax and return it as ``str`` (relative paths stay relative).

    Rules (xenstore.txt "Paths"): only alphanumerics and ``-/_@``; not empty;
    no ``//``; no trailing ``/`` except for the root ``/``; ``@``-paths only
    where ``allow_special`` (watches and their permissions); at most
    :data:`XENSTORE_ABS_PATH_MAX` bytes absolute, :data:`XENSTORE_REL_PATH_MAX`
    relative. Raises ``XsError("EINVAL")`` otherwise.
    """
    raw = path.encode("ascii", "replace") if isinstance(path, str) else bytes(path)
    if not raw or _VALID_PATH_RE.fullmatch(raw) is None:
        raise XsError("EINVAL", f"invalid path {raw!r}")
    if raw[:1] == b"@" and not allow_special:
        raise XsError("EINVAL", f"special path {raw!r} not allowed here")
    limit = XENSTORE_REL_PATH_MAX if is_relative_path(raw) else XENSTORE_ABS_PATH_MAX
    if len(raw) > limit:
        raise XsError("EINVAL", f"path of {len(raw)} bytes exceeds {limit}")
    if b"//" in raw or (raw.endswith(b"/") and raw != b"/"):
        raise XsError("EINVAL", f"invalid path {raw!r}")
    return raw.decode("ascii")


def canonicalize(path: bytes | str, domid: int, *, allow_special: bool = False) -> str:
    """Validate a path and make it absolute for a caller of domain ``domid``.

    Relative paths resolve under :func:`home_path` (xenstored ``canonicalize``;
    sockets count as domain 0). Raises ``XsError("EINVAL")`` on a bad path,
    including one that is too long once made absolute.
    """
    name = validate_path(path, allow_special=allow_special)
    if is_relative_path(name):
        name = f"{home_path(domid)}/{name}"
        if len(name) > XENSTORE_ABS_PATH_MAX:
            raise XsError("EINVAL", f"path of {len(name)} bytes exceeds {XENSTORE_ABS_PATH_MAX}")
    return name


# --- Permissions (xenstore.txt GET_PERMS/SET_PERMS, xenstore_lib.h) ----------


class XsPerm(IntFlag):
    """``enum xs_perm_type`` access bits; ``OWNER`` is only computed, never sent."""

    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3
    OWNER = 8


_PERM_LETTER_TO_ACCESS = {"n": XsPerm.NONE, "r": XsPerm.READ, "w": XsPerm.WRITE, "b": XsPerm.BOTH}
_ACCESS_TO_PERM_LETTER = {v: k for k, v in _PERM_LETTER_TO_ACCESS.items()}
_DOMID_MAX = 0xFFFF  # domid_t is uint16_t (xen.h)


class Permission(NamedTuple):
    """One entry of a node's permission list.

    Entry 0 of a list names the node's owner, and its access is the default
    for every domain without an entry of its own.
    """

    domid: int
    access: XsPerm

    def __str__(self) -> str:
        return format_perm(self)


def parse_perm(text: bytes | str) -> Permission:
    """Decode ``w<domid>``, ``r<domid>``, ``b<domid>`` or ``n<domid>``.

    The domid is decimal, 0..65535. Raises ``XsError("EINVAL")`` otherwise.
    """
    s = text.decode("ascii", "replace") if isinstance(text, (bytes, bytearray)) else text
    access = _PERM_LETTER_TO_ACCESS.get(s[:1])
    digits = s[1:]
    if access is None or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
        raise XsError("EINVAL", f"invalid permission {s!r}")
    domid = int(digits)
    if domid > _DOMID_MAX:
        raise XsError("EINVAL", f"invalid permission {s!r}")
    return Permission(domid, access)


def format_perm(perm: Permission) -> str:
    """Encode one permission entry as its wire string."""
    letter = _ACCESS_TO_PERM_LETTER[XsPerm(perm.access & XsPerm.BOTH)]
    return f"{letter}{perm.domid}"


def parse_perms(items: Iterable[bytes | str]) -> tuple[Permission, ...]:
    """Decode a list of permission strings (see :func:`parse_perm`)."""
    return tuple(parse_perm(item) for item in items)


def perms_payload(perms: Sequence[Permission]) -> bytes:
    """The nul-terminated permission strings of a GET_PERMS reply."""
    return join_strings(format_perm(p) for p in perms)
