"""A stable replica id (`server.replica_id`): a replica killed and started again under its id
recovers its own open turns at once, long before its lease would expire; a second living
replica with the same id is refused."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_replicas import long_chat
from tests.support.servers import free_port, stored_answer, tether_bin, tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, resume_frame, resume_token, text_of

pytestmark = pytest.mark.e2e

LONG_LEASE_SEC = 600  # far longer than the test: recovery can only come from the id


def env_of(url: str, replica_id: str) -> dict[str, str]:
    return {
        "TETHER_STORAGE__URL": url,
        "TETHER_STORAGE__LEASE_SEC": str(LONG_LEASE_SEC),
        "TETHER_SERVER__REPLICA_ID": replica_id,
        "TETHER_ENGINE__NAME": "echo",
    }


async def test_a_replica_restarted_under_its_id_recovers_its_turn_at_once(
    tmp_path: Path, postgres_url: str
) -> None:
    chat = long_chat("mine", 400, 20)
    with tether_serve(tmp_path, env=env_of(postgres_url, "alpha")) as first:
        async with connect(first.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(chat)
            while len(client.frames["mine"]) < 5:
                await client.next_frame()
            first.process.kill()  # kill -9: its turn and journal stay open in the database
            first.process.wait()
    seen = list(client.frames["mine"])
    async with asyncio.timeout(scaled(30)):  # (the lease alone would take 600 s)
        with tether_serve(tmp_path, env=env_of(postgres_url, "alpha")) as again:
            session_id = seen[0]["chunk"]["metadata"]["session_id"]
            answer = await stored_answer(again, session_id)
            async with connect(again.ws_url) as ws:
                client = ProtocolClient(ws)
                await client.send(resume_frame("mine", seen[-1]["seq"], resume_token(seen)))
                rest = await client.until("mine")
            log = again.log()
    frames = seen + rest
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))
    final = frames[-1]
    assert final["chunk"]["metadata"]["finish_reason"] == "interrupted"
    assert (answer["id"], answer["status"]) == (
        final["chunk"]["metadata"]["message_id"],
        "interrupted",
    )
    assert answer["content"] == text_of(frames)
    [claimed] = [e for e in map(json.loads, log.splitlines()) if e["event"] == "store.replica"]
    assert (claimed["replica_id"], claimed["left_open_turns"]) == ("alpha", 1)
    assert "turn.interrupted" in log


def test_a_second_living_replica_with_the_same_id_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    with tether_serve(tmp_path, env=env_of(postgres_url, "beta")) as running:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
        result = subprocess.run(
            [*tether_bin(), "serve", "--port", str(free_port()), "--replica-id", "beta"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, **env_of(postgres_url, "other")},  # the flag wins over the variable
            timeout=scaled(60),
            check=False,
        )
        assert running.process.poll() is None  # the first one runs on
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "tether serve: start-up failed: replica id 'beta' is in use by a running replica on "
        "this database: give each replica its own server.replica_id"
    )
