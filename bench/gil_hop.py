"""How long one hand-off to aiosqlite's thread takes beside a busy event loop.

Not a ratio of `bench/run.py`: the measurement behind running the SQLite store's writes on the
loop's thread (`tether.store.sqlite`). An aiosqlite `SELECT 1` is timed alone, then beside
`--busy` tasks that each do `--work-us` of Python and yield (`asyncio.sleep(0)`), as a flood of
fast streams does. A thread waiting for the GIL asks for it only after `sys.getswitchinterval()`
without a switch, and the busy loop drops and retakes the GIL at every `select`, so the wait
restarts: on the 2-core machine of plan.md a hop took 0.04 ms alone and 667 ms (p50) beside 4
tasks, at a switch interval of 5 ms or 1 ms alike.

    .venv/bin/python bench/gil_hop.py [--busy 4] [--work-us 25] [--switch 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiosqlite


async def spin(stop: asyncio.Event, work_s: float) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < work_s:
            pass
        await asyncio.sleep(0)


async def hops(busy: int, work_s: float, count: int) -> list[float]:
    """`count` hand-offs' times in ms, beside `busy` spinning tasks."""
    async with aiosqlite.connect(":memory:") as db:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(spin(stop, work_s)) for _ in range(busy)]
        times = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                await db.execute("SELECT 1")
                times.append((time.perf_counter() - started) * 1000)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=4)
    parser.add_argument("--work-us", type=float, default=25.0)
    parser.add_argument("--switch", type=float, default=sys.getswitchinterval())
    parser.add_argument("--count", type=int, default=30)
    args = parser.parse_args()
    sys.setswitchinterval(args.switch)
    for busy in (0, args.busy):
        times = asyncio.run(hops(busy, args.work_us / 1e6, args.count))
        print(
            f"{busy} busy tasks, switch interval {args.switch * 1000:g} ms: hand-off p50 "
            f"{statistics.median(times):.2f} ms, max {max(times):.1f} ms"
        )


if __name__ == "__main__":
    main()
