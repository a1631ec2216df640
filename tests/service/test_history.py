"""History over HTTP and the socket against a real server: edits and regenerations as branches,
the active branch and the tree, switching branches, titles, search."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, resume_frame, text_of

Line = dict[str, Any]


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as client:
        yield client


async def ndjson(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Line]:
    async with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) async for line in response.aiter_lines() if line]


def tokens(lines: list[Line]) -> str:
    return "".join(line["data"]["text"] for line in lines if line["type"] == "token")


async def chat(http: httpx.AsyncClient, text: str, session_id: str | None = None) -> Line:
    """One turn through /chat/stream; returns its start line's data."""
    body = {"text": text} | ({"session_id": session_id} if session_id else {})
    lines = await ndjson(http, "/chat/stream", body)
    assert lines[-1]["type"] == "done"
    start: Line = lines[0]["data"]
    return start


async def messages(http: httpx.AsyncClient, session_id: str, **params: str) -> list[Line]:
    response = await http.get(f"/sessions/{session_id}/messages", params=params)
    assert response.status_code == 200, response.text
    found: list[Line] = response.json()
    return found


def contents(found: list[Line]) -> list[str]:
    return [m["content"] for m in found]


async def test_an_edit_is_a_new_branch_and_the_active_one(http: httpx.AsyncClient) -> None:
    sid = (await chat(http, "one"))["session_id"]
    second = await chat(http, "two", sid)
    lines = await ndjson(
        http, f"/sessions/{sid}/messages/{second['user_message_id']}/edit", {"text": "deux"}
    )
    assert [line["type"] for line in lines] == ["start", "token", "done"]
    assert tokens(lines) == "deux"
    edited = lines[0]["data"]
    assert (edited["session_id"], edited["created_session"]) == (sid, False)
    active = await messages(http, sid)
    assert contents(active) == ["one", "one", "deux", "deux"]
    # The old branch is kept; the edited message and the edit are siblings.
    tree = await messages(http, sid, tree="true")
    assert contents(tree) == ["one", "one", "two", "two", "deux", "deux"]
    old, new = tree[2], tree[4]
    assert old["parent_id"] == new["parent_id"] == tree[1]["id"]
    assert old["siblings"] == new["siblings"] == [old["id"], new["id"]]
    assert tree[1]["children"] == [old["id"], new["id"]]
    assert active[2]["siblings"] == [old["id"], new["id"]]  # "2/2" on the active branch
    assert active[-1]["children"] == []


async def test_editing_the_first_message_makes_a_second_root(http: httpx.AsyncClient) -> None:
    first = await chat(http, "one")
    sid = first["session_id"]
    await ndjson(http, f"/sessions/{sid}/messages/{first['user_message_id']}/edit", {"text": "1"})
    active = await messages(http, sid)
    assert contents(active) == ["1", "1"]
    assert active[0]["parent_id"] is None
    assert active[0]["siblings"] == [first["user_message_id"], active[0]["id"]]


