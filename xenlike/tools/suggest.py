"""The "did you mean" offered for a mistyped name: a verb, an xl.cfg key.

xl itself offers none; xenlike adds one to its errors and warnings, from the
names the thing could have been.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]

# How alike two names must be (difflib's ratio): a swap of two letters in a
# four-letter word (lsit, list) passes, a word sharing one letter does not.
CUTOFF = 0.75


def closest(word: str, names: Iterable[str]) -> str | None:
    """The name of ``names`` most like ``word``, if one is alike enough (:data:`CUTOFF`)."""
    found = difflib.get_close_matches(word, sorted(set(names)), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """``"; did you mean 'NAME'?"`` for the name closest to ``word``, or ``""`` when none is close."""
    name = closest(word, names)
    return "" if name is None else f"; did you mean {name!r}?"
