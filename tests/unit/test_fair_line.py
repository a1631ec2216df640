"""FairLine: waiters served round-robin by client key, FIFO within a client."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tether.engines.fair_line import FairLine


async def served_order(line: FairLine, keys: Sequence[str | None]) -> list[int]:
    order: list[int] = []

    async def request(index: int, key: str | None) -> None:
        await line.acquire(key)
        order.append(index)
        await asyncio.sleep(0)
        line.release()

    await line.acquire("holder")
    tasks = [asyncio.create_task(request(i, key)) for i, key in enumerate(keys)]
    await asyncio.sleep(0)  # every request is in the line
    line.release()
    await asyncio.gather(*tasks)
    return order


async def test_one_clients_ten_requests_do_not_go_before_anothers_one() -> None:
    keys: list[str | None] = [*(["busy"] * 10), "other"]
    order = await served_order(FairLine(), keys)
    assert order.index(10) == 1  # the other client's one request goes second, not eleventh
    assert [i for i in order if i != 10] == list(range(10))  # each client's own in order


async def test_without_keys_it_is_first_in_first_out() -> None:
    assert await served_order(FairLine(), [None] * 5) == list(range(5))


async def test_ahead_counts_turns_round_robin() -> None:
    line = FairLine()
    await line.acquire("a")
    waiters = [asyncio.create_task(line.acquire("a")) for _ in range(3)]
    await asyncio.sleep(0)
    assert line.ahead("b") == 2  # the holder, then one of a's, then b
    assert line.ahead("a") == 4
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert line.ahead("b") == 1
    line.release()
    assert not line.held
