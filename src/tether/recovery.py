"""Start-up after a crash: close what the dead process left open, turns and journals alike.

A process killed mid-turn (kill -9, power loss, OOM) leaves a `turns` row for each turn it was
running and a journal without an end for each request (its row is written with the user's
message, so even a request killed before its first frame has one). Before the server accepts
anything:

1. Each journal's frames tell what its client was sent of the answer: the text chunks after the
   last tool frame (earlier text belongs to a stored message with tool calls). Its row names the
   user message (so does its `processing` frame, if that was journaled).
2. `Store.close_open_turns` stores each open turn's answer as `interrupted`, with that text.
3. Each open journal gets the final frame its request never sent, so that a `resume` after the
   restart replays what the client may have missed and then ends, as every resume does:
   - the turn was open: `complete`, `finish_reason: "interrupted"`, naming the stored answer;
   - the answer was stored but its `complete` not journaled: `complete` with the stored answer's
     finish reason;
   - no `processing` was journaled (the client was never told the turn was accepted), or the
     stored answer is an error: `error` with code `interrupted`; when the question was stored,
     the error also names `session_id`, `user_message_id` and the answer's `message_id`, so the
     client learns where its question went.
   A recovered `complete` has `recovered: true` in its metadata; its usage and timings are zero
   or null (the process that knew them is gone). A `chat` sent again with its request_id and
   question gets these frames (`tether.runs`), not a second turn.

On a shared store (PostgreSQL) "dead" means a replica whose lease expired: `Store.orphans`
names them (and keeps two replicas from recovering at once); the living recover them at start-up
and every `recovery_interval_sec` while they run (`keep_recovering`), never a living one's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, cast, get_args

import structlog

from tether.engines.base import FinishReason, Usage
from tether.events import Timings
from tether.protocol import (
    AnswerFacts,
    ChunkBody,
    CompleteBody,
    ErrorBody,
    FrameBody,
    ProcessingBody,
    RequestFrames,
    ToolCallBody,
    ToolResultBody,
    decode_frame,
)
from tether.store.base import (
    JournalAppend,
    JournalStore,
    Message,
    OpenJournal,
    Orphans,
    RecoveryStore,
)

log = structlog.get_logger("tether.recovery")


@dataclass(frozen=True, slots=True)
class JournalFacts:
    """What one open journal says about its request."""

    user_message_id: str | None  # from its row, or its `processing` frame
    answer_text: str  # text chunks after the last tool frame
    ended: bool  # its last frame is already final (only the end mark was lost)
    accepted: bool  # its `processing` frame was journaled: the client may have been told


def journal_facts(journal: OpenJournal) -> JournalFacts:
    user_message_id = journal.user_message_id
    text: list[str] = []
    accepted = ended = False
    for frame in map(decode_frame, journal.frames):
        match frame.body:
            case ProcessingBody():
                accepted = True
                user_message_id = frame.body.user_message_id
            case ChunkBody(kind="text", text=chunk):
                text.append(chunk)
            case ToolCallBody() | ToolResultBody():
                text.clear()
        ended = frame.final
    return JournalFacts(user_message_id, "".join(text), ended, accepted)


class _RecoveringStore(RecoveryStore, JournalStore, Protocol):
    pass


async def recover(store: _RecoveringStore) -> None:
    """Close the open turns and journals dead processes left (see the module docstring)."""
    async with store.orphans() as orphans:
        await _recover(store, orphans)


async def _recover(store: _RecoveringStore, orphans: Orphans) -> None:
    journals = await store.open_journals(orphans)
    facts = {journal.request_id: journal_facts(journal) for journal in journals}
    partial_answers = {
        fact.user_message_id: fact.answer_text
        for fact in facts.values()
        if fact.user_message_id is not None
    }
    closed = await store.close_open_turns(orphans, partial_answers)
    for turn_id, answer in closed.items():
        log.warning(
            "turn.interrupted",
            session_id=answer.session_id,
            user_message_id=turn_id,
            message_id=answer.id,
            kept_chars=len(answer.content),
        )
    appends = [
        await _final_append(store, journal, facts[journal.request_id], closed)
        for journal in journals
    ]
    await store.append_journals(appends)
    if appends:
        log.warning("journals.recovered", requests=len(appends), replicas=orphans.replicas)


async def keep_recovering(store: _RecoveringStore, interval_sec: float) -> None:
    """Recover every `interval_sec` (a shared store: the replicas whose leases expire meanwhile),
    until cancelled; a failed round is logged and the next one tries again."""
    while True:
        await asyncio.sleep(interval_sec)
        try:
            await recover(store)
        except Exception:
            log.exception("recovery.failed")


async def _final_append(
    store: _RecoveringStore, journal: OpenJournal, facts: JournalFacts, closed: dict[str, Message]
) -> JournalAppend:
    seq = len(journal.frames)
    if facts.ended:
        return JournalAppend(journal.request_id, seq, [], ended=True)
    numbering = RequestFrames(journal.request_id)
    numbering.next_seq = seq
    body = await _final_body(store, facts, closed)
    return JournalAppend(journal.request_id, seq, [numbering.next(body).text], ended=True)


async def _final_body(
    store: _RecoveringStore, facts: JournalFacts, closed: dict[str, Message]
) -> FrameBody:
    turn_id = facts.user_message_id
    answer = closed.get(turn_id) if turn_id is not None else None
    if answer is None and turn_id is not None:
        answer = await store.turn_answer(turn_id)
    if answer is None:
        return ErrorBody(
            "interrupted",
            "the server stopped before this request was accepted; "
            "its message may be stored without an answer",
        )
    if not facts.accepted:  # the client never learned the session: say where the question is
        return ErrorBody(
            "interrupted",
            f"the server stopped as this request was accepted; the question is stored in "
            f"session {answer.session_id} with its answer {answer.id} ({answer.status})",
            {"session_id": answer.session_id, "user_message_id": turn_id, "message_id": answer.id},
        )
    if answer.status == "error":  # the turn failed; why died with the process
        return ErrorBody(
            "interrupted", f"the request failed and the server stopped; answer {answer.id}"
        )
    return CompleteBody(
        answer.id,
        _finish_reason(answer),
        Usage(answer.prompt_tokens or 0, answer.completion_tokens or 0),
        Timings(ttft_ms=None, tokens_per_s=None, total_ms=0.0),
        AnswerFacts(recovered=True),
    )


def _finish_reason(answer: Message) -> FinishReason:
    if answer.status == "interrupted":
        return "interrupted"
    for reason in get_args(FinishReason):
        if answer.finish_reason == reason:
            return cast(FinishReason, reason)
    return "stop"
