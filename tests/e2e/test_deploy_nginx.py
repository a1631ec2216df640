"""deploy/: two real `tether serve` replicas on one real PostgreSQL behind a real nginx, run with
deploy/'s own config (rendered by deploy/run.sh): chats land on both replicas, streams pass
through unbuffered, and an answer whose replica is killed mid-stream is resumed through nginx on
the living one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.test_replicas import LEASE_SEC, long_chat, replica_env
from tests.support.nginx import Nginx, nginx_in_front
from tests.support.postgres import PostgresServer
from tests.support.servers import LoopbackUrls, ServerProcess, stored_answer, tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, resume_frame, resume_token, text_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def deployed(
    tmp_path: Path, postgres: PostgresServer
) -> Iterator[tuple[Nginx, list[ServerProcess]]]:
    """nginx in front of two replicas on a fresh database (a test may kill a replica)."""
    url = asyncio.run(postgres.create_database())
    with ExitStack() as stack:
        replicas = [stack.enter_context(tether_serve(tmp_path, env=replica_env(url))) for _ in "ab"]
        yield stack.enter_context(nginx_in_front([r.port for r in replicas])), replicas


async def metric(server: LoopbackUrls, name: str) -> float:
    """The sum of a metric's samples, read from `server` itself (not through nginx)."""
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        text = (await http.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def test_chats_through_nginx_land_on_both_replicas_and_stream_unbuffered(
    deployed: tuple[Nginx, list[ServerProcess]],
) -> None:
    nginx, replicas = deployed
    for n in range(4):  # a connection each: round robin sends them to both
        async with connect(nginx.ws_url) as ws:
            frames = await ProtocolClient(ws).chat(f"c{n}", f"hello {n}")
        assert frames[-1]["status"] == "complete"
        assert text_of(frames) == f"hello {n}"
    served = [await metric(r, "tether_requests_total") for r in replicas]
    assert sum(served) == 4
    assert all(count > 0 for count in served), served
    async with httpx.AsyncClient(base_url=nginx.http_url, timeout=scaled(30)) as http:
        listed = (await http.get("/sessions")).json()
        assert sorted(s["title"] for s in listed) == [f"hello {n}" for n in range(4)]
        # NDJSON: the first token comes through while the answer is still being written.
        body = {"text": " ".join(f"w{i}" for i in range(40)), "options": {"token_delay_ms": 100}}
        async with http.stream("POST", "/chat/stream", json=body) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            while json.loads(await anext(lines))["type"] != "token":
                pass
            assert sum([await metric(r, "tether_requests_running") for r in replicas]) == 1
            rest = [json.loads(line) async for line in lines if line]
        assert rest[-1]["type"] == "done"
        # /v1: server-sent events through nginx, to the end.
        chat = {"model": "echo", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
        response = await http.post("/v1/chat/completions", json=chat)
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.text.rstrip().endswith("data: [DONE]")


async def serving(replicas: list[ServerProcess]) -> ServerProcess:
    """The replica holding the one open chat socket."""
    holding = [r for r in replicas if await metric(r, "tether_sockets_active") == 1]
    assert len(holding) == 1, holding
    return holding[0]


async def read_all(client: ProtocolClient) -> None:
    """Read frames until the connection closes (raises ConnectionClosed)."""
    while True:
        await client.next_frame()


async def test_an_answer_whose_replica_is_killed_resumes_through_nginx_on_the_other(
    deployed: tuple[Nginx, list[ServerProcess]],
) -> None:
    nginx, replicas = deployed
    chat = long_chat("long", 400, 20)
    async with asyncio.timeout(scaled(30 + 10 * LEASE_SEC)):
        async with connect(nginx.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(chat)
            while len(client.frames["long"]) < 5:  # processing and a few chunks
                await client.next_frame()
            victim = await serving(replicas)
            victim.process.kill()  # kill -9, mid-answer
            victim.process.wait()
            with pytest.raises(ConnectionClosed):  # nginx drops the client with its upstream
                await read_all(client)
        seen = list(client.frames["long"])
        [living] = [r for r in replicas if r is not victim]
        # The reconnect goes through nginx too: it skips the dead replica.
        async with connect(nginx.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(resume_frame("long", seen[-1]["seq"], resume_token(seen)))
            rest = await client.until("long")
            assert await metric(living, "tether_sockets_active") == 1
    frames = seen + rest
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))  # none lost or doubled
    final = frames[-1]
    # The living replica recovered the answer after the dead one's lease: `interrupted`, with
    # the text that was sent (README, "Scaling out").
    assert (final["status"], final["chunk"]["metadata"]["finish_reason"]) == (
        "complete",
        "interrupted",
    )
    session_id = frames[0]["chunk"]["metadata"]["session_id"]
    answer = await stored_answer(nginx, session_id)
    assert answer["id"] == final["chunk"]["metadata"]["message_id"]
    assert answer["status"] == "interrupted"
    assert answer["content"] == text_of(frames)
    assert str(chat["text"]).startswith(answer["content"])
    assert answer["content"]  # some of it was sent before the kill
    assert "turn.interrupted" in living.log()