async def test_a_regeneration_answers_again_without_a_second_user_message(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    start = await chat(http, "say it again")
    sid, user = start["session_id"], start["user_message_id"]
    [_, first_answer] = await messages(http, sid)
    by_answer = await ndjson(http, f"/sessions/{sid}/messages/{first_answer['id']}/regenerate", {})
    by_user = await ndjson(
        http,
        f"/sessions/{sid}/messages/{user}/regenerate",
        {"options": {"temperature": 0.5}, "request_id": "regen-2"},
    )
    assert by_answer[0]["data"]["user_message_id"] == by_user[0]["data"]["user_message_id"] == user
    assert by_user[0]["data"]["request_id"] == "regen-2"
    tree = await messages(http, sid, tree="true")
    assert [(m["role"], m["parent_id"]) for m in tree] == [
        ("user", None),
        ("assistant", user),
        ("assistant", user),
        ("assistant", user),
    ]
    answers = [m["id"] for m in tree[1:]]
    assert answers[1:] == [by_answer[-1]["data"]["message_id"], by_user[-1]["data"]["message_id"]]
    assert tree[0]["children"] == answers
    active = await messages(http, sid)
    assert [m["id"] for m in active] == [user, answers[-1]]
    assert active[1]["siblings"] == answers
    # Journaled like any turn: the socket replays it by its request_id.
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        token = by_user[0]["data"]["resume_token"]  # another socket: the request's token
        await client.send(resume_frame("regen-2", -1, token))
        frames = await client.until("regen-2")
    assert text_of(frames) == "say it again"
    assert frames[-1]["chunk"]["metadata"]["message_id"] == answers[-1]


async def test_a_message_being_answered_cannot_be_regenerated_meanwhile(
    http: httpx.AsyncClient,
) -> None:
    body = {"text": "slow " * 20, "options": {"token_delay_ms": 20}}
    async with http.stream("POST", "/chat/stream", json=body) as response:
        lines = response.aiter_lines()
        start = json.loads(await anext(lines))["data"]
        sid, user = start["session_id"], start["user_message_id"]
        refused = await http.post(f"/sessions/{sid}/messages/{user}/regenerate", json={})
        rest = [json.loads(line) async for line in lines if line]
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "conflict"
    assert rest[-1]["type"] == "done"
    assert [m["role"] for m in await messages(http, sid, tree="true")] == ["user", "assistant"]


async def test_switching_branches_and_going_on_from_there(http: httpx.AsyncClient) -> None:
    sid = (await chat(http, "one"))["session_id"]
    two = await chat(http, "two", sid)
    await ndjson(http, f"/sessions/{sid}/messages/{two['user_message_id']}/edit", {"text": "2"})
    response = await http.put(
        f"/sessions/{sid}/active", json={"message_id": two["user_message_id"]}
    )
    assert response.status_code == 200, response.text
    leaf = response.json()["active_leaf_id"]
    assert contents(await messages(http, sid)) == ["one", "one", "two", "two"]
    assert (await messages(http, sid))[-1]["id"] == leaf
    assert (await http.get(f"/sessions/{sid}")).json()["active_leaf_id"] == leaf
    await chat(http, "three", sid)  # a plain turn continues the active branch
    assert contents(await messages(http, sid)) == ["one", "one", "two", "two", "three", "three"]


async def test_titles_come_from_the_first_message_and_can_be_edited(
    http: httpx.AsyncClient,
) -> None:
    session = (await http.post("/sessions", json={})).json()
    await chat(http, "What is a monad?\nAsking for a friend.", session["id"])
    await chat(http, "And a functor?", session["id"])
    assert (await http.get(f"/sessions/{session['id']}")).json()["title"] == "What is a monad?"
    response = await http.patch(f"/sessions/{session['id']}", json={"title": "Monads"})
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Monads"
    assert (await http.get(f"/sessions/{session['id']}")).json()["title"] == "Monads"


async def test_search_finds_messages_across_sessions(http: httpx.AsyncClient) -> None:
    one = (await chat(http, "the zebra crossed the road"))["session_id"]
    two = (await chat(http, "zebras and a zebra"))["session_id"]
    await chat(http, "nothing striped")
    response = await http.get("/search", params={"q": "zebra"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert {r["session_id"] for r in results} == {one, two}
    assert len(results) == 4  # the question and the echo of each
    assert all("<mark>zebra</mark>" in r["snippet"] for r in results)
    assert set(results[0]) == {
        "message_id",
        "session_id",
        "session_title",
        "role",
        "snippet",
        "created_at",
        "rank",
    }
    only = (await http.get("/search", params={"q": "zebra", "session_id": one})).json()
    assert {r["session_id"] for r in only["results"]} == {one}
    limited = (await http.get("/search", params={"q": "zebra", "limit": "1"})).json()
    assert len(limited["results"]) == 1
    phrase = {"q": '"zebra crossed" OR nowhere', "syntax": "fts5"}
    assert len((await http.get("/search", params=phrase)).json()["results"]) == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/search", {"q": '"unterminated', "syntax": "fts5"}, 400),
        ("GET", "/search", {"q": "fox AND", "syntax": "fts5"}, 400),
        ("GET", "/search", {"q": ""}, 400),
        ("GET", "/search", {"q": "\x00"}, 400),
        ("GET", "/search", {}, 400),
        ("GET", "/search", {"q": "x", "limit": "0"}, 400),
        ("GET", "/search", {"q": "x", "limit": "many"}, 400),
        ("GET", "/search", {"q": "x", "syntax": "regex"}, 400),
        ("GET", "/sessions/{sid}/messages", {"tree": "maybe"}, 400),
        ("GET", "/sessions/{sid}/messages", {"all": "true"}, 400),
        ("GET", "/sessions/missing/messages", {"tree": "true"}, 404),
        ("PATCH", "/sessions/{sid}", {"title": "x" * 501}, 400),
        ("PATCH", "/sessions/{sid}", {"title": 3}, 400),
        ("PATCH", "/sessions/{sid}", {"name": "x"}, 400),
        ("PATCH", "/sessions/missing", {"title": "x"}, 404),
        ("PUT", "/sessions/{sid}/active", {"message_id": "missing"}, 404),
        ("PUT", "/sessions/{sid}/active", {}, 400),
        ("PUT", "/sessions/missing/active", {"message_id": "x"}, 404),
        ("POST", "/sessions/{sid}/messages/{answer}/edit", {"text": "x"}, 404),
        ("POST", "/sessions/{sid}/messages/missing/edit", {"text": "x"}, 404),
        ("POST", "/sessions/missing/messages/{user}/edit", {"text": "x"}, 404),
        ("POST", "/sessions/{sid}/messages/{user}/edit", {}, 400),
        ("POST", "/sessions/{sid}/messages/{user}/edit", {"text": "x", "session_id": "s"}, 400),
        ("POST", "/sessions/{sid}/messages/{user}/edit", {"text": "x", "parent_id": "p"}, 400),
        ("POST", "/sessions/{sid}/messages/{user}/edit", {"text": "x", "sibling_of": "p"}, 400),
        ("POST", "/sessions/{sid}/messages/{user}/edit", {"text": "x" * 100_001}, 413),
        ("POST", "/sessions/{sid}/messages/{user}/regenerate", {"text": "x"}, 400),
        ("POST", "/sessions/{sid}/messages/{user}/regenerate", {"options": {"x": 1}}, 400),
        ("POST", "/sessions/{sid}/messages/missing/regenerate", {}, 404),
        ("POST", "/sessions/missing/messages/{user}/regenerate", {}, 404),
    ],
)
async def test_bad_history_requests_are_clear_errors_and_change_nothing(
    http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], status: int
) -> None:
    start = await chat(http, "keep me")
    sid, user = start["session_id"], start["user_message_id"]
    before = await messages(http, sid, tree="true")
    url = path.format(sid=sid, user=user, answer=before[1]["id"])
    if method == "GET":
        response = await http.get(url, params=body)
    else:
        response = await http.request(method, url, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == {400: "bad_request", 404: "not_found", 413: "too_large"}[status]
    assert error["message"]
    assert await messages(http, sid, tree="true") == before
    assert (await http.get(f"/sessions/{sid}")).json()["title"] == "keep me"


async def test_parent_id_on_the_socket_branches_like_an_edit(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        first = await client.chat("a", "one")
        sid = first[0]["chunk"]["metadata"]["session_id"]
        first_answer = first[-1]["chunk"]["metadata"]["message_id"]
        await client.chat("b", "two", session_id=sid)
        # An edit of "two": a new message under the edited one's parent.
        edit = await client.chat("c", "deux", session_id=sid, parent_id=first_answer)
        assert text_of(edit) == "deux"
    tree = await messages(http, sid, tree="true")
    assert contents(tree) == ["one", "one", "two", "two", "deux", "deux"]
    assert tree[2]["siblings"] == [tree[2]["id"], tree[4]["id"]]
    assert contents(await messages(http, sid)) == ["one", "one", "deux", "deux"]


async def test_sibling_of_on_the_socket_edits_any_message_even_the_first(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        first = await client.chat("a", "one")
        sid = first[0]["chunk"]["metadata"]["session_id"]
        root = first[0]["chunk"]["metadata"]["user_message_id"]
        await client.chat("b", "two", session_id=sid)
        # The first message has no parent: `sibling_of` says "a new root beside it".
        edit = await client.chat("c", "uno", session_id=sid, sibling_of=root)
        start = edit[0]["chunk"]["metadata"]
        assert (start["session_id"], start["created_session"]) == (sid, False)
        assert text_of(edit) == "uno"
        # The same on a later message: beside it, under its parent.
        second = (await client.chat("d", "dos", session_id=sid))[0]["chunk"]["metadata"]
        again = await client.chat("e", "deux", session_id=sid, sibling_of=second["user_message_id"])
        assert text_of(again) == "deux"
    tree = await messages(http, sid, tree="true")
    assert contents(tree) == [
        *("one", "one", "two", "two"),
        *("uno", "uno", "dos", "dos", "deux", "deux"),
    ]
    roots = [m["id"] for m in tree if m["parent_id"] is None]
    assert roots == [root, start["user_message_id"]]
    assert tree[0]["siblings"] == roots
    active = await messages(http, sid)
    assert contents(active) == ["uno", "uno", "deux", "deux"]
    assert active[2]["siblings"] == [tree[6]["id"], tree[8]["id"]]
    # The old branch is kept whole: switching back shows it.
    await http.put(f"/sessions/{sid}/active", json={"message_id": root})
    assert contents(await messages(http, sid)) == ["one", "one", "two", "two"]


async def test_sibling_of_in_a_chat_stream_body_is_the_edit_route(http: httpx.AsyncClient) -> None:
    first = await chat(http, "one")
    sid, root = first["session_id"], first["user_message_id"]
    body = {"text": "1", "session_id": sid, "sibling_of": root}
    lines = await ndjson(http, "/chat/stream", body)
    assert (lines[-1]["type"], tokens(lines)) == ("done", "1")
    active = await messages(http, sid)
    assert contents(active) == ["1", "1"]
    assert active[0]["siblings"] == [root, active[0]["id"]]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"sibling_of": "{user}"}, "bad_request"),  # no session_id
        ({"session_id": "{sid}", "sibling_of": "{user}", "parent_id": "{user}"}, "bad_request"),
        ({"session_id": "{sid}", "sibling_of": "{answer}"}, "not_found"),  # not a user message
        ({"session_id": "{sid}", "sibling_of": "missing"}, "not_found"),
        ({"session_id": "{sid}", "sibling_of": ""}, "bad_request"),
    ],
)
async def test_a_bad_sibling_of_is_refused_and_stores_nothing(
    server: RunningServer, http: httpx.AsyncClient, fields: dict[str, str], code: str
) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        first = await client.chat("a", "keep me")
        ids = {
            "sid": first[0]["chunk"]["metadata"]["session_id"],
            "user": first[0]["chunk"]["metadata"]["user_message_id"],
            "answer": first[-1]["chunk"]["metadata"]["message_id"],
        }
        before = await messages(http, ids["sid"], tree="true")
        sessions = (await http.get("/sessions")).json()
        placed = {name: value.format(**ids) for name, value in fields.items()}
        [refused] = await client.chat("b", "edited", **placed)
        assert (refused["status"], refused["error"]["code"]) == ("error", code), refused
        assert refused["error"]["message"]
    assert await messages(http, ids["sid"], tree="true") == before
    assert (await http.get("/sessions")).json() == sessions


async def test_regenerate_on_the_socket_answers_again_without_a_second_user_message(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        first = await client.chat("a", "once more")
        sid = first[0]["chunk"]["metadata"]["session_id"]
        user = first[0]["chunk"]["metadata"]["user_message_id"]
        answer = first[-1]["chunk"]["metadata"]["message_id"]
        await client.send(
            {"type": "regenerate", "request_id": "b", "session_id": sid, "message_id": answer}
        )
        again = await client.until("b")
        assert again[0]["chunk"]["metadata"]["user_message_id"] == user
        assert text_of(again) == "once more"
        await client.send(
            {"type": "regenerate", "request_id": "c", "session_id": sid, "message_id": "nope"}
        )
        [refused] = await client.until("c")
        assert refused["error"]["code"] == "not_found"
    tree = await messages(http, sid, tree="true")
    assert [(m["role"], m["parent_id"]) for m in tree] == [
        ("user", None),
        ("assistant", user),
        ("assistant", user),
    ]
    assert tree[2]["id"] == again[-1]["chunk"]["metadata"]["message_id"]
