"""A new session's title, from its first message: plain text, one line, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.chat import TITLE_CHARS, title_of


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Plan the **release** for `v2`", "Plan the release for v2"),
        ("# Heading here\nbody", "Heading here"),
        ("\n\n  > quoted *idea* _now_\n", "quoted idea now"),
        ("- [the docs](https://example.org/x) ~~old~~", "the docs old"),
        ("1. first step", "first step"),
        ("snake_case_name and 2*3*4 stay", "snake_case_name and 2*3*4 stay"),
        ("   ", ""),
        ("", ""),
    ],
)
def test_markdown_marks_are_dropped_from_the_title(text: str, title: str) -> None:
    assert title_of(text) == title


def test_a_long_first_line_is_cut() -> None:
    assert title_of("word " * 100) == ("word " * 100)[:TITLE_CHARS].rstrip()


@given(st.text())
def test_a_title_is_one_bounded_line(text: str) -> None:
    title = title_of(text)
    assert len(title) <= TITLE_CHARS
    assert title == " ".join(title.split())  # one line, no runs of white space
    assert title == title.strip()
