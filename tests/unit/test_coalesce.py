"""DeltaMerger: what its docstring promises, on any sequence of deltas and takes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.coalesce import Delta, DeltaMerger
from tether.events import TextDelta, ThinkingDelta

MAX = 10

steps = st.lists(
    st.one_of(
        st.builds(TextDelta, st.text(max_size=15)),
        st.builds(ThinkingDelta, st.text(max_size=15)),
        st.none(),  # the journal writer takes what waits
    ),
    max_size=40,
)


def run(sequence: list[Delta | None]) -> list[Delta]:
    merger = DeltaMerger(max_chars=MAX)
    out: list[Delta] = []
    for step in sequence:
        done = merger.take() if step is None else merger.add(step)
        if done is not None:
            out.append(done)
    if (rest := merger.take()) is not None:
        out.append(rest)
    assert not merger
    return out


@given(steps)
def test_no_character_is_lost_added_or_moved_within_a_kind(sequence: list[Delta | None]) -> None:
    out = run(sequence)
    for kind in (TextDelta, ThinkingDelta):
        given_text = "".join(d.text for d in sequence if isinstance(d, kind))
        assert "".join(d.text for d in out if isinstance(d, kind)) == given_text


@given(steps)
def test_a_join_exceeds_max_chars_only_as_a_single_delta(sequence: list[Delta | None]) -> None:
    singles = {d.text for d in sequence if d is not None}
    for joined in run(sequence):
        assert len(joined.text) <= MAX or joined.text in singles


def test_a_take_ends_a_join_and_another_kind_starts_one() -> None:
    merger = DeltaMerger(max_chars=MAX)
    assert merger.add(TextDelta("a ")) is None
    assert merger.add(TextDelta("b ")) is None
    assert merger.add(ThinkingDelta("hm")) == TextDelta("a b ")
    assert merger.take() == ThinkingDelta("hm")
    assert merger.take() is None
    assert merger.add(TextDelta("x" * 12)) is None  # alone, longer than max_chars: not split
    assert merger.add(TextDelta("y")) == TextDelta("x" * 12)
