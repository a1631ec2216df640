"""Remembered branch tails: composing the next turn's tail, trimming as the store's query does,
forgetting the least recently used."""

from __future__ import annotations

import pytest

from tether.store.base import Message
from tether.store.branch_tails import BranchTails, trim


def chain(*specs: tuple[str, str]) -> list[Message]:
    """Messages (role, content) each the child of the one before, ids m0, m1, ..."""
    messages: list[Message] = []
    for index, (role, content) in enumerate(specs):
        parent = messages[-1].id if messages else None
        messages.append(Message(f"m{index}", "s", parent, role, content, "now"))  # type: ignore[arg-type]
    return messages


BRANCH = chain(
    ("user", "aaaa"), ("assistant", "bbbb"), ("user", "cc"), ("assistant", "dd"),
    ("user", "é"), ("assistant", "ff"),
)  # fmt: skip


def test_trim_stops_at_the_first_user_message_once_the_bytes_are_covered() -> None:
    assert trim(BRANCH, 3) == (BRANCH[4:], True)  # ff + é (2 bytes) = 4 >= 3, at a user's
    assert trim(BRANCH, 5) == (BRANCH[2:], True)  # on past the assistant's dd to cc
    assert trim(BRANCH, 0) == (BRANCH[4:], True)
    assert trim(BRANCH, 10**6) == (BRANCH, False)  # ran out: it wanted more above
    assert trim(BRANCH, None) == (BRANCH, False)


def test_the_next_turn_is_composed_from_the_tail_remembered_above_it() -> None:
    tails = BranchTails()
    tails.remember("m2", 5, BRANCH[:3])
    recent = BRANCH[1:]  # the leaf m5 and four ancestors, m2 among them
    assert tails.compose(recent, 5) == BRANCH[2:]
    assert tails.compose(recent, 4) is None  # another bound: not remembered
    assert tails.compose(BRANCH[3:], 5) is None  # nothing remembered among them


def test_a_remembered_tail_that_runs_out_short_of_the_root_is_not_enough() -> None:
    tails = BranchTails()
    tails.remember("m3", 12, BRANCH[2:4])  # (as if cut short: it does not reach the root)
    assert tails.compose(BRANCH[3:], 12) is None
    tails.remember("m3", None, BRANCH[:4])  # the whole branch down to m3
    assert tails.compose(BRANCH[3:], None) == BRANCH


def test_a_short_branch_read_whole_needs_nothing_remembered() -> None:
    assert BranchTails().compose(BRANCH, 5) == BRANCH[2:]
    assert BranchTails().compose(BRANCH, None) == BRANCH


def test_the_least_recently_used_tail_goes_first() -> None:
    tails = BranchTails(size=2)
    tails.remember("m0", None, BRANCH[:1])
    tails.remember("m1", None, BRANCH[:2])
    assert tails.compose(BRANCH[:1], None) == BRANCH[:1]  # m0 used: m1 is now the oldest
    tails.remember("m2", None, BRANCH[:3])
    assert len(tails) == 2
    assert tails.compose(BRANCH[1:2], None) is None  # m1 forgotten (and m1 is not a root)
    with pytest.raises(ValueError, match="at least one"):
        BranchTails(size=0)
