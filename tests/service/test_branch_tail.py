"""A turn loads only the tail of its session's branch that its model can read (issue 17 item 4),
on real SQLite files: `Store.branch(covering_bytes=...)`, its query plan, and what reaches the
engine through the chat core."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import llama_cpp

from tests.contract.store_contract import content_bytes, reference_tail
from tests.service.test_chat_service import RecordingEcho, make_service
from tether.chat import ChatService, Turn
from tether.engines.base import ModelInfo
from tether.engines.echo import HISTORY_BYTES
from tether.engines.llamacpp import LlamaCppEngine
from tether.events import Accepted, ChatEvent, Completed
from tether.store.base import NewMessage
from tether.store.sqlite import BRANCH_SQL, SQLiteStore


async def long_branch_with_siblings(store: SQLiteStore, turns: int) -> tuple[str, list[str]]:
    """A session of `turns` turns, one or two answer rounds each (a tool call and its result),
    with messages beside the branch: an edited question every 7th turn and another answer every
    5th. Returns the branch's leaf and the ids beside it."""
    session_id: str | None = None
    head: str | None = None
    beside: list[str] = []
    for turn in range(turns):
        question = f"question {turn} é" + " word" * (turn % 9)  # é: two bytes, one character
        start = await store.begin_turn(session_id=session_id, text=question, parent_id=head)
        session_id, head = start.session.id, start.message.id
        if turn % 7 == 3:
            edit = await store.begin_turn(session_id=session_id, text="edit", sibling_of=head)
            beside.append(edit.message.id)
        if turn % 4 == 0:
            call = await store.append_message(
                session_id, head, NewMessage(role="assistant", content="", model="m")
            )
            result = await store.append_message(
                session_id, call.id, NewMessage(role="tool", content="42", name="calc")
            )
            head = result.id
        answer = await store.append_message(
            session_id, head, NewMessage(role="assistant", content=f"answer {turn} ü" * 3)
        )
        if turn % 5 == 1:
            other = await store.append_message(
                session_id, head, NewMessage(role="assistant", content="another answer")
            )
            beside.append(other.id)
        head = answer.id
    assert head is not None
    return head, beside


async def test_the_tail_is_the_branch_s_tail_in_order(store: SQLiteStore) -> None:
    leaf, beside = await long_branch_with_siblings(store, turns=60)
    branch = await store.branch(leaf)
    assert len(branch) == 60 * 2 + 15 * 2  # questions, answers, 15 calls and their results
    assert not {m.id for m in branch} & set(beside)
    for covering in (0, 1, 30, 100, 731, 2000, content_bytes(branch), 10**9):
        tail = await store.branch(leaf, covering_bytes=covering)
        assert [m.id for m in tail] == [m.id for m in reference_tail(branch, covering)]
        assert tail == branch[len(branch) - len(tail) :]
    # From the middle of the branch too, and from a message in the middle of a turn.
    middle = branch[100]
    upper = await store.branch(middle.id)
    assert upper == branch[:101]
    tail = await store.branch(middle.id, covering_bytes=120)
    assert tail == reference_tail(upper, 120)
    assert tail[0].role == "user"
    assert content_bytes(tail) >= 120


async def test_turn_after_turn_the_remembered_tails_give_what_the_query_gives(
    store: SQLiteStore,
) -> None:
    # Each message of the branch as the leaf in turn, as a session's turns ask: from the
    # second on, the tail is composed from the one before (tether.store.branch_tails). The
    # query itself, on a connection of its own, is the reference.
    leaf, _ = await long_branch_with_siblings(store, turns=40)
    branch = await store.branch(leaf)
    with sqlite3.connect(store.path) as db:
        for index, message in enumerate(branch):
            for covering in (None, 0, 200, 731):
                tail = await store.branch(message.id, covering_bytes=covering)
                if covering is None:
                    assert tail == branch[: index + 1]
                else:
                    assert tail == reference_tail(branch[: index + 1], covering)
                queried = db.execute(BRANCH_SQL, {"leaf": message.id, "bound": covering})
                assert [m.id for m in tail] == [row[0] for row in queried]
    assert await store.branch("no such message") == []


