"""The Store contract: every store runs these tests through a subclass providing fixtures.

A subclass defines a `new_store` fixture: a function that builds (unopened) another store on the
test's own fresh database, as a server restarting on it would (SQLite: the same file;
PostgreSQL: the same database, a new replica). `store` is one of them, open. Class attributes
say what differs by design: the search syntax the store reads besides `words`, a query in it
that finds a phrase, and one that it refuses (None: it refuses none).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import pytest

from tether.chat import ChatService, ToolPolicy, Turn
from tether.engines.base import ToolCall
from tether.engines.echo import EchoEngine
from tether.engines.router import EngineRouter
from tether.errors import BadRequest, Conflict, NotFound
from tether.events import ChatEvent
from tether.protocol import ChunkBody, ProcessingBody, RequestFrames
from tether.recovery import recover
from tether.store.base import (
    Agent,
    JournalAnswered,
    JournalAppend,
    JournalEnd,
    JournalStart,
    JournalTail,
    Message,
    NewMessage,
    OpenJournal,
    SearchSyntax,
    Session,
    Store,
    TurnStart,
)
from tether.tokens import digest
from tether.tools.executor import ToolExecutor
from tether.tools.loader import build_registry

NewStore = Callable[[], Store]
Restart = Callable[[Store], Awaitable[Store]]
CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
CALL = (ToolCall("c1", "calculator", {"expression": "6*7"}),)


async def session_of(store: Store, session_id: str) -> Session:
    session = await store.get_session(session_id)
    assert session is not None
    return session


async def answered(store: Store, text: str, session_id: str | None = None) -> list[str]:
    """A plain turn and its answer; returns [session_id, user message id, answer id]."""
    start = await store.begin_turn(session_id=session_id, text=text)
    answer = await store.end_turn(
        start.session.id,
        start.message.id,
        NewMessage("assistant", f"re: {text}"),
        turn_id=start.message.id,
    )
    return [start.session.id, start.message.id, answer.id]


async def ignore(_event: ChatEvent) -> None:
    pass


def opening(start: TurnStart) -> str:
    """A journal's opening frame, rendered from what begin_turn stored."""
    return f"processing {start.session.id} {start.message.id}"


def content_bytes(messages: list[Message]) -> int:
    return sum(len(m.content.encode()) for m in messages)


def reference_tail(branch: list[Message], covering: int | None) -> list[Message]:
    """What `Store.branch` must give at `covering`: the shortest suffix of `branch` starting at
    a user message whose contents hold at least `covering` UTF-8 bytes (the whole branch when
    none does, or `covering` None)."""
    if covering is None:
        return branch
    for start in range(len(branch) - 1, -1, -1):
        suffix = branch[start:]
        if branch[start].role == "user" and content_bytes(suffix) >= covering:
            return suffix
    return branch


