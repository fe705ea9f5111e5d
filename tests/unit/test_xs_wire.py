"""xenlike.public.xs_wire: constants against xs_wire.h, framing, payloads, paths, permissions."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.public import xs_wire
from xenlike.public.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    MessageReader,
    Permission,
    XsdSockmsgType,
    XsError,
    XsMessage,
    XsPerm,
    XsWireError,
    canonicalize,
    error_payload,
    join_strings,
    one_arg,
    pack_msg,
    parse_error_payload,
    parse_perm,
    perms_payload,
    split_strings,
    unpack_header,
    validate_path,
)

# --- constants ----------------------------------------------------------------


def test_message_type_values_match_xs_wire_h() -> None:
    expected = {
        "CONTROL": 0,
        "DIRECTORY": 1,
        "READ": 2,
        "GET_PERMS": 3,
        "WATCH": 4,
        "UNWATCH": 5,
        "TRANSACTION_START": 6,
        "TRANSACTION_END": 7,
        "INTRODUCE": 8,
        "RELEASE": 9,
        "GET_DOMAIN_PATH": 10,
        "WRITE": 11,
        "MKDIR": 12,
        "RM": 13,
        "SET_PERMS": 14,
        "WATCH_EVENT": 15,
        "ERROR": 16,
        "IS_DOMAIN_INTRODUCED": 17,
        "RESUME": 18,
        "SET_TARGET": 19,
        "RESTRICT": 20,
        "RESET_WATCHES": 21,
        "DIRECTORY_PART": 22,
        "GET_FEATURE": 23,
        "SET_FEATURE": 24,
        "GET_QUOTA": 25,
        "SET_QUOTA": 26,
        "INVALID": 0xFFFF,
    }
    for name, value in expected.items():
        assert XsdSockmsgType[name] == value
    assert XsdSockmsgType.DEBUG is XsdSockmsgType.CONTROL
    assert xs_wire.XS_TYPE_COUNT == 27


def test_error_names_in_xs_wire_h_order() -> None:
    assert xs_wire.XSD_ERRORS == (
        "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
        "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
    )  # fmt: skip
    assert xs_wire.XSD_ERRNO["ENOENT"] == errno.ENOENT
    assert XsError("EAGAIN").errno == errno.EAGAIN
    with pytest.raises(ValueError):
        XsError("EWHATEVER")


def test_limits() -> None:
    assert xs_wire.XENSTORE_PAYLOAD_MAX == 4096
    assert xs_wire.XENSTORE_ABS_PATH_MAX == 3072
    assert xs_wire.XENSTORE_REL_PATH_MAX == 2048


def test_domain_interface_layout() -> None:
    assert xs_wire.XENSTORE_RING_SIZE == 1024
    offsets = (
        xs_wire.XENSTORE_REQ_OFFSET,
        xs_wire.XENSTORE_RSP_OFFSET,
        xs_wire.XENSTORE_REQ_CONS_OFFSET,
        xs_wire.XENSTORE_REQ_PROD_OFFSET,
        xs_wire.XENSTORE_RSP_CONS_OFFSET,
        xs_wire.XENSTORE_RSP_PROD_OFFSET,
        xs_wire.XENSTORE_SERVER_FEATURES_OFFSET,
        xs_wire.XENSTORE_CONNECTION_OFFSET,
        xs_wire.XENSTORE_ERROR_OFFSET,
        xs_wire.XENSTORE_EVTCHN_PORT_OFFSET,
    )
    assert offsets == (0, 1024, 2048, 2052, 2056, 2060, 2064, 2068, 2072, 2076)
    assert xs_wire.XENSTORE_DOMAIN_INTERFACE_SIZE == 2080
    assert xs_wire.mask_xenstore_idx(1024 + 5) == 5
    assert xs_wire.mask_xenstore_idx(0xFFFFFFFF) == 1023


def test_feature_bits_and_states() -> None:
    assert xs_wire.XENSTORE_SERVER_FEATURE_RECONNECTION == 1
    assert xs_wire.XENSTORE_SERVER_FEATURE_ERROR == 2
    assert xs_wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH == 4
    assert xs_wire.XENSTORE_SERVER_FEATURE_DOMID_ANY == 8
    assert (xs_wire.XENSTORE_CONNECTED, xs_wire.XENSTORE_RECONNECT) == (0, 1)
    assert (
        xs_wire.XENSTORE_ERROR_NONE,
        xs_wire.XENSTORE_ERROR_COMM,
        xs_wire.XENSTORE_ERROR_RINGIDX,
        xs_wire.XENSTORE_ERROR_PROTO,
    ) == (0, 1, 2, 3)


# --- framing ------------------------------------------------------------------


def test_header_is_16_native_bytes() -> None:
    assert xs_wire.XSD_SOCKMSG_SIZE == 16
    raw = pack_msg(XsdSockmsgType.READ, 7, 3, b"/a\0")
    assert raw[:16] == struct.pack("=IIII", 2, 7, 3, 3)
    assert raw[16:] == b"/a\0"
    assert unpack_header(raw) == (2, 7, 3, 3)


def test_pack_refuses_oversized_payload() -> None:
    assert len(pack_msg(1, 1, 0, b"x" * XENSTORE_PAYLOAD_MAX)) == 16 + XENSTORE_PAYLOAD_MAX
    with pytest.raises(XsWireError):
        pack_msg(1, 1, 0, b"x" * (XENSTORE_PAYLOAD_MAX + 1))


def test_reader_assembles_split_and_joined_messages() -> None:
    a = pack_msg(2, 1, 0, b"/a\0")
    b = pack_msg(11, 2, 5, b"/b\0value")
    c = pack_msg(7, 3, 5, b"")
    reader = MessageReader()
    assert reader.feed(a[:5]) == []
    assert reader.pending == 5
    assert reader.feed(a[5:] + b[:20]) == [XsMessage(2, 1, 0, b"/a\0")]
    assert reader.feed(b[20:] + c) == [XsMessage(11, 2, 5, b"/b\0value"), XsMessage(7, 3, 5, b"")]
    assert reader.pending == 0


def test_reader_rejects_oversized_len_and_stays_broken() -> None:
    reader = MessageReader()
    bad = struct.pack("=IIII", 2, 1, 0, XENSTORE_PAYLOAD_MAX + 1)
    with pytest.raises(XsWireError):
        reader.feed(bad)
    with pytest.raises(XsWireError):
        reader.feed(pack_msg(2, 1, 0, b"/\0"))
    reader.reset()
    assert reader.feed(pack_msg(2, 1, 0, b"/\0")) == [XsMessage(2, 1, 0, b"/\0")]


def test_reader_accepts_exactly_payload_max() -> None:
    reader = MessageReader()
    msg = pack_msg(11, 9, 0, b"p\0" + b"v" * (XENSTORE_PAYLOAD_MAX - 2))
    assert reader.feed(msg)[0].payload[-1:] == b"v"


_messages = st.lists(
    st.tuples(
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF),
        st.binary(max_size=300),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(messages=_messages, cuts=st.lists(st.integers(0, 4000), max_size=20))
def test_reader_round_trip_any_chunking(messages: list[tuple[int, int, int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(pack_msg(*m) for m in messages)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = MessageReader()
    decoded: list[XsMessage] = []
    for start, end in zip(points, points[1:], strict=False):
        decoded += reader.feed(stream[start:end])
    assert decoded == [XsMessage(*m) for m in messages]
    assert reader.pending == 0


# --- payloads -----------------------------------------------------------------


def test_split_strings_ignores_unterminated_tail() -> None:
    assert split_strings(b"") == []
    assert split_strings(b"a\0b\0") == [b"a", b"b"]
    assert split_strings(b"a\0tail") == [b"a"]
    assert split_strings(b"\0\0") == [b"", b""]


def test_one_arg_needs_exactly_one_trailing_nul() -> None:
    assert one_arg(b"/a\0") == b"/a"
    assert one_arg(b"\0") == b""
    assert one_arg(b"/a") is None
    assert one_arg(b"") is None
    assert one_arg(b"/a\0b\0") is None
    assert one_arg(b"/a\0b") is None


def test_join_and_error_payloads() -> None:
    assert join_strings(["a", b"b"]) == b"a\0b\0"
    with pytest.raises(ValueError):
        join_strings([b"a\0b"])
    assert error_payload("ENOENT") == b"ENOENT\0"
    with pytest.raises(ValueError):
        error_payload("ENOPE")
    assert parse_error_payload(b"EAGAIN\0") == "EAGAIN"
    assert parse_error_payload(b"\xff") == "EINVAL"


# --- paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/a", "/local/domain/1/device/vbd/51712", "rel", "a/b-c_d@e", "/x@y"],
)
def test_valid_paths(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize(
    "path",
    ["", "//", "/a//b", "/a/", "a/", "/a b", "/a.b", "/ä", "/a\tb", "@introduceDomain"],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(XsError) as info:
        validate_path(path)
    assert info.value.errno_name == "EINVAL"


def test_special_paths_only_where_allowed() -> None:
    assert validate_path("@releaseDomain", allow_special=True) == "@releaseDomain"
    assert canonicalize(b"@introduceDomain", 5, allow_special=True) == "@introduceDomain"
    with pytest.raises(XsError):
        canonicalize(b"@introduceDomain", 5)


def test_relative_paths_resolve_under_home() -> None:
    assert canonicalize(b"device/vbd", 3) == "/local/domain/3/device/vbd"
    assert canonicalize("/abs", 3) == "/abs"


def test_path_length_limits() -> None:
    assert validate_path("/" + "a" * 3071)
    with pytest.raises(XsError):
        validate_path("/" + "a" * 3072)
    assert validate_path("a" * 2048)
    with pytest.raises(XsError):
        validate_path("a" * 2049)


# --- permissions --------------------------------------------------------------


def test_permission_codec() -> None:
    assert parse_perm("w5") == Permission(5, XsPerm.WRITE)
    assert parse_perm(b"r0") == Permission(0, XsPerm.READ)
    assert parse_perm("b65535") == Permission(65535, XsPerm.BOTH)
    assert parse_perm("n12") == Permission(12, XsPerm.NONE)
    assert [
        str(Permission(d, a)) for d, a in [(1, XsPerm.NONE), (2, XsPerm.READ), (3, XsPerm.WRITE), (4, XsPerm.BOTH)]
    ] == [
        "n1",
        "r2",
        "w3",
        "b4",
    ]
    assert perms_payload([Permission(0, XsPerm.NONE), Permission(5, XsPerm.READ)]) == b"n0\0r5\0"


@pytest.mark.parametrize("text", ["", "x1", "r", "r-1", "r65536", "r1a", "R1", "r 1", "r１"])
def test_bad_permissions(text: str) -> None:
    with pytest.raises(XsError) as info:
        parse_perm(text)
    assert info.value.errno_name == "EINVAL"
