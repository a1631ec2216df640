"""History in the SQLite store, on real files: edits and regenerations as branches, the active
leaf, titles, full-text search (and its migration's backfill)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.service.test_chat_service import make_service
from tether.chat import Edit, Regenerate, Turn
from tether.engines.base import ToolCall
from tether.engines.echo import EchoEngine
from tether.errors import BadRequest, Conflict, NotFound
from tether.events import ChatEvent, Completed, Failed
from tether.store.base import NewMessage, Orphans, Session
from tether.store.sqlite import SQLiteStore, load_migrations


async def session_of(store: SQLiteStore, session_id: str) -> Session:
    session = await store.get_session(session_id)
    assert session is not None
    return session


async def answered(store: SQLiteStore, text: str, session_id: str | None = None) -> list[str]:
    """A plain turn and its answer; returns [session_id, user message id, answer id]."""
    start = await store.begin_turn(session_id=session_id, text=text)
    answer = await store.end_turn(
        start.session.id,
        start.message.id,
        NewMessage("assistant", f"re: {text}"),
        turn_id=start.message.id,
    )
    return [start.session.id, start.message.id, answer.id]


async def test_an_edit_goes_beside_the_edited_message_and_becomes_active(
    store: SQLiteStore,
) -> None:
    sid, first, first_answer = await answered(store, "one")
    _, second, _ = await answered(store, "two", sid)
    edit = await store.begin_turn(session_id=sid, text="two, edited", sibling_of=second)
    assert edit.message.parent_id == first_answer
    assert edit.session.active_leaf_id == edit.message.id
    # The first message has no parent: its edit is a second root.
    root_edit = await store.begin_turn(session_id=sid, text="one, edited", sibling_of=first)
    assert root_edit.message.parent_id is None
    assert [m.content for m in await store.list_messages(sid)] == [
        "one",
        "re: one",
        "two",
        "re: two",
        "two, edited",
        "one, edited",
    ]


async def test_an_edit_names_a_user_message_of_the_session(store: SQLiteStore) -> None:
    sid, _, answer = await answered(store, "one")
    _, other_message, _ = await answered(store, "elsewhere")
    with pytest.raises(NotFound, match="assistant message"):
        await store.begin_turn(session_id=sid, text="x", sibling_of=answer)
    with pytest.raises(NotFound, match="is not in session"):
        await store.begin_turn(session_id=sid, text="x", sibling_of=other_message)
    with pytest.raises(BadRequest):
        await store.begin_turn(session_id=sid, text="x", sibling_of=answer, parent_id=answer)
    assert len(await store.list_messages(sid)) == 2


async def test_a_regeneration_stores_no_second_user_message(store: SQLiteStore) -> None:
    sid, user, first_answer = await answered(store, "one")
    start = await store.begin_regeneration(user, session_id=sid)
    assert (start.message.id, start.created_session) == (user, False)
    with pytest.raises(Conflict):  # one answer of a message at a time
        await store.begin_regeneration(user, session_id=sid)
    again = await store.end_turn(sid, user, NewMessage("assistant", "again"), turn_id=user)
    messages = await store.list_messages(sid)
    assert [(m.role, m.parent_id) for m in messages] == [
        ("user", None),
        ("assistant", user),
        ("assistant", user),
    ]
    assert (await session_of(store, sid)).active_leaf_id == again.id
    assert await store.close_open_turns(Orphans()) == {}  # the regeneration's turn was closed
    # Any message of the turn names it: an answer, a tool call, a tool result.
    call = await store.append_message(
        sid, user, NewMessage("assistant", "", tool_calls=(ToolCall("c1", "calculator", {}),))
    )
    result = await store.append_message(sid, call.id, NewMessage("tool", "42", tool_call_id="c1"))
    for message_id in (first_answer, call.id, result.id):
        start = await store.begin_regeneration(message_id, session_id=sid)
        assert start.message.id == user
        await store.end_turn(sid, user, NewMessage("assistant", "x"), turn_id=user)
    other, _, other_answer = await answered(store, "elsewhere")
    for message_id, session_id in (("no-such-message", sid), (other_answer, sid), (user, other)):
        with pytest.raises(NotFound, match="is not in session"):
            await store.begin_regeneration(message_id, session_id=session_id)


async def test_the_active_leaf_moves_with_turns_and_on_request(store: SQLiteStore) -> None:
    sid, first, _ = await answered(store, "one")
    _, second, old_leaf = await answered(store, "two", sid)
    edit = await store.begin_turn(session_id=sid, text="two, edited", sibling_of=second)
    assert (await session_of(store, sid)).active_leaf_id == edit.message.id
    # Switching by a message follows its newest children down to a leaf ...
    leaf = await store.set_active_leaf(sid, first)
    assert leaf.id == edit.message.id
    leaf = await store.set_active_leaf(sid, second)
    assert leaf.id == old_leaf
    # ... and a plain turn continues the active branch, not the newest message.
    _, third, _ = await answered(store, "three", sid)
    assert [m.content for m in await store.branch(third)][-3:] == ["two", "re: two", "three"]
    with pytest.raises(NotFound):
        await store.set_active_leaf(sid, "no-such-message")


async def test_a_session_gets_its_first_messages_title_and_keeps_a_given_one(
    store: SQLiteStore,
) -> None:
    untitled = await store.create_session()
    await store.begin_turn(session_id=untitled.id, text="first words", title="first words")
    await store.begin_turn(session_id=untitled.id, text="second", title="second")
    assert (await session_of(store, untitled.id)).title == "first words"
    titled = await store.create_session("mine")
    await store.begin_turn(session_id=titled.id, text="hello", title="hello")
    assert (await session_of(store, titled.id)).title == "mine"
    renamed = await store.update_session(titled.id, title="renamed")
    assert renamed == await session_of(store, titled.id)
    assert renamed.title == "renamed"
    assert await store.update_session("no-such-session", title="x") is None


async def test_the_chat_service_titles_edits_and_regenerates(store: SQLiteStore) -> None:
    service = make_service(store, EchoEngine())
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)

    session = await store.create_session()
    await service.run_turn(Turn("r1", "Hello there\nsecond line", session_id=session.id), emit)
    assert (await session_of(store, session.id)).title == "Hello there"
    [user] = [m for m in await store.list_messages(session.id) if m.role == "user"]
    await service.run_turn(Turn("r2", "Hi", session_id=session.id, redo=Edit(user.id)), emit)
    await service.run_turn(Turn("r3", "", session_id=session.id, redo=Regenerate(user.id)), emit)
    await service.run_turn(Turn("r4", "", redo=Regenerate(user.id)), emit)
    messages = await store.list_messages(session.id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hello there\nsecond line"),
        ("assistant", "Hello there\nsecond line"),
        ("user", "Hi"),
        ("assistant", "Hi"),
        ("assistant", "Hello there\nsecond line"),
    ]
    assert messages[4].parent_id == user.id
    assert [type(e) for e in events if isinstance(e, Completed | Failed)] == [
        Completed,
        Completed,
        Completed,
        Failed,  # a regeneration names its session
    ]


async def test_search_ranks_marks_and_filters(store: SQLiteStore) -> None:
    sid, _, _ = await answered(store, "the quick brown fox jumps over the lazy dog")
    other, _, _ = await answered(store, "a fox, a fox, a fox in the henhouse")
    await answered(store, "nothing to see")
    hits = await store.search("fox")
    assert [hit.session_id for hit in hits[:2]] == [other, other]  # denser matches rank first
    assert {hit.session_id for hit in hits} == {sid, other}
    assert all("<mark>fox</mark>" in hit.snippet for hit in hits)
    assert [hit.rank for hit in hits] == sorted(hit.rank for hit in hits)
    assert {hit.role for hit in await store.search("fox", session_id=sid)} == {"user", "assistant"}
    assert len(await store.search("fox", limit=1)) == 1
    assert await store.search("Fóx LAZY") == await store.search("fox lazy")  # words, folded


async def test_search_words_are_not_operators_unless_fts5_is_asked_for(
    store: SQLiteStore,
) -> None:
    sid, _, _ = await answered(store, 'say "NOT" OR (this) - and* near(that) content: here')
    for query in ['"NOT"', "OR (this", "- and*", "NEAR(that", "content:", 'here"']:
        assert await store.search(query), query
    assert len(await store.search('"say NOT" OR nowhere', syntax="fts5")) == 2
    for bad in ['"unterminated', "OR", "fox AND", "nosuchcolumn:fox"]:
        with pytest.raises(BadRequest, match="not an FTS5 query"):
            await store.search(bad, syntax="fts5")
    for empty in ["  ", "\x00"]:
        with pytest.raises(BadRequest, match="empty"):
            await store.search(empty)
    assert len(await store.search("say\x00that")) == 2  # NUL would end an FTS5 string
    with pytest.raises(BadRequest, match="surrogate"):
        await store.search("say \ud800")
    await store.delete_session(sid)
    assert await store.search("say") == []  # deleted messages leave the index


async def test_the_migration_indexes_messages_stored_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for version, sql in load_migrations():
            if version <= 4:
                conn.executescript(sql)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO sessions VALUES ('s', '', NULL, 't', 't')")
        for index, text in enumerate(["an old needle", "an older haystack"]):
            conn.execute(
                "INSERT INTO messages (id, session_id, parent_id, role, content, created_at) "
                "VALUES (?, 's', ?, 'user', ?, 't')",
                (f"m{index}", f"m{index - 1}" if index else None, text),
            )
    store = SQLiteStore(path)
    await store.open()
    try:
        [hit] = await store.search("needle")
        assert (hit.message_id, hit.session_id) == ("m0", "s")
        assert (await session_of(store, "s")).active_leaf_id == "m1"
    finally:
        await store.close()
