"""getdomaininfo's XEN_DOMINF_* word (xenlike.public.domctl) and the hypervisor's shortcut for running domains."""

from __future__ import annotations

import itertools
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from xenlike.hypervisor.domain import Domain
from xenlike.public.domctl import (
    XEN_DOMINF_BLOCKED,
    XEN_DOMINF_DYING,
    XEN_DOMINF_PAUSED,
    XEN_DOMINF_RUNNING,
    XEN_DOMINF_SHUTDOWN,
    dominf_flags,
    dominf_state,
)
from xenlike.public.xen import ShutdownReason
from xenlike.tools.xl_format import state_letters


def test_the_bits_are_xens():
    # xen/include/public/domctl.h: dying 0, shutdown 2, paused 3, blocked 4, running 5; the reason at 16.
    assert (XEN_DOMINF_DYING, XEN_DOMINF_SHUTDOWN, XEN_DOMINF_PAUSED) == (1, 4, 8)
    assert (XEN_DOMINF_BLOCKED, XEN_DOMINF_RUNNING) == (16, 32)
    crashed = {"shutdown": True, "shutdown_reason": ShutdownReason.CRASH}
    assert dominf_flags(crashed) == XEN_DOMINF_SHUTDOWN | 3 << 16


@given(
    st.fixed_dictionaries(
        {name: st.booleans() for name in ("running", "blocked", "paused", "shutdown", "dying")},
    ),
    st.sampled_from(list(ShutdownReason)),
)
def test_a_state_survives_its_word_and_shows_the_same_letters(flags, reason):
    state = {**flags, "shutdown_reason": reason if flags["shutdown"] else None}
    back = dominf_state(dominf_flags(state))
    assert back == state
    assert state_letters(back) == state_letters(state)


def test_a_running_domains_word_is_the_one_its_info_gives():
    for paused, dying, running, blocked in itertools.product((False, True), repeat=4):
        domain = Domain(5, "web", 256, 256, 1, 32, cast(Any, None))  # its memory is not looked at
        domain.pid, domain.paused, domain.dying = 1, paused, dying
        expected = dominf_flags(domain.state_flags({"running": running, "blocked": blocked}))
        assert domain.scheduled_flags(running, blocked) == expected, (paused, dying, running, blocked)
