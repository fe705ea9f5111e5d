"""The console stream's wire format and the splice of history with live output."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenlike.tools.console_stream import ConsoleMessage, Splice, decode, encode


@given(st.text(min_size=1, max_size=40), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=200))
def test_frames_round_trip(name, domid, offset, data):
    assert decode(encode(name, domid, offset, data)) == ConsoleMessage(name, domid, offset, data)


@pytest.mark.parametrize("frames", [[b"e", b"\0" * 12], [b"e", b"\0" * 11, b"x"], [b"e"]])
def test_malformed_frames_are_refused(frames):
    with pytest.raises(ValueError, match="not a console message"):
        decode(frames)


def _messages(name: str, domid: int, chunks: list[bytes]) -> list[ConsoleMessage]:
    offset, messages = 0, []
    for chunk in chunks:
        messages.append(ConsoleMessage(name, domid, offset, chunk))
        offset += len(chunk)
    return messages


@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=30), st.data())
def test_history_then_stream_shows_every_byte_once(chunks, data):
    """The subscription went live at message ``live``; the history ends after message ``history``."""
    messages = _messages("e", 3, chunks)
    history = data.draw(st.integers(0, len(messages)), label="history")
    live = data.draw(st.integers(0, history), label="live")
    end = sum(len(c) for c in chunks[:history])
    splice = Splice("e")
    splice.shown_until("e", 3, end)
    shown = b"".join(chunks[:history])
    for message in messages[live:]:
        fresh = splice.unseen(message)
        if fresh is not None:
            assert fresh.offset == len(shown)
            shown += fresh.data
    assert shown == b"".join(chunks)


def test_a_message_straddling_the_history_end_shows_only_its_new_part():
    splice = Splice("e")
    splice.shown_until("e", 1, 5)
    assert splice.unseen(ConsoleMessage("e", 1, 3, b"abcdef")) == ConsoleMessage("e", 1, 5, b"cdef")


def test_a_new_domain_under_the_same_name_starts_its_console_anew():
    splice = Splice("e")
    splice.shown_until("e", 1, 500)
    assert splice.unseen(ConsoleMessage("e", 2, 0, b"booting")) == ConsoleMessage("e", 2, 0, b"booting")
    assert splice.unseen(ConsoleMessage("e", 2, 0, b"booting")) is None  # and no repeat of it


def test_marks_and_other_consoles_show_nothing():
    splice = Splice("e")
    assert splice.unseen(ConsoleMessage("e", 1, 0, b"")) is None
    assert splice.unseen(ConsoleMessage("echo", 4, 0, b"hi")) is None  # SUB filters by prefix only


def test_following_every_console_keeps_each_apart():
    splice = Splice()
    assert splice.unseen(ConsoleMessage("a", 1, 10, b"x")).data == b"x"  # joined mid-stream
    assert splice.unseen(ConsoleMessage("b", 2, 0, b"y")).data == b"y"
    assert splice.unseen(ConsoleMessage("a", 1, 10, b"x")) is None
