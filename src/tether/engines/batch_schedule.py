"""Continuous batching on one llama.cpp context: which sequence holds which slot, what each
decode step evaluates. Sans-I/O: no llama.cpp, no threads; the decode loop (`llama_model.py`)
asks it and does the ctypes calls.

A context has `n_slots` sequences (llama.cpp seq ids 0..n_slots-1), each with its own KV cache
of the model's window. A slot remembers the tokens its KV cells hold (`cached`), also once its
generation has ended, so a returning session whose prefix is still there only evaluates what is
new: `choose` gives a new prompt the free slot it continues (sharing at least half of what the
slot holds: the same conversation, not just the same system prompt), the longest such prefix
first, else the least recently used free slot (an empty one first), and `start` says from which
position the slot's KV is to be dropped.

Each step (`plan`) takes one token from every generating sequence (the token it sampled last)
and fills up to `prefill_budget` tokens with the prompts still being read, oldest first, so a
long prompt never stalls the others for more than a step's worth. A piece whose tokens end its
sequence's pending input wants logits: the runtime samples the next token from them (`feed`) or
ends the sequence (`finish`). After the decode, `evaluated` moves the pieces into `cached`.

Failures: `choose` and `start` raise `LookupError`/`ValueError` for a misuse (no free slot, a
busy or unknown seq id, an empty prompt); `forget` is for a slot whose KV content is unknown (a
failed decode): nothing of it is reused.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens of one sequence evaluated in a step, at positions `pos`, `pos + 1`, ..."""

    seq_id: int
    tokens: tuple[int, ...]
    pos: int
    logits: bool  # the last token's logits are wanted: the sequence samples after this step


@dataclass(slots=True)
class _Slot(Generic[J]):
    seq_id: int
    cached: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    job: J | None = None
    used: int = 0  # when it last started or ended (a tick): the LRU order
    started: int = 0  # when its current job started: prefill order


class Scheduler(Generic[J]):
    def __init__(self, n_slots: int, prefill_budget: int) -> None:
        if n_slots < 1 or prefill_budget < 1:
            raise ValueError("a scheduler needs at least one slot and a prefill budget")
        self.prefill_budget = prefill_budget
        self._slots = [_Slot[J](seq_id) for seq_id in range(n_slots)]
        self._ticks = itertools.count(1)

    @property
    def n_slots(self) -> int:
        return len(self._slots)

    def free(self) -> int:
        return sum(1 for slot in self._slots if slot.job is None)

    def running(self) -> list[tuple[int, J]]:
        """The seq ids and jobs of the sequences in progress."""
        return [(slot.seq_id, slot.job) for slot in self._slots if slot.job is not None]

    def job(self, seq_id: int) -> J | None:
        return self._slot(seq_id).job

    def cached(self, seq_id: int) -> tuple[int, ...]:
        return tuple(self._slot(seq_id).cached)

    def choose(self, prompt: Sequence[int]) -> tuple[int, int]:
        """The free slot for `prompt` and how long a prefix of it that slot's KV holds."""
        free = [slot for slot in self._slots if slot.job is None]
        if not free:
            raise LookupError("no free slot")
        shared = {slot.seq_id: shared_prefix(slot.cached, prompt) for slot in free}
        continued = [s for s in free if shared[s.seq_id] and 2 * shared[s.seq_id] >= len(s.cached)]
        if continued:
            best = max(continued, key=lambda slot: shared[slot.seq_id])
        else:
            best = min(free, key=lambda slot: slot.used)
        return best.seq_id, shared[best.seq_id]

    def start(
        self, seq_id: int, job: J, prompt: Sequence[int], cached: Sequence[int] | None = None
    ) -> int:
        """Run `job` on `prompt` in a free slot; return the position from which the slot's KV
        must be dropped (what stays is reused). `cached`: the tokens the slot holds now, when
        the runtime just restored a saved state into it.

        At least the prompt's last token is evaluated, so that sampling starts from its logits.
        """
        slot = self._slot(seq_id)
        if slot.job is not None:
            raise ValueError(f"slot {seq_id} is busy")
        if not prompt:
            raise ValueError("an empty prompt")
        if cached is not None:
            slot.cached = list(cached)
        keep = min(shared_prefix(slot.cached, prompt), len(prompt) - 1)
        del slot.cached[keep:]
        slot.pending = list(prompt[keep:])
        slot.job = job
        slot.used = slot.started = next(self._ticks)
        return keep

    def plan(self) -> list[Piece]:
        """This step's pieces: every generating sequence's one token, then prompt chunks."""
        pieces: list[Piece] = []
        reading: list[_Slot[J]] = []
        for slot in self._slots:
            if slot.job is None or not slot.pending:
                continue
            if len(slot.pending) == 1:
                pieces.append(Piece(slot.seq_id, (slot.pending[0],), len(slot.cached), True))
            else:
                reading.append(slot)
        budget = self.prefill_budget
        for slot in sorted(reading, key=lambda s: s.started):
            if budget == 0:
                break
            take = min(budget, len(slot.pending))
            budget -= take
            tokens = tuple(slot.pending[:take])
            pieces.append(Piece(slot.seq_id, tokens, len(slot.cached), take == len(slot.pending)))
        return pieces

    def evaluated(self, pieces: Sequence[Piece]) -> None:
        """The pieces' tokens are in the KV cache now."""
        for piece in pieces:
            slot = self._slot(piece.seq_id)
            slot.cached.extend(piece.tokens)
            del slot.pending[: len(piece.tokens)]

    def feed(self, seq_id: int, token: int) -> None:
        """The sequence sampled `token`: the next step evaluates it."""
        slot = self._slot(seq_id)
        if slot.job is None:
            raise ValueError(f"slot {seq_id} runs nothing")
        slot.pending = [token]

    def finish(self, seq_id: int) -> J | None:
        """The sequence ends (its KV stays for reuse); return its job."""
        slot = self._slot(seq_id)
        job, slot.job, slot.pending = slot.job, None, []
        slot.used = next(self._ticks)
        return job

    def forget(self, seq_id: int) -> None:
        """The slot's KV content is unknown: reuse none of it."""
        self._slot(seq_id).cached.clear()

    def _slot(self, seq_id: int) -> _Slot[J]:
        if not 0 <= seq_id < len(self._slots):
            raise LookupError(f"no slot {seq_id}")
        return self._slots[seq_id]
