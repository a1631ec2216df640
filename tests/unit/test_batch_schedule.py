"""The continuous-batching scheduler: slots, prefix reuse, and what each step evaluates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.engines.batch_schedule import Piece, Scheduler, shared_prefix


def test_a_prompt_is_read_in_chunks_then_sampled_from_its_last_token() -> None:
    scheduler: Scheduler[str] = Scheduler(2, prefill_budget=4)
    seq, live = scheduler.choose([1, 2, 3, 4, 5, 6])
    assert (seq, live) == (0, 0)
    assert scheduler.start(seq, "a", [1, 2, 3, 4, 5, 6]) == 0
    assert scheduler.plan() == [Piece(0, (1, 2, 3, 4), 0, False)]
    scheduler.evaluated(scheduler.plan())
    assert scheduler.plan() == [Piece(0, (5, 6), 4, True)]
    scheduler.evaluated(scheduler.plan())
    assert scheduler.plan() == []  # waiting for the sampled token
    scheduler.feed(0, 9)
    assert scheduler.plan() == [Piece(0, (9,), 6, True)]


def test_generating_sequences_go_first_and_prompts_share_the_budget_oldest_first() -> None:
    scheduler: Scheduler[str] = Scheduler(3, prefill_budget=5)
    scheduler.start(0, "gen", [1, 2])
    scheduler.evaluated(scheduler.plan())
    scheduler.feed(0, 7)
    scheduler.start(1, "old", [10, 11, 12, 13])
    scheduler.start(2, "new", [20, 21, 22])
    assert scheduler.plan() == [
        Piece(0, (7,), 2, True),
        Piece(1, (10, 11, 12, 13), 0, True),
        Piece(2, (20,), 0, False),
    ]


def test_a_returning_session_gets_its_slot_and_keeps_its_prefix() -> None:
    scheduler: Scheduler[str] = Scheduler(2, prefill_budget=64)
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 30, 40, 50, 60]  # the same system prompt, then not
    for job, prompt in (("a", a), ("b", b)):
        seq, _ = scheduler.choose(prompt)
        scheduler.start(seq, job, prompt)
        scheduler.evaluated(scheduler.plan())
        scheduler.finish(seq)
    # b did not take a's slot for the two tokens they share: a's KV is still there.
    assert scheduler.cached(0) == tuple(a)
    seq, live = scheduler.choose([*a, 7, 8])
    assert (seq, live) == (0, 6)
    assert scheduler.start(seq, "a2", [*a, 7, 8]) == 6
    assert scheduler.plan() == [Piece(0, (7, 8), 6, True)]


def test_a_new_session_takes_the_least_recently_used_slot() -> None:
    scheduler: Scheduler[str] = Scheduler(2, prefill_budget=64)
    for job, prompt in (("a", [1, 2, 3]), ("b", [4, 5, 6])):
        seq, _ = scheduler.choose(prompt)
        scheduler.start(seq, job, prompt)
        scheduler.evaluated(scheduler.plan())
    scheduler.finish(1)
    scheduler.finish(0)  # a ended last: b's slot is the least recently used
    assert scheduler.choose([9, 9]) == (1, 0)


def test_at_least_the_last_prompt_token_is_evaluated() -> None:
    scheduler: Scheduler[str] = Scheduler(1, prefill_budget=64)
    scheduler.start(0, "a", [1, 2, 3])
    scheduler.evaluated(scheduler.plan())
    scheduler.finish(0)
    assert scheduler.start(0, "again", [1, 2, 3]) == 2
    assert scheduler.plan() == [Piece(0, (3,), 2, True)]


def test_a_restored_state_counts_as_what_the_slot_holds() -> None:
    scheduler: Scheduler[str] = Scheduler(1, prefill_budget=64)
    assert scheduler.start(0, "a", [1, 2, 3, 4], cached=[1, 2, 3]) == 3
    assert scheduler.plan() == [Piece(0, (4,), 3, True)]


def test_a_forgotten_slot_reuses_nothing() -> None:
    scheduler: Scheduler[str] = Scheduler(1, prefill_budget=64)
    scheduler.start(0, "a", [1, 2, 3])
    scheduler.evaluated(scheduler.plan())
    assert scheduler.finish(0) == "a"
    scheduler.forget(0)
    assert scheduler.choose([1, 2, 3]) == (0, 0)


def test_misuse_is_refused() -> None:
    scheduler: Scheduler[str] = Scheduler(1, prefill_budget=64)
    with pytest.raises(ValueError, match="empty prompt"):
        scheduler.start(0, "a", [])
    scheduler.start(0, "a", [1])
    with pytest.raises(LookupError, match="no free slot"):
        scheduler.choose([1])
    with pytest.raises(ValueError, match="busy"):
        scheduler.start(0, "b", [1])
    with pytest.raises(LookupError, match="no slot 3"):
        scheduler.feed(3, 1)
    assert scheduler.running() == [(0, "a")]
    scheduler.finish(0)
    with pytest.raises(ValueError, match="runs nothing"):
        scheduler.feed(0, 1)
    with pytest.raises(ValueError, match="at least one slot"):
        Scheduler(0, prefill_budget=1)


@given(
    prompts=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=6),
    slots=st.integers(1, 3),
    budget=st.integers(1, 8),
)
def test_every_sequence_reads_its_prompt_in_order_within_the_budget(
    prompts: list[list[int]], slots: int, budget: int
) -> None:
    """Whatever arrives, each step stays within the budget, positions follow on, and each
    sequence's KV ends up holding exactly its prompt."""
    scheduler: Scheduler[int] = Scheduler(slots, prefill_budget=budget)
    waiting = list(enumerate(prompts))
    while waiting or scheduler.running():
        while waiting and scheduler.free():
            job, prompt = waiting.pop(0)
            seq, _ = scheduler.choose(prompt)
            scheduler.start(seq, job, prompt)
        pieces = scheduler.plan()
        assert sum(len(p.tokens) for p in pieces if not p.logits or len(p.tokens) > 1) <= budget
        for piece in pieces:
            assert piece.pos == len(scheduler.cached(piece.seq_id))
        scheduler.evaluated(pieces)
        for piece in pieces:
            if piece.logits:
                done = scheduler.finish(piece.seq_id)
                assert done is not None
                assert scheduler.cached(piece.seq_id) == tuple(prompts[done])


def test_shared_prefix() -> None:
    assert shared_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert shared_prefix([], [1]) == 0
    assert shared_prefix([1, 2], [1, 2, 3]) == 2
