"""Group commit: the store's writes that wait together share one transaction and one fsync.

Sans-I/O: which waiting writes go into the next transaction, and what to do when one fails.
`tether.store.sqlite` runs the transactions (one writer task); this module only
decides. A *job* is one store call's writes (a turn's start, its answer, a batch of journal
frames); it is

- `solo` when it must run alone in its transaction: it reads what it writes, or writes
  directly instead of handing its rows to the batch (sessions, agents, pruning, recovery);
- `durable` when its transaction must be fsynced (`synchronous=FULL`: messages); a batch of
  journal frames only is not (`synchronous=NORMAL`, see `tether.store.sqlite`).

What is promised:

- Jobs leave in the order they were put, each exactly once (a job is *taken* into a batch,
  and either settled with that batch or put back by `retry_alone`).
- A batch is the longest run of waiting jobs that are not solo, oldest first, at most
  `max_jobs`; a solo job at the head of the line is a batch of its own. So a solo job never
  shares a transaction, and nothing overtakes it.
- A batch is durable when any of its jobs is: one fsync covers every job in it.
- `retry_alone(batch)` (its transaction failed: one job's rows broke a constraint, or the
  disk did) puts the batch's jobs back at the head of the line, in order, each as a batch of
  its own, so the one that fails fails alone and the others commit as if they had been sent
  one at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")

# The most jobs in one transaction: bounds the time the first of them waits for its commit.
MAX_JOBS = 256


@dataclass(frozen=True, slots=True)
class _Waiting(Generic[J]):
    job: J
    solo: bool  # runs alone: put as solo, or put back alone after its batch failed
    durable: bool


@dataclass(frozen=True, slots=True)
class Batch(Generic[J]):
    """The jobs of one transaction, in the order they were put."""

    entries: tuple[_Waiting[J], ...]

    @property
    def jobs(self) -> tuple[J, ...]:
        return tuple(entry.job for entry in self.entries)

    @property
    def durable(self) -> bool:
        """Whether the commit is fsynced: a job in it stores messages."""
        return any(entry.durable for entry in self.entries)

    @property
    def alone(self) -> bool:
        """A solo job, or one retried alone: its failure is its own."""
        return len(self.entries) == 1 and self.entries[0].solo


class CommitQueue(Generic[J]):
    """The line of jobs waiting for the store's writer."""

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        if max_jobs < 1:
            raise ValueError("a batch holds at least one job")
        self.max_jobs = max_jobs
        self._line: deque[_Waiting[J]] = deque()

    def __len__(self) -> int:
        return len(self._line)

    def put(self, job: J, *, solo: bool, durable: bool) -> None:
        """`job` waits for the next transaction that may take it."""
        self._line.append(_Waiting(job, solo, durable))

    def take(self) -> Batch[J] | None:
        """The next transaction's jobs (None when nothing waits)."""
        if not self._line:
            return None
        if self._line[0].solo:
            return Batch((self._line.popleft(),))
        taken: list[_Waiting[J]] = []
        while self._line and len(taken) < self.max_jobs and not self._line[0].solo:
            taken.append(self._line.popleft())
        return Batch(tuple(taken))

    def retry_alone(self, batch: Batch[J]) -> None:
        """`batch` failed: its jobs go back to the head of the line, in order, each to be taken
        alone (keeping whether it is durable)."""
        for entry in reversed(batch.entries):
            self._line.appendleft(_Waiting(entry.job, solo=True, durable=entry.durable))
