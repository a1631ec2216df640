"""Fit a chat history into a model's context window, so a long history never overflows it.

Whole turns go first, oldest first: a turn is a user message with the assistant and tool messages
that follow it, so a tool result never loses the call it answers. The leading system messages and
the last turn (the current user message and any tool rounds after it) are kept. If that is still
too long, the longest message of the last turn is shortened (its start and end kept around a
`[…]` mark), then the next longest, and the system prompt last. Both searches are binary over
"render and tokenize", so a long history costs a handful of tokenizations, not one per message.

Trimming one turn at a time would change the prompt's start at every turn of a session that has
outgrown the window, and a changed start means re-evaluating the whole prompt each turn (the
saved prompt states only help a prompt whose start they share). So, given a `TrimMemory`, a trim
cuts deeper, down to `low_water` of the budget, and remembers where it cut (by the first turn it
kept); the next turns of that conversation cut at the same place for as long as that fits,
so they share the kept prefix and only their new turns are evaluated. When it no longer fits,
the cut moves on once, again to the low water mark.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tether.engines.base import ChatMessage, EngineError

TRUNCATION_MARK = " […] "
# A trim leaves the prompt at most this share of the budget: room for the turns to come.
LOW_WATER = 0.6
TRIM_MEMORY_SIZE = 256

Render = Callable[[Sequence[ChatMessage]], list[int]]


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    tokens: list[int]
    messages: tuple[ChatMessage, ...]
    trimmed_messages: int = 0  # whole messages left out
    truncated_messages: int = 0  # messages shortened


class TrimMemory:
    """Where recent prompts were cut: digests of the leading messages and the first turn each
    cut kept (`_cut_keys`), the most recently used `capacity` of them."""

    def __init__(self, capacity: int = TRIM_MEMORY_SIZE) -> None:
        self.capacity = capacity
        self._cuts: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cuts)

    def latest(self, keys: Sequence[bytes]) -> int | None:
        """The largest index whose key is a remembered cut (cuts only move forward)."""
        for index in range(len(keys) - 1, -1, -1):
            if keys[index] in self._cuts:
                self._cuts.move_to_end(keys[index])
                return index
        return None

    def remember(self, key: bytes) -> None:
        self._cuts[key] = None
        self._cuts.move_to_end(key)
        while len(self._cuts) > self.capacity:
            self._cuts.popitem(last=False)

    def clear(self) -> None:
        self._cuts.clear()


def _cut_keys(head: Sequence[ChatMessage], turns: Sequence[Sequence[ChatMessage]]) -> list[bytes]:
    """keys[k]: a digest of where dropping the first k of `turns` cuts: the leading messages (a
    changed system prompt is another conversation) and the first turn kept, `turns[k]`.

    Named by what it keeps, not by what it drops, a cut is found again when the history starts
    later (the chat core loads only a session's newest messages, so the start moves as the
    session grows). Two identical turns share a key; the later one is taken, a cut that fits
    either way."""
    keys = []
    for turn in turns:
        digest = hashlib.blake2b(digest_size=16)
        for message in (*head, *turn):
            digest.update(repr(message).encode())
        keys.append(digest.digest())
    return keys


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
    """The smallest n in [lo, hi] with ok(n), assuming ok is monotone; hi if there is none."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def fit_prompt(
    messages: Sequence[ChatMessage],
    render: Render,
    budget: int,
    memory: TrimMemory | None = None,
    low_water: float = LOW_WATER,
) -> FittedPrompt:
    """The prompt tokens of `messages`, trimmed until at most `budget` tokens.

    Without `memory` as few turns go as fit; with it, a cut it remembers for this conversation
    is kept while it fits, else the cut made leaves at most `low_water` of the budget.
    """
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

    rendered: dict[int, list[int]] = {}  # by turns dropped

    def render_without(dropped: int) -> list[int]:
        if dropped not in rendered:
            rendered[dropped] = render(assemble(dropped))
        return rendered[dropped]

    def fits(limit: int) -> Callable[[int], bool]:
        return lambda dropped: len(render_without(dropped)) <= limit

    if memory is None:
        dropped = _smallest_true(0, len(turns), fits(budget))
    else:
        keys = _cut_keys(head, [*turns, last])
        remembered = memory.latest(keys)
        if remembered is not None and fits(budget)(remembered):
            dropped = remembered
        else:
            dropped = _smallest_true(0, len(turns), fits(int(budget * low_water)))
            memory.remember(keys[dropped])
    kept = assemble(dropped)
    trimmed = sum(len(turn) for turn in turns[:dropped])
    tokens = render_without(dropped)
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
