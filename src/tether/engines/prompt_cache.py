"""A byte-bounded LRU of saved llama.cpp context states, looked up by longest token prefix.

A loaded model keeps only the tokens it evaluated last, so when two sessions take turns on one
model each turn would re-read its whole history. Saving the state after a turn under its token
sequence, and restoring the entry sharing the longest prefix with the next prompt, keeps every
session's time to first token close to turn 1's: only the new suffix is evaluated. Since a session's
history only grows, a new entry replaces the entries that are prefixes of it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def common_prefix(a: npt.NDArray[np.intc], b: npt.NDArray[np.intc]) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    mismatch = np.flatnonzero(a[:n] != b[:n])
    return int(mismatch[0]) if len(mismatch) else n


@dataclass(frozen=True, slots=True)
class SavedState:
    tokens: npt.NDArray[np.intc]  # what the context holds, in order
    data: bytes  # llama_state_get_data of that context

    @property
    def size(self) -> int:
        return len(self.data) + self.tokens.nbytes


class PromptCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[bytes, SavedState] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def best(self, tokens: npt.NDArray[np.intc]) -> tuple[int, SavedState | None]:
        """The entry sharing the longest prefix with `tokens`, and that prefix's length."""
        best_len, best_key = 0, None
        for key, state in self._entries.items():
            length = common_prefix(state.tokens, tokens)
            if length > best_len:
                best_len, best_key = length, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best_len, self._entries[best_key]

    def put(self, state: SavedState) -> None:
        if state.size > self.capacity_bytes:
            return
        for key, old in list(self._entries.items()):
            if common_prefix(old.tokens, state.tokens) == len(old.tokens):
                self._drop(key)  # superseded: the new state continues it
        key = state.tokens.tobytes()
        self._entries[key] = state
        self._bytes += state.size
        while self._bytes > self.capacity_bytes:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: bytes) -> None:
        self._bytes -= self._entries.pop(key).size
