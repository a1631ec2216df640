"""Fit a chat history into a model's context window, so a long history never overflows it.

Whole turns go first, oldest first: a turn is a user message with the assistant and tool messages
that follow it, so a tool result never loses the call it answers. The leading system messages and
the last turn (the current user message and any tool rounds after it) are kept. If that is still
too long, the longest message of the last turn is shortened (its start and end kept around a
`[…]` mark), then the next longest, and the system prompt last. Both searches are binary over
"render and tokenize", so a long history costs a handful of tokenizations, not one per message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tether.engines.base import ChatMessage, EngineError

TRUNCATION_MARK = " […] "

Render = Callable[[Sequence[ChatMessage]], list[int]]


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    tokens: list[int]
    messages: tuple[ChatMessage, ...]
    trimmed_messages: int = 0  # whole messages left out
    truncated_messages: int = 0  # messages shortened


def shorten(text: str, keep: int) -> str:
    """`text` cut to about `keep` characters, keeping its start and its end."""
    if keep >= len(text):
        return text
    if keep <= len(TRUNCATION_MARK):
        return ""
    room = keep - len(TRUNCATION_MARK)
    head = room // 2
    return text[:head] + TRUNCATION_MARK + text[len(text) - (room - head) :]


def _turns(body: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    turns: list[list[ChatMessage]] = []
    for message in body:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def _smallest_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The smallest n in [lo, hi] with ok(n), assuming ok is monotone and ok(hi) holds."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit_prompt(messages: Sequence[ChatMessage], render: Render, budget: int) -> FittedPrompt:
    """The prompt tokens of `messages`, trimmed until at most `budget` tokens."""
    tokens = render(messages)
    if len(tokens) <= budget:
        return FittedPrompt(tokens, tuple(messages))

    n_head = 0
    while n_head < len(messages) and messages[n_head].role == "system":
        n_head += 1
    head, turns = list(messages[:n_head]), _turns(messages[n_head:])
    last = turns.pop() if turns else []

    def assemble(dropped: int) -> list[ChatMessage]:
        return head + [m for turn in turns[dropped:] for m in turn] + last

    dropped = _smallest_true(0, len(turns), lambda k: len(render(assemble(k))) <= budget)
    kept = assemble(dropped)
    trimmed = sum(len(turn) for turn in turns[:dropped])
    tokens = render(kept)
    if len(tokens) <= budget:
        return FittedPrompt(tokens, tuple(kept), trimmed_messages=trimmed)

    # Still too long: shorten the last turn's messages, longest first, then the system prompt.
    truncated = 0
    first_last = len(kept) - len(last)
    for group in (range(first_last, len(kept)), range(len(head))):
        for index in sorted(group, key=lambda i: len(kept[i].content), reverse=True):
            kept, cut = _shorten_to_fit(kept, index, render, budget)
            if cut:
                truncated += 1
            tokens = render(kept)
            if len(tokens) <= budget:
                return FittedPrompt(tokens, tuple(kept), trimmed, truncated)
    raise EngineError(f"the context window is too small for even an empty prompt ({budget} tokens)")


def _shorten_to_fit(
    messages: list[ChatMessage], index: int, render: Render, budget: int
) -> tuple[list[ChatMessage], int]:
    """`messages` with message `index` cut as little as fits (or to nothing); how much was cut."""
    original = messages[index]
    size = len(original.content)

    def cut_by(cut: int) -> list[ChatMessage]:
        trial = list(messages)
        trial[index] = dataclasses.replace(original, content=shorten(original.content, size - cut))
        return trial

    cut = _smallest_true(0, size, lambda c: len(render(cut_by(c))) <= budget)
    return cut_by(cut), cut
