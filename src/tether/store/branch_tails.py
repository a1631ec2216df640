"""Branch tails recently loaded, so that a session's next turn reads its new messages only.

Sans-I/O: the store reads, this module remembers and composes. A message is written once and
never changed, and its parent never changes, so the branch up from a message is the same
whenever it is read: the tail a turn loaded (`Store.branch` with `covering_bytes`) is, with the
messages added below it since, the next turn's tail before trimming.

`BranchTails.compose(recent, bound)`, with `recent` the leaf and a few of its ancestors
(root-most first, as the store reads them), answers:

- a leaf whose tail at `bound` is remembered: that tail;
- else the nearest ancestor in `recent` whose tail is remembered: that tail, then the messages
  of `recent` below it, trimmed as `Store.branch` trims (up from the leaf, the messages until
  their contents' UTF-8 bytes reach `bound`, on to the first user message at or above that
  point; `bound` None: the whole branch);
- else, when `recent` reaches the root (a short branch), `recent` trimmed;
- None (the caller reads the whole tail) when none of them is remembered, or when the
  remembered tail ran out before the trim stopped and does not reach the root (it was cut for
  a smaller need than this one).

At most `size` tails are remembered, the least recently used going first; they share their
messages, so a tail costs its list, not its contents again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from tether.store.base import Message

# How many ancestors of a leaf the store reads to find a remembered tail: a turn's question
# is a few messages below the last turn's (its answer; tool calls and results between).
RECENT_STEPS = 8
TAILS = 256


def trim(messages: Sequence[Message], bound: int | None) -> tuple[list[Message], bool]:
    """The tail of `messages` (a branch's run, root-most first) that `Store.branch` keeps at
    `bound`, and whether the trim stopped inside them (False: it wanted more above)."""
    if bound is None:
        return list(messages), False
    covered = 0
    for start in range(len(messages) - 1, -1, -1):
        covered += len(messages[start].content.encode())
        if covered >= bound and messages[start].role == "user":
            return list(messages[start:]), True
    return list(messages), False


class BranchTails:
    """Tails by (leaf id, bound), the most recently used last."""

    def __init__(self, size: int = TAILS) -> None:
        if size < 1:
            raise ValueError("remember at least one tail")
        self.size = size
        self._tails: OrderedDict[tuple[str, int | None], tuple[Message, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tails)

    def compose(self, recent: Sequence[Message], bound: int | None) -> list[Message] | None:
        """The tail at `bound` of the leaf `recent[-1]`, from a remembered tail (see above)."""
        for index in range(len(recent) - 1, -1, -1):
            key = (recent[index].id, bound)
            known = self._tails.get(key)
            if known is None:
                continue
            self._tails.move_to_end(key)
            tail, stopped = trim([*known, *recent[index + 1 :]], bound)
            if stopped or tail[0].parent_id is None:
                return tail
            return None
        if recent and recent[0].parent_id is None:
            return trim(recent, bound)[0]
        return None

    async def load(
        self,
        leaf_id: str,
        bound: int | None,
        recent: Callable[[], Awaitable[list[Message]]],
        whole: Callable[[], Awaitable[list[Message]]],
    ) -> list[Message]:
        """A store's `branch`: its `recent` read (the leaf and up to RECENT_STEPS ancestors,
        root-most first), composed with a remembered tail, else its `whole` read of the tail
        at `bound`; the tail is remembered for the session's next turn."""
        near = await recent()
        if not near:
            return []
        tail = self.compose(near, bound)
        if tail is None:
            tail = await whole()
        self.remember(leaf_id, bound, tail)
        return tail

    def remember(self, leaf_id: str, bound: int | None, tail: Sequence[Message]) -> None:
        if not tail:
            return
        self._tails[(leaf_id, bound)] = tuple(tail)
        self._tails.move_to_end((leaf_id, bound))
        while len(self._tails) > self.size:
            self._tails.popitem(last=False)
