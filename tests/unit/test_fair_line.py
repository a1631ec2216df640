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


async def test_a_line_of_capacity_two_holds_two_and_queues_the_third() -> None:
    line = FairLine(capacity=2)
    await line.acquire("a")
    assert line.ahead("b") == 0
    await line.acquire("b")
    assert line.ahead("c") == 1
    third = asyncio.create_task(line.acquire("c"))
    await asyncio.sleep(0)
    assert not third.done()
    line.release()
    await asyncio.wait_for(third, 1)
    assert line.holders == 2


async def test_a_waiter_hears_its_place_each_time_it_changes() -> None:
    line = FairLine()
    await line.acquire("holder")
    others = [asyncio.create_task(line.acquire(f"w{i}")) for i in range(2)]
    await asyncio.sleep(0)
    places: list[int] = []

    async def told(place: int) -> None:
        places.append(place)

    assert line.ahead("me") == 3
    mine = asyncio.create_task(line.acquire("me", on_place=told))
    await asyncio.sleep(0)
    for waiter in others:  # the holder leaves, then each one served before me
        line.release()
        await waiter
        await asyncio.sleep(0)
    line.release()
    await asyncio.wait_for(mine, 1)
    assert places == [2, 1]


async def test_a_new_clients_request_moves_a_busy_clients_back() -> None:
    line = FairLine()
    await line.acquire("busy")
    busy = [asyncio.create_task(line.acquire("busy")) for _ in range(2)]
    await asyncio.sleep(0)
    places: list[int] = []
    heard = asyncio.Event()

    async def told(place: int) -> None:
        places.append(place)
        heard.set()

    assert line.ahead("busy") == 3
    last = asyncio.create_task(line.acquire("busy", on_place=told))
    await asyncio.sleep(0)
    other = asyncio.create_task(line.acquire("other"))  # served after busy's first waiter
    await asyncio.wait_for(heard.wait(), 1)
    assert places == [4]
    for task in [*busy, other, last]:
        task.cancel()
    await asyncio.gather(*busy, other, last, return_exceptions=True)


async def test_a_waiter_told_another_place_hears_its_place_at_once() -> None:
    # Its client was told place 3 (the turn was admitted behind others); by the time it joins
    # the line, those went ahead: it is told 1 without waiting for a change, then nothing more.
    line = FairLine()
    await line.acquire("holder")
    heard: list[int] = []
    told_once = asyncio.Event()

    async def told(place: int) -> None:
        heard.append(place)
        told_once.set()

    waiter = asyncio.create_task(line.acquire("late", told, told=3))
    await asyncio.wait_for(told_once.wait(), 5)
    assert heard == [1]
    line.release()
    await waiter
    assert heard == [1]
    unchanged: list[int] = []

    async def never(place: int) -> None:
        unchanged.append(place)

    second = asyncio.create_task(line.acquire("other", never, told=1))
    await asyncio.sleep(0)
    line.release()
    await second
    assert unchanged == []  # its place was the one it was told
    line.release()
