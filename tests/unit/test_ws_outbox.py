"""The socket's outgoing buffer: order, the close after the frames, dropping a stalled client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.support.timeouts import scaled
from tether.transports.ws_outbox import CLOSE_STALLED, Outbox


@dataclass
class FakeSocket:
    """Takes frames only while `open_gate` is set, like a client that reads or does not."""

    sent: list[str] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, frame: str) -> None:
        await self.gate.wait()
        self.sent.append(frame)

    async def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.done.set()

    def outbox(self, *, max_frames: int = 100, timeout_sec: float = 0) -> Outbox:
        box = Outbox(
            self.send,
            self.close,
            max_frames=max_frames,
            timeout_sec=timeout_sec,
            on_stall=self.stalls.append,
        )
        box.start()
        return box

    async def until_closed(self) -> None:
        async with asyncio.timeout(scaled(10)):
            await self.done.wait()


async def test_frames_go_out_in_order_and_the_close_after_them() -> None:
    socket = FakeSocket()
    box = socket.outbox()
    for i in range(10):
        box.put(f"f{i}")
    socket.gate.set()
    await box.close(1001, "bye")
    assert socket.sent == [f"f{i}" for i in range(10)]
    assert socket.closed == [(1001, "bye")]
    assert not socket.stalls
    box.put("late")  # after the close: dropped
    await box.stop()
    assert socket.sent[-1] == "f9"


async def test_a_frame_not_taken_in_time_drops_the_client() -> None:
    socket = FakeSocket()
    box = socket.outbox(timeout_sec=0.05)
    box.put("stuck")
    await socket.until_closed()
    assert socket.closed == [(CLOSE_STALLED, "client too slow to read its frames")]
    assert len(socket.stalls) == 1
    assert "limits.send_timeout_sec" in socket.stalls[0]
    assert not box.open
    await box.stop()


async def test_too_many_waiting_frames_drop_the_client_at_once() -> None:
    socket = FakeSocket()  # no send timeout: only the bound can drop it
    box = socket.outbox(max_frames=5)
    for i in range(6):
        box.put(f"f{i}")  # f0 is being sent (and waits), f1..f5 wait: one too many
    await socket.until_closed()
    assert socket.closed == [(CLOSE_STALLED, "client too slow to read its frames")]
    assert "limits.send_buffer_frames" in socket.stalls[0]
    assert socket.sent == []
    await box.stop()


async def test_replays_wait_for_room_and_stop_when_the_client_is_dropped() -> None:
    socket = FakeSocket()
    box = socket.outbox(max_frames=4)
    for i in range(4):
        box.put(f"f{i}")
    waiting = asyncio.create_task(box.room())
    await asyncio.sleep(0)  # one turn of the loop: the task is now waiting
    assert not waiting.done()
    socket.gate.set()  # the client reads: the buffer empties
    async with asyncio.timeout(scaled(10)):
        assert await waiting
    socket.gate.clear()
    for i in range(4, 10):
        box.put(f"f{i}")  # over the bound while a send waits
    async with asyncio.timeout(scaled(10)):
        assert not await box.room()
    await socket.until_closed()
    await box.stop()