class StoreContract:
    native_syntax: ClassVar[SearchSyntax]
    native_phrase_query: ClassVar[str]  # finds the phrase "say NOT" or the word nowhere
    native_bad_query: ClassVar[str | None]

    @pytest.fixture
    async def store(self, new_store: NewStore) -> AsyncIterator[Store]:
        opened = new_store()
        await opened.open()
        yield opened
        await opened.close()

    @pytest.fixture
    async def restart(self, new_store: NewStore) -> AsyncIterator[Restart]:
        """`restart(store)`: close it (as a process that died after its last commit) and give
        another open on the same database; closed at the end."""
        opened: list[Store] = []

        async def again(store: Store) -> Store:
            await store.close()
            fresh = new_store()
            await fresh.open()
            opened.append(fresh)
            return fresh

        yield again
        for store in opened:
            await store.close()

    # -- sessions -------------------------------------------------------------------------------

    async def test_sessions_list_newest_first_and_delete_cascades(self, store: Store) -> None:
        old = await store.begin_turn(session_id=None, text="old")
        new = await store.begin_turn(session_id=None, text="new")
        await store.begin_turn(session_id=old.session.id, text="old again")
        assert [s.id for s in await store.list_sessions()] == [old.session.id, new.session.id]
        assert [s.id for s in await store.list_sessions(limit=1, offset=1)] == [new.session.id]
        assert await store.delete_session(old.session.id)
        assert not await store.delete_session(old.session.id)
        assert await store.list_messages(old.session.id) == []
        assert await store.get_session(old.session.id) is None
        assert await store.delete_all_sessions() == 1
        assert await store.list_sessions() == []

    async def test_sessions_created_together_list_newest_first(self, store: Store) -> None:
        created = [await store.create_session(f"s{i}") for i in range(5)]
        listed = await store.list_sessions()
        assert [s.id for s in listed] == [s.id for s in reversed(created)]
        assert listed[-1] == created[0]

    async def test_ensure_session_creates_a_named_one_once(self, store: Store) -> None:
        assert await store.ensure_session("seed-named")
        assert not await store.ensure_session("seed-named")
        session = await session_of(store, "seed-named")
        assert (session.title, session.agent_id, session.active_leaf_id) == ("", None, None)
        start = await store.begin_turn(session_id="seed-named", text="hi")
        assert start.session.id == "seed-named"
        assert not start.created_session

    async def test_a_session_gets_its_first_messages_title_and_keeps_a_given_one(
        self, store: Store
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

    # -- agents ---------------------------------------------------------------------------------

    async def test_agents_upsert_and_sessions_keep_them(self, store: Store) -> None:
        saved = await store.put_agent(Agent("rev", "Reviewer", system_prompt="Be precise."))
        assert saved.created_at
        assert saved == await store.get_agent("rev")
        updated = await store.put_agent(Agent("rev", "Reviewer 2", default_options={"t": 1}))
        assert (updated.name, updated.default_options, updated.created_at) == (
            "Reviewer 2",
            {"t": 1},
            saved.created_at,
        )
        await store.put_agent(Agent("abc", "Alpha", markdown_context="# ctx"))
        assert [a.name for a in await store.list_agents()] == ["Alpha", "Reviewer 2"]
        session = await store.create_session("s", agent_id="rev")
        assert session.agent_id == "rev"
        with pytest.raises(NotFound):
            await store.create_session("s", agent_id="ghost")
        with pytest.raises(NotFound):
            await store.begin_turn(session_id=None, text="x", agent_id="ghost")
        assert await store.delete_agent("rev")
        assert not await store.delete_agent("rev")
        assert await store.get_agent("rev") is None
        assert (await session_of(store, session.id)).agent_id is None

    # -- turns: questions, branches, answers ---------------------------------------------------

    async def test_begin_turn_creates_a_session_when_none_given(self, store: Store) -> None:
        start = await store.begin_turn(session_id=None, text="hello", title="hello")
        assert start.created_session
        assert start.session.title == "hello"
        assert start.session.active_leaf_id == start.message.id
        assert (start.message.role, start.message.parent_id) == ("user", None)
        assert await store.list_messages(start.session.id) == [start.message]
        assert await session_of(store, start.session.id) == start.session

    async def test_begin_turn_with_an_unknown_session_invents_nothing(self, store: Store) -> None:
        with pytest.raises(NotFound, match="nope"):
            await store.begin_turn(session_id="nope", text="hello")
        assert await store.list_sessions() == []

    async def test_turns_chain_and_parent_ids_branch(self, store: Store) -> None:
        first = await store.begin_turn(session_id=None, text="one")
        sid = first.session.id
        answer = await store.append_message(sid, first.message.id, NewMessage("assistant", "1"))
        second = await store.begin_turn(session_id=sid, text="two")
        assert second.message.parent_id == answer.id
        branch = await store.begin_turn(session_id=sid, text="edited two", parent_id=answer.id)
        assert [m.content for m in await store.branch(second.message.id)] == ["one", "1", "two"]
        assert [m.content for m in await store.branch(branch.message.id)] == [
            "one",
            "1",
            "edited two",
        ]
        assert [m.content for m in await store.list_messages(sid)] == [
            "one",
            "1",
            "two",
            "edited two",
        ]
        assert await store.branch("no-such-message") == []

    async def test_a_branch_tail_covers_its_bytes_from_a_user_message(self, store: Store) -> None:
        start = await store.begin_turn(session_id=None, text="q0 é")  # 5 bytes: é is two
        sid, leaf = start.session.id, start.message.id
        for i in range(1, 6):
            answer = await store.append_message(sid, leaf, NewMessage("assistant", f"a{i - 1}"))
            leaf = (await store.begin_turn(session_id=sid, text=f"q{i}")).message.id
        # q0 é, a0, q1, a1, ..., q5 (each 2 bytes but the first): the whole branch has 11.
        whole = [m.content for m in await store.branch(leaf)]
        assert len(whole) == 11
        assert whole[0] == "q0 é"
        assert [m.content for m in await store.branch(leaf, covering_bytes=None)] == whole
        assert [m.content for m in await store.branch(leaf, covering_bytes=1)] == ["q5"]
        # 3 bytes reach past q5 into a4, so the tail goes on up to the user message q4.
        assert [m.content for m in await store.branch(leaf, covering_bytes=3)] == [
            "q4",
            "a4",
            "q5",
        ]
        assert [m.content for m in await store.branch(leaf, covering_bytes=10**6)] == whole
        assert [m.content for m in await store.branch(answer.id, covering_bytes=2)] == [
            "q4",
            "a4",
        ]

    async def test_a_session_s_tails_turn_after_turn_are_its_branch_s(self, store: Store) -> None:
        """Each turn's tail as the store composes it from the last one's (the branch read
        turn after turn, at several bounds) is the tail of the branch walked up by parent_id
        from the session's messages."""
        start = await store.begin_turn(session_id=None, text="q0")
        sid, leaf = start.session.id, start.message.id
        leaves = [leaf]
        for i in range(1, 25):
            answer = await store.append_message(sid, leaf, NewMessage("assistant", "a" * (i % 7)))
            if i % 5 == 0:  # beside the branch: another answer to the same question
                await store.append_message(sid, leaf, NewMessage("assistant", "other"))
            leaf = (
                await store.begin_turn(session_id=sid, text=f"q{i}", parent_id=answer.id)
            ).message.id
            leaves += [answer.id, leaf]
        by_id = {m.id: m for m in await store.list_messages(sid)}
        for leaf in leaves:
            walked = [by_id[leaf]]
            while walked[-1].parent_id is not None:
                walked.append(by_id[walked[-1].parent_id])
            branch = walked[::-1]
            for bound in (None, 0, 9, 40):
                tail = await store.branch(leaf, covering_bytes=bound)
                assert [m.id for m in tail] == [m.id for m in reference_tail(branch, bound)]

    async def test_a_parent_from_another_session_is_refused(self, store: Store) -> None:
        one = await store.begin_turn(session_id=None, text="a")
        two = await store.begin_turn(session_id=None, text="b")
        with pytest.raises(NotFound):
            await store.begin_turn(session_id=two.session.id, text="c", parent_id=one.message.id)
        assert len(await store.list_messages(two.session.id)) == 1

    async def test_messages_round_trip_every_field(self, store: Store) -> None:
        start = await store.begin_turn(session_id=None, text="6*7?")
        sid, turn = start.session.id, start.message.id
        said = await store.append_to_turn(
            sid, turn, NewMessage("assistant", "", tool_calls=CALL), turn_id=turn
        )
        result = await store.append_to_turn(
            sid,
            said.id,
            NewMessage("tool", "42", name="calculator", tool_call_id="c1", status="error"),
            turn_id=turn,
        )
        answer = await store.end_turn(
            sid,
            result.id,
            NewMessage(
                "assistant",
                "It is 42 ✓",
                status="cancelled",
                model="m",
                finish_reason="cancelled",
                prompt_tokens=7,
                completion_tokens=3,
            ),
            turn_id=turn,
        )
        history = await store.branch(answer.id)
        assert history == [start.message, said, result, answer]
        assert history[1].tool_calls == CALL
        assert (history[2].name, history[2].tool_call_id, history[2].status) == (
            "calculator",
            "c1",
            "error",
        )
        assert (answer.model, answer.prompt_tokens, answer.completion_tokens) == ("m", 7, 3)
        assert await store.list_messages(sid) == history
        assert (await session_of(store, sid)).active_leaf_id == answer.id

    async def test_an_edit_goes_beside_the_edited_message_and_becomes_active(
        self, store: Store
    ) -> None:
        sid, first, first_answer = await answered(store, "one")
        _, second, _ = await answered(store, "two", sid)
        edit = await store.begin_turn(session_id=sid, text="two, edited", sibling_of=second)
        assert edit.message.parent_id == first_answer
        assert edit.session.active_leaf_id == edit.message.id
        root_edit = await store.begin_turn(session_id=sid, text="one, edited", sibling_of=first)
        assert root_edit.message.parent_id is None  # the first message's edit is a second root
        assert [m.content for m in await store.list_messages(sid)] == [
            "one",
            "re: one",
            "two",
            "re: two",
            "two, edited",
            "one, edited",
        ]

    async def test_an_edit_names_a_user_message_of_the_session(self, store: Store) -> None:
        sid, _, answer = await answered(store, "one")
        _, other_message, _ = await answered(store, "elsewhere")
        with pytest.raises(NotFound, match="assistant message"):
            await store.begin_turn(session_id=sid, text="x", sibling_of=answer)
        with pytest.raises(NotFound, match="is not in session"):
            await store.begin_turn(session_id=sid, text="x", sibling_of=other_message)
        with pytest.raises(BadRequest):
            await store.begin_turn(session_id=sid, text="x", sibling_of=answer, parent_id=answer)
        assert len(await store.list_messages(sid)) == 2

    async def test_a_regeneration_stores_no_second_user_message(self, store: Store) -> None:
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
        # Any message of the turn names it: an answer, a tool call, a tool result.
        call = await store.append_message(sid, user, NewMessage("assistant", "", tool_calls=CALL))
        result = await store.append_message(
            sid, call.id, NewMessage("tool", "42", tool_call_id="c1")
        )
        for message_id in (first_answer, call.id, result.id):
            start = await store.begin_regeneration(message_id, session_id=sid)
            assert start.message.id == user
            await store.end_turn(sid, user, NewMessage("assistant", "x"), turn_id=user)
        other, _, other_answer = await answered(store, "elsewhere")
        for message_id, session_id in (("no-such", sid), (other_answer, sid), (user, other)):
            with pytest.raises(NotFound, match="is not in session"):
                await store.begin_regeneration(message_id, session_id=session_id)

    async def test_the_active_leaf_moves_with_turns_and_on_request(self, store: Store) -> None:
        sid, first, _ = await answered(store, "one")
        _, second, old_leaf = await answered(store, "two", sid)
        edit = await store.begin_turn(session_id=sid, text="two, edited", sibling_of=second)
        assert (await session_of(store, sid)).active_leaf_id == edit.message.id
        # Switching by a message follows its newest children down to a leaf ...
        assert (await store.set_active_leaf(sid, first)).id == edit.message.id
        assert (await store.set_active_leaf(sid, second)).id == old_leaf
        assert (await session_of(store, sid)).active_leaf_id == old_leaf
        # ... and a plain turn continues the active branch, not the newest message.
        _, third, _ = await answered(store, "three", sid)
        assert [m.content for m in await store.branch(third)][-3:] == ["two", "re: two", "three"]
        with pytest.raises(NotFound):
            await store.set_active_leaf(sid, "no-such-message")

    async def test_a_turns_answer_is_found_down_its_chain_not_a_later_branch(
        self, store: Store
    ) -> None:
        start = await store.begin_turn(session_id=None, text="6*7?")
        sid, turn = start.session.id, start.message.id
        assert await store.turn_answer(turn) is None
        said = await store.append_message(sid, turn, NewMessage("assistant", "", tool_calls=CALL))
        result = await store.append_message(
            sid, said.id, NewMessage("tool", "42", tool_call_id="c1")
        )
        assert await store.turn_answer(turn) is None
        answer = await store.end_turn(sid, result.id, NewMessage("assistant", "42"), turn_id=turn)
        await store.append_message(sid, result.id, NewMessage("assistant", "branch"))
        await store.begin_turn(session_id=sid, text="a branch", parent_id=turn)
        assert await store.turn_answer(turn) == answer
        # A regeneration's answer is the newest under the question.
        await store.begin_regeneration(turn, session_id=sid)
        again = await store.end_turn(sid, turn, NewMessage("assistant", "twice"), turn_id=turn)
        assert await store.turn_answer(turn) == again

    # -- concurrency ----------------------------------------------------------------------------

    async def test_concurrent_turns_on_one_session_take_turns(self, store: Store) -> None:
        session = await store.create_session("busy")

        async def turn(i: int) -> None:
            start = await store.begin_turn(session_id=session.id, text=f"q{i}")
            await store.end_turn(
                session.id,
                start.message.id,
                NewMessage("assistant", f"a{i}"),
                turn_id=start.message.id,
            )

        await asyncio.gather(*(turn(i) for i in range(60)))
        messages = await store.list_messages(session.id)
        assert len(messages) == 120
        # Each question went after what was the session's end when it came: never two under
        # one parent (they would if two turns read the active leaf at once).
        parents = [m.parent_id for m in messages if m.role == "user"]
        assert len(set(parents)) == len(parents)
        ids = {m.id for m in messages}
        assert all(m.parent_id in ids for m in messages if m.parent_id is not None)

    async def test_a_turn_reads_its_own_message_while_others_read(self, store: Store) -> None:
        done = asyncio.Event()
        missed: list[str] = []

        async def reader() -> None:
            while not done.is_set():
                await store.list_sessions(limit=50)

        async def turns(index: int) -> None:
            for round_ in range(5):
                start = await store.begin_turn(session_id=None, text=f"hello {index}.{round_}")
                if [m.id for m in await store.branch(start.message.id)] != [start.message.id]:
                    missed.append(start.message.id)
                if await store.get_session(start.session.id) is None:
                    missed.append(start.session.id)

        readers = [asyncio.create_task(reader()) for _ in range(8)]
        try:
            await asyncio.gather(*(turns(i) for i in range(20)))
        finally:
            done.set()
            await asyncio.gather(*readers)
        assert missed == []

    # -- restarts and recovery ------------------------------------------------------------------

    async def test_everything_survives_a_restart(self, store: Store, restart: Restart) -> None:
        sid, user, answer = await answered(store, "remember me")
        await store.put_agent(Agent("a", "A"))
        again = await restart(store)
        assert [(m.id, m.content) for m in await again.list_messages(sid)] == [
            (user, "remember me"),
            (answer, "re: remember me"),
        ]
        assert [a.id for a in await again.list_agents()] == ["a"]

    async def test_open_turns_are_closed_as_interrupted_after_a_restart(
        self, store: Store, restart: Restart
    ) -> None:
        plain = await store.begin_turn(session_id=None, text="never answered")
        tooled = await store.begin_turn(session_id=None, text="6*7?")
        call = await store.append_to_turn(
            tooled.session.id,
            tooled.message.id,
            NewMessage("assistant", "Let me", tool_calls=CALL),
            turn_id=tooled.message.id,
        )
        finished = await answered(store, "answered")
        again = await restart(store)
        async with again.orphans() as orphans:
            closed = await again.close_open_turns(
                orphans, {plain.message.id: "half an ans", tooled.message.id: "Let me"}
            )
        assert set(closed) == {plain.message.id, tooled.message.id}
        assert closed[plain.message.id].parent_id == plain.message.id
        assert [(m.role, m.status, m.content) for m in closed.values()] == [
            ("assistant", "interrupted", "half an ans"),
            ("assistant", "interrupted", ""),
        ]
        tooled_branch = await again.branch(closed[tooled.message.id].id)
        assert [(m.role, m.tool_call_id, m.status) for m in tooled_branch] == [
            ("user", None, "complete"),
            ("assistant", None, "complete"),
            ("tool", "c1", "error"),
            ("assistant", None, "interrupted"),
        ]
        assert tooled_branch[1].id == call.id
        assert "interrupted" in tooled_branch[2].content
        assert await again.turn_answer(tooled.message.id) == closed[tooled.message.id]
        assert len(await again.list_messages(finished[0])) == 2  # a closed turn is left alone
        async with again.orphans() as orphans:  # nothing is left open
            assert await again.close_open_turns(orphans) == {}
            assert await again.open_journals(orphans) == []

    async def test_the_chat_service_closes_every_turn_it_opens(
        self, store: Store, restart: Restart
    ) -> None:
        tools = ToolExecutor(build_registry(["builtin"]), timeout_s=5)
        service = ChatService(
            store=store,
            engine=EngineRouter([EchoEngine()]),
            system_prompt="You are a test.",
            tool_policy=ToolPolicy(runner=tools),
        )
        await service.run_turn(Turn(request_id="a", text="plain"), ignore)
        await service.run_turn(Turn(request_id="b", text=CALC), ignore)
        await tools.aclose()
        again = await restart(store)
        async with again.orphans() as orphans:
            assert await again.close_open_turns(orphans) == {}

    async def test_recovery_ends_a_dead_processes_request_with_the_text_it_sent(
        self, store: Store, restart: Restart
    ) -> None:
        start = await store.begin_turn(
            session_id=None, text="tell me", journal=JournalStart("r", "token-digest")
        )
        numbering = RequestFrames("r")
        processing = numbering.next(
            ProcessingBody("s", start.message.id, "echo", 0, created_session=True)
        ).text
        chunk = numbering.next(ChunkBody("text", "Once")).text
        await store.append_journals([JournalAppend("r", 0, [processing, chunk])])
        again = await restart(store)
        await recover(again)
        answer = await again.turn_answer(start.message.id)
        assert answer is not None
        assert (answer.status, answer.content) == ("interrupted", "Once")
        journal = await again.read_journal("r")
        assert journal is not None
        assert journal[:2] == [processing, chunk]
        assert '"finish_reason":"interrupted"' in journal[2]
        async with again.orphans() as orphans:
            assert await again.open_journals(orphans) == []

    # -- the journal ----------------------------------------------------------------------------

    async def test_journals_grow_by_appends_and_are_replaced_when_an_id_is_reused(
        self, store: Store, restart: Restart
    ) -> None:
        assert await store.read_journal("r1") is None
        await store.append_journals(
            [JournalAppend("r1", 0, ["a", "b"]), JournalAppend("r2", 0, ["x"])]
        )
        await store.append_journals([JournalAppend("r1", 2, ["c"], ended=True)])
        assert await store.read_journal("r1") == ["a", "b", "c"]
        assert await store.read_journal("r2") == ["x"]
        await store.append_journals([JournalAppend("r1", 0, ["new"])])  # the id was reused
        assert await store.read_journal("r1") == ["new"]
        await store.append_journals([JournalAppend("r3", 0, ["y"])])
        await store.append_journals([JournalAppend("r3", 1, [], ended=True)])  # only the end
        again = await restart(store)
        async with again.orphans() as orphans:
            assert await again.open_journals(orphans) == [
                OpenJournal("r2", ["x"]),
                OpenJournal("r1", ["new"]),
            ]

    async def test_a_journal_row_names_its_question_and_token(self, store: Store) -> None:
        start = await store.begin_turn(
            session_id=None, text="what?", journal=JournalStart("q1", "digest-1")
        )
        record = await store.journal_record("q1")
        assert record is not None
        assert (record.token_digest, record.question_digest) == ("digest-1", digest("what?"))
        assert await store.journal_record("nope") is None
        await store.end_turn(
            start.session.id,
            start.message.id,
            NewMessage("assistant", "that"),
            turn_id=start.message.id,
        )
        await store.append_journals([JournalAppend("q1", 0, ["p", "c"], ended=True)])
        # A started journal row is kept as begin_turn wrote it.
        assert await store.journal_record("q1") == record
        regenerated = await store.begin_regeneration(
            start.message.id, session_id=start.session.id, journal=JournalStart("q1", "digest-2")
        )
        assert regenerated.message == start.message
        assert await store.read_journal("q1") is None  # the old journal went with its row
        renewed = await store.journal_record("q1")
        assert renewed is not None
        assert renewed.token_digest == "digest-2"

    async def test_the_opening_frame_is_committed_with_the_question(
        self, store: Store, restart: Restart
    ) -> None:
        journal = JournalStart("r", digest("token"), opening, 0)
        start = await store.begin_turn(session_id=None, text="hello", journal=journal)
        assert await store.read_journal("r") == [opening(start)]
        again = await restart(store)  # (committed: a dead process leaves it for recovery)
        async with again.orphans() as orphans:
            assert await again.open_journals(orphans) == [
                OpenJournal("r", [opening(start)], start.message.id)
            ]

    async def test_a_refused_turn_commits_no_opening_frame(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.begin_turn(
                session_id="nope", text="q", journal=JournalStart("r", "d", opening, 0)
            )
        assert await store.read_journal("r") is None
        assert await store.journal_record("r") is None

    async def test_the_answer_commits_the_last_frames_and_ends_the_journal(
        self, store: Store, restart: Restart
    ) -> None:
        start = await store.begin_turn(
            session_id=None, text="hi", journal=JournalStart("r", "d", opening, 0)
        )
        await store.append_journals([JournalAppend("r", 1, ["chunk 1"])])
        assert await store.journal_tail("r", 0) == JournalTail(["chunk 1"], False)
        answer = await store.end_turn(
            start.session.id,
            start.message.id,
            NewMessage("assistant", "hi", id="answer-1"),
            turn_id=start.message.id,
            journal=JournalEnd("r", 2, ["chunk 2", "complete"]),
        )
        assert answer.id == "answer-1"  # the id the turn named (its final frame says it)
        assert (await session_of(store, start.session.id)).active_leaf_id == "answer-1"
        assert await store.journal_tail("r", -1) == JournalTail(
            [opening(start), "chunk 1", "chunk 2", "complete"], True
        )
        assert await store.turn_answer(start.message.id) == answer
        again = await restart(store)
        async with again.orphans() as orphans:
            assert await again.open_journals(orphans) == []  # ended
            assert await again.close_open_turns(orphans) == {}  # closed

    async def test_the_answers_last_frames_may_overlap_frames_on_their_way(
        self, store: Store
    ) -> None:
        # The journal writer's frames 1-2 may commit before the answer (SQLite's one line) or
        # after it (PostgreSQL's pool): either way each seq is in once and the journal ends
        # with every frame.
        for request_id, writer_first in (("before", True), ("after", False)):
            start = await store.begin_turn(
                session_id=None, text="q", journal=JournalStart(request_id, "d", opening, 0)
            )
            on_their_way = JournalAppend(request_id, 1, ["chunk 1", "chunk 2"])
            if writer_first:
                await store.append_journals([on_their_way])
            await store.end_turn(
                start.session.id,
                start.message.id,
                NewMessage("assistant", "a"),
                turn_id=start.message.id,
                journal=JournalEnd(request_id, 1, ["chunk 1", "chunk 2", "complete"]),
            )
            if not writer_first:
                await store.append_journals([on_their_way])
            assert await store.journal_tail(request_id, -1) == JournalTail(
                [opening(start), "chunk 1", "chunk 2", "complete"], True
            )

    async def test_a_question_asked_again_under_its_ended_request_is_answered_already(
        self, store: Store
    ) -> None:
        first = await store.begin_turn(
            session_id=None, text="same", journal=JournalStart("r", "d1", opening, 0)
        )
        await store.end_turn(
            first.session.id,
            first.message.id,
            NewMessage("assistant", "a"),
            turn_id=first.message.id,
            journal=JournalEnd("r", 1, ["complete"]),
        )
        with pytest.raises(JournalAnswered) as answered:
            await store.begin_turn(
                session_id=first.session.id,
                text="same",
                journal=JournalStart("r", "d2", opening, 0),
            )
        assert (answered.value.request_id, answered.value.token_digest) == ("r", "d1")
        assert len(await store.list_messages(first.session.id)) == 2  # nothing stored
        assert await store.read_journal("r") == [opening(first), "complete"]
        record = await store.journal_record("r")
        assert record is not None
        assert record.token_digest == "d1"
        # Another question under the same id is a new request: its journal replaces the old.
        other = await store.begin_turn(
            session_id=first.session.id, text="other", journal=JournalStart("r", "d3", opening, 0)
        )
        assert await store.journal_tail("r", -1) == JournalTail([opening(other)], False)

    async def test_a_question_still_running_under_its_request_is_not_answered(
        self, store: Store
    ) -> None:
        # (the journal has not ended: a chat sent again meets `conflict` in the run registry)
        await store.append_journals([JournalAppend("r", 0, ["queued"], token_digest="d")])
        start = await store.begin_turn(
            session_id=None, text="q", journal=JournalStart("r", "d", opening, 1)
        )
        # Frames journaled while the turn waited for its session stay: begin_turn opens the
        # same row with its question and adds its opening after them.
        assert await store.read_journal("r") == ["queued", opening(start)]
        record = await store.journal_record("r")
        assert record is not None
        assert record.question_digest == digest("q")

    async def test_a_request_id_used_again_to_regenerate_replaces_its_journal(
        self, store: Store
    ) -> None:
        start = await store.begin_turn(session_id=None, text="q")
        sid, question = start.session.id, start.message.id
        await store.end_turn(sid, question, NewMessage("assistant", "a"), turn_id=question)
        for answer in ("b", "c"):  # the same request_id regenerates the same question twice
            again = await store.begin_regeneration(
                question, session_id=sid, journal=JournalStart("r", "d", opening, 0)
            )
            await store.end_turn(
                sid,
                question,
                NewMessage("assistant", answer),
                turn_id=question,
                journal=JournalEnd("r", 1, [f"complete {answer}"]),
            )
            assert await store.read_journal("r") == [opening(again), f"complete {answer}"]

    async def test_journals_are_pruned_whole_by_age_and_by_rows(self, store: Store) -> None:
        await store.append_journals([JournalAppend("running", 0, ["1", "2", "3", "4"])])
        await store.append_journals([JournalAppend("first", 0, ["1", "2", "3"], ended=True)])
        await store.append_journals([JournalAppend("second", 0, ["1", "2"], ended=True)])
        await store.append_journals([JournalAppend("third", 0, ["1", "2"], ended=True)])
        assert await store.prune_journals(max_age_sec=3600, max_rows=100) == 0
        # At most 5 frames of ended journals: "first" goes whole, although dropping one of its
        # frames would do; the running journal is never pruned.
        assert await store.prune_journals(max_age_sec=3600, max_rows=5) == 3
        assert await store.read_journal("first") is None
        assert await store.journal_record("first") is None
        assert await store.read_journal("second") == ["1", "2"]
        assert await store.read_journal("third") == ["1", "2"]
        assert await store.prune_journals(max_age_sec=3600, max_rows=5) == 0
        assert await store.prune_journals(max_age_sec=0, max_rows=100) == 4
        assert await store.read_journal("running") == ["1", "2", "3", "4"]

    # -- search ---------------------------------------------------------------------------------

    async def test_search_ranks_marks_and_filters(self, store: Store) -> None:
        sid, _, _ = await answered(store, "the quick brown fox jumps over the lazy dog")
        other, _, _ = await answered(store, "a fox, a fox, a fox in the henhouse")
        await answered(store, "nothing to see")
        hits = await store.search("fox")
        assert [hit.session_id for hit in hits[:2]] == [other, other]  # denser matches first
        assert {hit.session_id for hit in hits} == {sid, other}
        assert all("<mark>fox</mark>" in hit.snippet for hit in hits)
        assert [hit.rank for hit in hits] == sorted(hit.rank for hit in hits)
        assert {hit.role for hit in await store.search("fox", session_id=sid)} == {
            "user",
            "assistant",
        }
        assert len(await store.search("fox", limit=1)) == 1
        assert await store.search("FOX Lazy") == await store.search("fox lazy")  # case folded
        assert len(await store.search("fox lazy")) == 2  # every word must occur
        assert await store.search("zebra") == []

    async def test_search_words_are_not_operators_unless_the_native_syntax_is_asked_for(
        self, store: Store
    ) -> None:
        sid, _, _ = await answered(store, 'say "NOT" OR (this) - and near(that) content: here')
        for query in ['"NOT"', "OR (this", "- and", "NEAR(that", "content:", 'here"']:
            assert await store.search(query), query
        assert len(await store.search(self.native_phrase_query, syntax=self.native_syntax)) == 2
        if self.native_bad_query is not None:
            with pytest.raises(BadRequest):
                await store.search(self.native_bad_query, syntax=self.native_syntax)
        other: SearchSyntax = "websearch" if self.native_syntax == "fts5" else "fts5"
        with pytest.raises(BadRequest, match=self.native_syntax):
            await store.search("say", syntax=other)
        for empty in ["  ", "\x00"]:
            with pytest.raises(BadRequest, match="empty"):
                await store.search(empty)
        with pytest.raises(BadRequest, match="surrogate"):
            await store.search("say \ud800")
        await store.delete_session(sid)
        assert await store.search("say") == []  # deleted messages leave the index

    async def test_search_finds_messages_of_every_kind(self, store: Store) -> None:
        start = await store.begin_turn(session_id=None, text="what is the weather")
        said = await store.append_message(
            start.session.id, start.message.id, NewMessage("assistant", "checking", tool_calls=CALL)
        )
        await store.append_message(
            start.session.id, said.id, NewMessage("tool", "sunny weather", tool_call_id="c1")
        )
        hits = await store.search("weather")
        assert sorted(hit.role for hit in hits) == ["tool", "user"]
        assert {hit.session_title for hit in hits} == {""}
        messages: list[Message] = await store.list_messages(start.session.id)
        assert {hit.message_id for hit in hits} == {messages[0].id, messages[2].id}

    # -- following a journal, signals -----------------------------------------------------------

    async def test_a_journals_tail_is_its_frames_after_a_seq_and_whether_it_ended(
        self, store: Store
    ) -> None:
        assert await store.journal_tail("t", -1) is None
        await store.append_journals([JournalAppend("t", 0, ["a", "b", "c"])])
        assert await store.journal_tail("t", -1) == JournalTail(["a", "b", "c"], False)
        assert await store.journal_tail("t", 1) == JournalTail(["c"], False)
        assert await store.journal_tail("t", 2) == JournalTail([], False)
        await store.append_journals([JournalAppend("t", 3, ["d"], ended=True)])
        assert await store.journal_tail("t", 2) == JournalTail(["d"], True)
        assert await store.journal_tail("t", 3) == JournalTail([], True)
        async with store.journal_changes("t") as changed:
            assert not changed.is_set()  # (changes by other processes only set it)

    async def test_a_cancel_request_reaches_every_handler(self, store: Store) -> None:
        asked: list[str] = []
        both = asyncio.Event()

        def handler(request_id: str) -> None:
            asked.append(request_id)
            if len(asked) == 2:
                both.set()

        store.on_cancel_request(handler)
        store.on_cancel_request(handler)
        await store.request_cancel("some-request")
        async with asyncio.timeout(10):
            await both.wait()
        assert asked == ["some-request", "some-request"]