async def test_covering_bytes_none_or_beyond_the_branch_is_the_whole_branch(
    store: SQLiteStore,
) -> None:
    leaf, _ = await long_branch_with_siblings(store, turns=5)
    whole = await store.branch(leaf)
    assert whole[0].parent_id is None
    assert await store.branch(leaf, covering_bytes=None) == whole
    assert await store.branch(leaf, covering_bytes=content_bytes(whole) + 1) == whole


async def test_a_branch_read_never_sees_a_transaction_in_flight(store: SQLiteStore) -> None:
    """The tail is read on the writer's connection between its transactions; inside one (rows
    not committed yet) it is read on the reader's, which sees only committed rows."""
    start = await store.begin_turn(session_id=None, text="q")
    answer = await store.append_message(
        start.session.id, start.message.id, NewMessage("assistant", "a")
    )
    writer = store._writer  # (the connection the tail is read on: no other way to hold it open)
    assert writer is not None
    writer.execute("BEGIN IMMEDIATE")
    try:
        writer.execute("UPDATE messages SET content = 'uncommitted' WHERE id = ?", (answer.id,))
        tail = await store.branch(answer.id)
    finally:
        writer.execute("ROLLBACK")
    assert [m.content for m in tail] == ["q", "a"]
    assert [m.content for m in await store.branch(answer.id)] == ["q", "a"]


async def test_the_tail_is_found_by_key_lookups_not_scans(store: SQLiteStore) -> None:
    leaf, _ = await long_branch_with_siblings(store, turns=3)
    with sqlite3.connect(store.path) as db:
        plan = [
            row[3]
            for row in db.execute(f"EXPLAIN QUERY PLAN {BRANCH_SQL}", {"leaf": leaf, "bound": 10})
        ]
    touching = [step for step in plan if " messages" in step or " m " in f"{step} "]
    assert touching
    assert all(step.startswith("SEARCH") and "(id=?)" in step for step in touching), plan


async def run(service: ChatService, turn: Turn) -> list[ChatEvent]:
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)

    await service.run_turn(turn, emit)
    assert isinstance(events[-1], Completed)
    return events


async def test_a_short_session_reaches_the_engine_whole(store: SQLiteStore) -> None:
    engine = RecordingEcho()
    service = make_service(store, engine)
    accepted = (await run(service, Turn("r0", "one")))[0]
    assert isinstance(accepted, Accepted)
    for i in range(1, 6):
        await run(service, Turn(f"r{i}", f"turn {i}", session_id=accepted.session_id))
    prompt = engine.requests[-1].messages
    session = await store.get_session(accepted.session_id)
    assert session is not None
    assert session.active_leaf_id is not None
    stored = await store.branch(session.active_leaf_id)
    # Everything but the answer stored after the request: system prompt, then the whole branch.
    assert prompt[0].role == "system"
    assert [(m.role, m.content) for m in prompt[1:]] == [(m.role, m.content) for m in stored[:-1]]
    assert prompt[1].content == "one"


async def test_a_long_session_reaches_the_engine_as_its_tail(store: SQLiteStore) -> None:
    engine = RecordingEcho()
    service = make_service(store, engine)
    text = "word " * 40  # 200 bytes a message: the echo engine's window holds about 20
    accepted = (await run(service, Turn("r0", text)))[0]
    assert isinstance(accepted, Accepted)
    for i in range(1, 30):
        await run(service, Turn(f"r{i}", f"{i} {text}", session_id=accepted.session_id))
    prompt = engine.requests[-1].messages[1:]
    assert prompt[0].role == "user"
    assert prompt[-1].content == f"29 {text}"
    held = sum(len(m.content.encode()) for m in prompt)
    assert held >= HISTORY_BYTES
    assert held - len(prompt[0].content.encode()) - len(prompt[1].content.encode()) < HISTORY_BYTES


async def test_a_gguf_model_bounds_its_history_by_its_window(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    (tmp_path / "tiny.gguf").symlink_to(tiny_gguf)
    engine = LlamaCppEngine(tmp_path, default_model="tiny", n_ctx=512)
    try:
        (info,) = await engine.models()
    finally:
        await engine.aclose()
    vocab = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    try:
        longest = max(
            len(vocab.detokenize([token], special=True)) for token in range(vocab.n_vocab())
        )
    finally:
        vocab.close()
    assert isinstance(info, ModelInfo)
    assert info.history_bytes is not None
    # 512 tokens of the longest token's text at most: a tail holding this many bytes cannot fit.
    assert info.history_bytes >= 512 * longest
