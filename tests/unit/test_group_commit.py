"""CommitQueue: what its docstring promises, on any sequence of puts, takes and failed batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.store.group_commit import Batch, CommitQueue

# A step: put a job (solo?, durable?), take a batch, or take one and let it fail.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.booleans(), st.booleans()),
        st.just(("take",)),
        st.just(("fail",)),
    ),
    max_size=60,
)


def drive(sequence: list[tuple[object, ...]], max_jobs: int) -> tuple[list[int], list[Batch[int]]]:
    """Run the steps, then take until empty: the jobs settled in order, and every batch."""
    queue: CommitQueue[int] = CommitQueue(max_jobs)
    kinds: dict[int, tuple[bool, bool]] = {}
    settled: list[int] = []
    batches: list[Batch[int]] = []
    for step in [*sequence, *[("take",)] * 200]:
        if step[0] == "put":
            job = len(kinds)
            kinds[job] = (bool(step[1]), bool(step[2]))
            queue.put(job, solo=kinds[job][0], durable=kinds[job][1])
            continue
        batch = queue.take()
        if batch is None:
            continue
        batches.append(batch)
        # A solo job always commits; a batch asked to fail goes back to run alone.
        if step[0] == "fail" and not batch.alone:
            queue.retry_alone(batch)
        else:
            settled.extend(batch.jobs)
        for job in batch.jobs:
            assert batch.durable >= kinds[job][1]  # one fsync covers each durable job
        assert batch.durable == any(kinds[job][1] for job in batch.jobs)
        if any(kinds[job][0] for job in batch.jobs):
            assert len(batch.jobs) == 1  # a solo job shares no transaction
    assert len(queue) == 0
    return settled, batches


@given(steps, st.integers(min_value=1, max_value=5))
def test_every_job_is_settled_once_in_the_order_it_was_put(
    sequence: list[tuple[object, ...]], max_jobs: int
) -> None:
    settled, batches = drive(sequence, max_jobs)
    puts = sum(step[0] == "put" for step in sequence)
    assert settled == list(range(puts))
    assert all(1 <= len(batch.jobs) <= max_jobs for batch in batches)


def test_a_batch_is_what_waits_up_to_the_next_solo_job() -> None:
    queue: CommitQueue[str] = CommitQueue()
    for job, solo in (("a", False), ("b", False), ("s", True), ("c", False)):
        queue.put(job, solo=solo, durable=job == "b")
    batches = [queue.take() for _ in range(4)]
    assert [(b.jobs, b.durable, b.alone) for b in batches if b is not None] == [
        (("a", "b"), True, False),
        (("s",), False, True),
        (("c",), False, False),
    ]
    assert batches[-1] is None


def test_a_failed_batch_runs_again_one_job_at_a_time_first() -> None:
    queue: CommitQueue[str] = CommitQueue()
    for job in ("a", "b", "c"):
        queue.put(job, solo=False, durable=job != "b")
    failed = queue.take()
    assert failed is not None
    queue.put("d", solo=False, durable=False)  # came while the batch failed
    queue.retry_alone(failed)
    retried = [queue.take() for _ in range(4)]
    assert [(b.jobs, b.durable, b.alone) for b in retried if b is not None] == [
        (("a",), True, True),
        (("b",), False, True),
        (("c",), True, True),
        (("d",), False, False),
    ]


def test_a_batch_holds_at_most_max_jobs() -> None:
    queue: CommitQueue[int] = CommitQueue(max_jobs=2)
    for job in range(5):
        queue.put(job, solo=False, durable=False)
    sizes = []
    while (batch := queue.take()) is not None:
        sizes.append(len(batch.jobs))
    assert sizes == [2, 2, 1]
