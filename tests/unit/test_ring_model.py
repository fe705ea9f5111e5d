"""Model-based test of the shared ring under random interleavings of both ends.

Front and back share a small ring (4 slots, so it wraps and fills often). Each
step is one end doing one thing: produce, consume, answer, turn response
notifications off while polling (``disable_response_events``), or try to go to
sleep (``final_check_for_*`` returning False). The peer's whole step can also run
*inside* a push or final check, at its barrier: between storing an index and
loading the peer's, the one place where the event-index trick can race. Under
sequential consistency this covers every outcome of the two macros' store/load
pairs.

Checked after every step: no request or response is lost, duplicated or
reordered, and a sleeping end never has work waiting that nobody will tell it
about (every suppressed notification was safe).
"""

from __future__ import annotations

import struct

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import xenlike.public.ring as ring_module
from xenlike.kernel.memory import GuestMemory
from xenlike.public.ring import BackRing, FrontRing, RingProtocol

# 512-byte entries: (4096 - 64) / 512 = 7, rounded down to 4 slots.
SMALL = RingProtocol("small", struct.Struct("<Q"), struct.Struct("<Q"), entry_size=512)


class RingInterleavings(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.memory = GuestMemory.create(1, "test-ring-model")
        self.front = FrontRing(self.memory.frames(0, 1), SMALL)
        self.back = BackRing(self.memory.frames(0, 1), SMALL)
        assert self.front.nr_ents == 4
        self.sent = 0  # next request sequence number
        self.seen_by_back = 0  # next request the back expects
        self.to_answer: list[int] = []  # consumed, not yet answered
        self.answered = 0  # next response the front expects
        self.back_asleep = False
        self.front_asleep = False
        self.kicks = {"back": 0, "front": 0}
        self._injected = None
        self._real_mb = ring_module.mb
        ring_module.mb = self._mb

    def _mb(self) -> None:
        self._real_mb()
        action, self._injected = self._injected, None
        if action is not None:
            action()

    def teardown(self) -> None:
        ring_module.mb = self._real_mb
        self.front.release()
        self.back.release()
        self.memory.close()

    # -- the two ends' steps ------------------------------------------------------

    def _produce(self, count: int) -> None:
        count = min(count, self.front.free_requests())
        for _ in range(count):
            self.front.put_request(self.sent)
            self.sent += 1
        if self.front.push_requests():
            self.kicks["back"] += 1
            self.back_asleep = False

    def _answer(self, count: int) -> None:
        for _ in range(min(count, len(self.to_answer))):
            self.back.put_response(self.to_answer.pop(0))
        if self.back.push_responses():
            self.kicks["front"] += 1
            self.front_asleep = False

    def _back_try_sleep(self) -> None:
        if not self.back.final_check_for_requests():
            self.back_asleep = True

    def _front_try_sleep(self) -> None:
        if not self.front.final_check_for_responses():
            self.front_asleep = True

    # -- rules --------------------------------------------------------------------

    @rule(count=st.integers(1, 5), race=st.booleans())
    def front_produces(self, count: int, race: bool) -> None:
        self.front_asleep = False  # new I/O from the front's own user wakes it
        if race and not self.back_asleep and not self.to_answer:
            self._injected = self._back_try_sleep
        self._produce(count)

    @precondition(lambda self: not self.back_asleep)
    @rule(count=st.integers(1, 5))
    def back_consumes(self, count: int) -> None:
        data, got = self.back.get_requests(count)
        for (seq,) in SMALL.unpack_requests(data):
            assert seq == self.seen_by_back, f"request {self.seen_by_back} expected, {seq} found"
            self.seen_by_back += 1
            self.to_answer.append(seq)

    @precondition(lambda self: not self.back_asleep)
    @rule(count=st.integers(1, 5), race=st.booleans())
    def back_answers(self, count: int, race: bool) -> None:
        if race and not self.front_asleep:
            self._injected = self._front_try_sleep
        self._answer(count)

    @precondition(lambda self: not self.front_asleep)
    @rule()
    def front_consumes(self) -> None:
        data, _ = self.front.get_responses()
        for (seq,) in SMALL.unpack_responses(data):
            assert seq == self.answered, f"response {self.answered} expected, {seq} found"
            self.answered += 1

    @precondition(lambda self: not self.back_asleep and not self.to_answer)
    @rule(race=st.integers(0, 5))
    def back_tries_to_sleep(self, race: int) -> None:
        if race and not self.front_asleep:
            self._injected = lambda: self._produce(race)
        self._back_try_sleep()

    @precondition(lambda self: not self.front_asleep)
    @rule(race=st.integers(0, 5))
    def front_tries_to_sleep(self, race: int) -> None:
        if race and not self.back_asleep:
            self._injected = lambda: self._answer(race)
        self._front_try_sleep()

    @precondition(lambda self: not self.front_asleep)
    @rule()
    def front_polls(self) -> None:
        """A front end polling while it waits turns notifications off; it sleeps only through the final check."""
        self.front.disable_response_events()

    # -- what must always hold ----------------------------------------------------

    @invariant()
    def no_lost_wakeup(self) -> None:
        if self.back_asleep:
            assert self.back.unconsumed_requests() == 0, "the back sleeps with requests waiting and no kick"
        if self.front_asleep:
            assert self.front.unconsumed_responses() == 0, "the front sleeps with responses waiting and no kick"

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        assert self.answered <= self.seen_by_back - len(self.to_answer) <= self.sent
        assert self.answered + self.front.unconsumed_responses() == self.seen_by_back - len(self.to_answer)
        assert self.seen_by_back + self.back.unconsumed_requests() == self.sent

    @invariant()
    def someone_can_move(self) -> None:
        # Both asleep is only fine when the ring is idle: otherwise the system hangs.
        if self.back_asleep and self.front_asleep:
            assert self.sent == self.answered and not self.to_answer


RingInterleavings.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestRingInterleavings = RingInterleavings.TestCase
