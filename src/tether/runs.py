"""Running requests, independent of sockets: their frames, who watches them, resume, shutdown.

A chat request runs as a `Run` in the server's `RunRegistry` (built by `create_app`, one per
app), not inside the socket that started it. The run renders every event of its turn into a
protocol frame with the next `seq` and appends it to its frame log before any socket sees it;
sockets *watch* runs through a `Watcher`, a cursor into that log that hands each frame once and
in order to the socket's outgoing buffer (a `FrameSink`). A run never waits on a socket: the
buffer is drained by the socket's own writer, and a client too slow to take its frames is
dropped (`tether.transports.ws_outbox`) like any closed socket. A socket that closes stops
watching; the run goes on (see the disconnect policy).

What is promised (and tested in tests/service/test_ws_resume.py, tests/e2e/test_reliability.py):

- Resume, while the server runs: `{"type": "resume", "request_id", "after_seq", "token"}` on
  any socket (the token is needed from a socket other than the one that started it) sends every
  frame of that request with a seq above `after_seq`, in order, each once, then the
  live frames if it still runs, so the client sees seq contiguous from `after_seq + 1` to the
  final `complete` (or `error`). This holds for a running request, and for an ended one for at
  least `reliability.journal_max_age_sec` after it ended (unless `journal_max_rows` pushed it
  out sooner); then, or for an id never seen, `not_found`. An ended request with no frame
  after `after_seq` sends its final frame again, so that the client learns it is over.
- Where the frames live: each frame is journaled in the store (`events`) before any socket is sent
  it. The frames of a turn's own commits ride with them (the run is its turn's `TurnJournal`):
  `processing` is committed in `begin_turn`'s transaction, with the user's message, and
  published the moment it returns; the answer's last frames, its final frame and the journal's
  end in `end_turn`'s, with the answer. The frames between (chunks, tool frames) go to an
  in-memory log and mark the run dirty; the registry's journal writer hands the new frames of
  every dirty run to the store in one job, which the store commits with whatever else waits
  (group commit, `tether.store.group_commit`: while one commits, the next batch gathers, so a
  stream costs about one commit per batch, not per token), and only then *publishes* them:
  `Run.durable` moves up and the live watchers queue them. `Run.journaled` counts the frames
  handed to the store (committed or on their way), so the writer hands no frame over twice.
  A store may commit its calls out of order (PostgreSQL's pool; SQLite's line keeps them in
  order), so the opening rides with `begin_turn` only when every frame before it is committed,
  and the answer repeats the frames not known committed (a seq keeps its first frame): the
  journal ends holding every frame. The turn itself never waits for the journal. A run
  leaves memory when its final frame is committed (`Run.finished`); until then sockets watch
  it, afterwards `resume` reads the store.
- Across a crash (kill -9): every frame a client was sent is in the journal. At start-up
  (`tether.recovery`) each journal the dead process left open gets its final frame: `complete`
  with `finish_reason: "interrupted"` naming the stored answer, whose content is the text the
  journal holds; a resume then replays the frames and that final frame. Journal commits skip the
  fsync (`synchronous=NORMAL`; messages keep `FULL`): on power loss, rather than a process crash,
  the last frames of a running request may be missing, never a message.
- Request ids are client-chosen and name a request server-wide: a `chat` whose `request_id` is
  running (or whose final frame is not out yet) gets `conflict`. A `chat` with the id *and text*
  of an ended request is its client retrying (it never learned the outcome: a dropped
  connection, a crash before `processing` reached it): it gets that request's journal replayed,
  never a second copy of the question. `begin_turn` finds this out in its own transaction
  (`JournalAnswered`); a chat that must journal a frame before its question is stored (it
  waits for its session, or is refused) reads the journal's row first. Reusing the id of an
  ended request for another question starts a new request whose journal replaces the old one.
  Use unique ids (UUIDs).
- Requests belong to whoever started them. Each run draws a resume token (`tether.tokens`),
  sent in its `processing` frame as `resume_token` and stored, hashed, with its journal row (by
  `begin_turn`, in the transaction of the user's message; so a request killed before its first
  frame is journaled is still found by recovery and by a retried `chat`). `resume` and `cancel`
  from another socket must present it (`tether.transports.ws`).
- A run's frames are its own: replies about it outside its turn (a `conflict` for a second chat
  with its id, `rate_limited`, a `pong` or a `bad_request` naming it) go to the socket that sent
  the frame they answer, without `seq`, and are never journaled, so every resume replays exactly
  the request's frames and its seq stays contiguous.

Disconnects (`reliability.on_disconnect`): "continue" (default) lets a request nobody watches run
on for `disconnect_grace_sec` (a resume within it re-attaches), then cancels it; "cancel" cancels
it at once. A cancelled answer is stored with what was generated, status `cancelled`.

An unwatched answer yields the model to a waiting request: a local model serves one request at
a time (FIFO), so a run nobody watches would make the next user wait out the grace. A run learns
its model from its own `processing` frame (`model`, `queue_position`). When a request is
accepted with `queue_position` > 0, every run on that model that nobody watches is cancelled at
once; and when the last socket leaves a run while a watched request on its model is waiting
(accepted with `queue_position` > 0, no output yet), it is cancelled at once instead of after
the grace. Either way it is stored as `cancelled` and stays resumable; engines without a queue
(echo, openai, mlc: `queue_position` 0) never trigger it.

Shutdown (`drain`): new chats are refused with `busy`, running requests may finish for
`reliability.drain_timeout_sec`, the rest are cancelled (stored as `cancelled`, their watchers
get `complete` with `finish_reason: "cancelled"`) and their journals committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from tether.chat import ChatService, Regenerate, Turn, TurnControl
from tether.coalesce import DeltaMerger
from tether.config import ReliabilitySettings
from tether.errors import Busy, Conflict
from tether.events import Accepted, ChatEvent, Failed, TextDelta, ThinkingDelta
from tether.journal_pace import JournalPace
from tether.metrics import Metrics, Transport
from tether.protocol import (
    FrameBody,
    RequestFrames,
    ServerFrame,
    decode_frame,
    frame_body,
    processing_body,
)
from tether.store.base import (
    JournalAnswered,
    JournalAppend,
    JournalEnd,
    JournalStart,
    JournalStore,
    RunSignals,
    TurnStart,
)
from tether.tokens import digest, new_token

log = structlog.get_logger("tether.runs")

EndHook = Callable[["Watcher"], None]  # the watcher has queued its run's final frame

# How often ended journals are pruned (by age and row count), at most.
PRUNE_INTERVAL_SEC = 60.0
# After a drain or close cancelled the runs, how long they get to store their answers.
CANCEL_GRACE_SEC = 10.0
# How many frames a run may log ahead of the journal before its turn waits for the writer.
MAX_FRAMES_AHEAD = 8
# Following a request another replica runs: how long to wait for a wake-up before reading its
# journal again anyway (the journal is the truth; a notification lost with a connection must
# not stall a follower).
FOLLOW_RECHECK_SEC = 2.0


class RegistryStore(JournalStore, RunSignals, Protocol):
    """What the registry needs of the store: the journal, and the other replicas' signals."""


class FrameSink(Protocol):
    """A socket's outgoing buffer, as a watcher sees it."""

    def put(self, frame: ServerFrame) -> None:
        """Queue `frame` to be sent; never waits."""

    async def room(self) -> bool:
        """Wait until replayed frames may be queued; False once the socket is closing."""


class Watcher:
    """One socket's cursor into one run's frame log: queues each frame once, in seq order.

    A *live* watcher gets each new frame from the run as it is logged (`push`, never waiting);
    one that joined late (or rewound) first `replay`s the log at the socket's pace, then goes
    live. The cursor moves only in code that does not await between reading the log and
    queueing, so no frame is doubled or missed across the switch.
    """

    def __init__(self, run: Run, sink: FrameSink, after_seq: int, on_end: EndHook | None) -> None:
        self.run = run
        self.last_seq = after_seq  # the highest seq this watcher has queued (or was told to skip)
        self.live = False
        self._sink = sink
        self._on_end = on_end
        self._queued_final = False

    def push(self) -> None:
        """Queue the journaled frames after `last_seq` (the run calls this for live watchers)."""
        while self.last_seq + 1 < self.run.durable:
            self._queue_next()

    def _queue_next(self) -> None:
        self.last_seq += 1
        frame = self.run.frames[self.last_seq]
        self._queued_final = self._queued_final or frame.final
        self._sink.put(frame)

    async def replay(self) -> None:
        """Queue the journaled frames after `last_seq` as the socket takes them, then go live
        (or end)."""
        while self.last_seq + 1 < self.run.durable:
            if not await self._sink.room():
                return  # the socket is closing
            self._queue_next()
        # Caught up, and no await since the check: the run's next frame will be pushed.
        if self.run.finished:
            self.ended()
        else:
            self.live = True

    async def rewind(self, after_seq: int) -> None:
        """Send the frames after `after_seq` again (a resume on a socket already watching)."""
        self.live = False
        self.last_seq = min(self.last_seq, after_seq)
        await self.replay()

    def ended(self) -> None:
        """The run is finished. A watcher told to skip past its final frame (an `after_seq` at
        or beyond it) gets that frame again, as the resume of an ended request does: every
        watch ends in a final frame."""
        frames = self.run.frames
        if not self._queued_final and frames and frames[-1].final:
            self._queued_final = True
            self._sink.put(frames[-1])
        if self._on_end is not None:
            self._on_end(self)


class RunState(enum.Enum):
    RUNNING = "running"  # the turn goes on: frames may be added
    ENDED = "ended"  # the turn is over (no frame will be added); its end is not journaled yet
    FINISHED = "finished"  # ... and every frame and the end are journaled (and published)


@dataclass(frozen=True, slots=True)
class _Closing:
    """The last frames a run handed to the store with its answer (`Run.closing`)."""

    end: JournalEnd  # the frames, its last one `final`'s
    final: ChatEvent  # the event the turn emits once the answer is stored
    frame: ServerFrame  # its frame
    asked: float  # perf_counter when they were handed over
    journaled: int  # `Run.journaled` before: what the journal writer had handed over


class Run:
    """One chat request: its turn's task, its frame log and its watchers.

    It is also its turn's `TurnJournal` (`tether.chat`): its `processing` frame is committed
    with the user's message and sent as soon as that commit returns; its last frames and its
    end are committed with the answer."""

    def __init__(self, registry: RunRegistry, request_id: str) -> None:
        self.registry = registry
        self.request_id = request_id
        self.frames: list[ServerFrame] = []  # frames[seq]; append-only
        self.journaled = 0  # frames[:journaled] are handed to the store (committed or on the way)
        self.durable = 0  # frames[:durable] are committed: only those go to sockets
        self.watchers: list[Watcher] = []
        self.control = TurnControl()
        self.task: asyncio.Task[None] | None = None
        self.state = RunState.RUNNING
        self.done = asyncio.Event()  # set once `finished`
        self.model: str | None = None  # from its `processing` frame
        self.waiting = False  # accepted behind others in its model's queue, no output yet
        self.token = new_token()  # its `processing` frame's resume_token
        self.token_digest = digest(self.token)
        self._numbering = RequestFrames(request_id)
        self._merging = DeltaMerger()  # text deltas waiting for the journal writer's next batch
        self._caught_up = asyncio.Event()  # the journal is less than MAX_FRAMES_AHEAD behind
        self._grace: asyncio.TimerHandle | None = None
        self._opened: ServerFrame | None = None  # `processing`, as begin_turn last rendered it
        self._opened_asked = 0.0
        self._closing: _Closing | None = None  # the last frames, on their way with the answer
        self._end_journaled = False  # the journal's end was committed with the answer
        self._retry_checked = False  # whether this is a retried chat is known
        self._first_output: int | None = None  # seq of its first text (or thinking) frame

    # -- frames -------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """The turn is over: no frame will be added."""
        return self.state is not RunState.RUNNING

    @property
    def finished(self) -> bool:
        """The turn is over and every frame is journaled (so every live watcher has it)."""
        return self.state is RunState.FINISHED

    def post(self, body: FrameBody) -> ServerFrame:
        """Number `body` with the next seq and add it to the log, to be journaled and then sent
        to the live watchers; never waits."""
        self.logged()  # text deltas waiting go before it
        frame = self._numbering.next(body)
        self.frames.append(frame)
        self.registry.journal_later(self)
        return frame

    def record(self, event: ChatEvent) -> None:
        """Log the turn's `event` (as `post` does): text and thinking deltas wait to be joined
        with the next ones until the journal writer takes them (`logged`), so that a stream
        faster than the journal costs a frame per batch, not per delta."""
        if not isinstance(event, TextDelta | ThinkingDelta):
            self.post(frame_body(event))
            return
        self._log_joined(self._merging.add(event))
        self.registry.journal_later(self)

    def logged(self) -> int:
        """Render the deltas waiting into a frame; how many frames the log holds."""
        self._log_joined(self._merging.take())
        return len(self.frames)

    def journal_append(self) -> JournalAppend | None:
        """What the journal writer commits of this run: its frames not yet on their way to the
        store, with the journal's end when its final frame is among them (so the journal ends
        in the commit that a client learns the outcome from, and a retry sent on seeing
        `complete` finds the request ended) or its turn is over. The frames are then on their
        way. None: nothing to commit (a run whose end was committed with its answer, or the
        replay of an answered request, has nothing left)."""
        if self._end_journaled:
            return None
        count = self.logged()
        ended = self.ended or (count > 0 and self.frames[count - 1].final)
        if count <= self.journaled and not (ended and count > 0):
            return None
        first, self.journaled = self.journaled, count
        texts = [frame.text for frame in self.frames[first:count]]
        return JournalAppend(self.request_id, first, texts, ended, token_digest=self.token_digest)

    def _log_joined(self, joined: TextDelta | ThinkingDelta | None) -> None:
        if joined is not None:
            if self._first_output is None:
                self._first_output = len(self.frames)
            self.frames.append(self._numbering.next(frame_body(joined)))

    @property
    def urgent(self) -> bool:
        """Its frames must not wait for the journal's pace (`tether.journal_pace`): its first
        output is not out yet, or it has ended (its client waits for the final frame)."""
        return self.ended or self._first_output is None or self.durable <= self._first_output

    async def keep_pace(self) -> None:
        """Let the other runs, the sockets' writers and the journal go first; wait while this
        run is MAX_FRAMES_AHEAD frames ahead of the journal (so that a flood of frames cannot
        run away from its journal, nor make every batch its own)."""
        while len(self.frames) - self.durable >= MAX_FRAMES_AHEAD:
            self._caught_up.clear()
            await self._caught_up.wait()
        await asyncio.sleep(0)

    # -- its turn's journal (tether.chat.TurnJournal) -----------------------------------------

    def opening(self, accepted: Callable[[TurnStart], Accepted]) -> JournalStart:
        """The journal row for `begin_turn`, with the `processing` frame it commits. Frames
        logged before (`queued`) must be committed first (a store may commit its calls in any
        order: PostgreSQL's pool), or the frame goes the usual way, after them."""
        seq = len(self.frames)
        if self.durable < seq or self._merging:
            return JournalStart(self.request_id, self.token_digest)

        asked = time.perf_counter()

        def render(start: TurnStart) -> str:
            self._opened = ServerFrame(
                self.request_id, seq, processing_body(accepted(start), self.token)
            )
            self._opened_asked = asked
            return self._opened.text

        return JournalStart(self.request_id, self.token_digest, render, seq)

    def closing(self, final: ChatEvent) -> JournalEnd:
        """The frames not known committed and `final`'s, for `end_turn` to commit with the
        answer and end the journal (with those the journal writer has on their way: whichever
        commits first, the journal ends with all its frames); the writer leaves them alone."""
        self.logged()
        first = self.durable
        frame = ServerFrame(self.request_id, len(self.frames), frame_body(final))
        texts = [f.text for f in self.frames[first:]]
        end = JournalEnd(self.request_id, first, [*texts, frame.text])
        self._closing = _Closing(end, final, frame, time.perf_counter(), self.journaled)
        self.journaled = len(self.frames)
        return end

    def _committed_with_turn(self, event: ChatEvent) -> bool:
        """Log `event`'s frame if the store committed it with the turn's own write (the
        opening with the user's message, the final frame with the answer) and send it now;
        False: it goes the usual way."""
        if isinstance(event, Accepted) and self._opened is not None:
            frame, self._opened = self._opened, None
            if frame.seq != len(self.frames):
                return False
            append = JournalAppend(self.request_id, len(self.frames), [frame.text])
            asked = self._opened_asked
        elif self._closing is not None:
            closing, self._closing = self._closing, None
            if event is not closing.final:  # the answer was not stored: its frames go back
                self.journaled = closing.journaled
                return False
            frame, self._end_journaled, asked = closing.frame, True, closing.asked
            # (counted once: those the journal writer had on their way are its commit's)
            new = closing.end.frames[closing.journaled - closing.end.first_seq :]
            append = JournalAppend(self.request_id, closing.journaled, new, ended=True)
        else:
            return False
        self.registry.metrics.journal_committed([append], time.perf_counter() - asked)
        self.frames.append(frame)
        self._numbering.next_seq = len(self.frames)
        self.journaled = len(self.frames)
        self.publish(len(self.frames), ended=False)
        return True

    async def _check_retry(self, turn: Turn) -> None:
        """Before a chat's first frame that is not committed with its question (it waits, or
        is refused): raise JournalAnswered if its request_id ended having asked this (a client
        retrying); `begin_turn` checks this itself, in its own transaction."""
        if self._retry_checked:
            return
        self._retry_checked = True
        if turn.journal is None or isinstance(turn.redo, Regenerate):
            return
        record = await self.registry.store.journal_record(self.request_id)
        asked = None if record is None else record.question_digest
        if asked is not None and hmac.compare_digest(asked, digest(turn.text)):
            raise JournalAnswered(self.request_id, None if record is None else record.token_digest)

    async def _replay(self, answered: JournalAnswered) -> None:
        """The chat was answered before: its frames are the stored journal's."""
        texts = await self.registry.store.read_journal(self.request_id) or []
        self.frames = [decode_frame(text) for text in texts]
        self.journaled = len(self.frames)
        if answered.token_digest is not None:
            self.token_digest = answered.token_digest
        self._end_journaled = True

    def publish(self, durable: int, ended: bool) -> None:
        """`frames[:durable]` are committed (and, with `ended`, the journal's end)."""
        self.durable = max(self.durable, durable)
        if ended:
            self.state = RunState.FINISHED
        self._caught_up.set()
        for watcher in self.watchers:
            if watcher.live:
                watcher.push()
        if self.finished:
            watchers, self.watchers = self.watchers, []
            for watcher in watchers:
                if watcher.live:  # one still replaying ends when its replay does
                    watcher.ended()
            self.done.set()

    # -- watchers -----------------------------------------------------------------------------

    def watch(self, sink: FrameSink, after_seq: int, on_end: EndHook | None = None) -> Watcher:
        """Start watching after `after_seq`; the caller then awaits `replay()`, which queues the
        frames already logged and then makes the watcher live, so every frame after `after_seq`
        goes out once, in order."""
        watcher = Watcher(self, sink, after_seq, on_end)
        self.watchers.append(watcher)
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
            log.info("run.reattached", request_id=self.request_id)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """The watcher's socket is gone. With nobody left watching, apply the disconnect policy."""
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        if self.ended or self.watchers:
            return
        policy = self.registry.settings
        if self.model is not None and self.registry.someone_waits_for(self.model, besides=self):
            log.info("run.orphaned", request_id=self.request_id, action="yield", model=self.model)
            self.control.cancel()
        elif policy.on_disconnect == "cancel" or policy.disconnect_grace_sec <= 0:
            log.info("run.orphaned", request_id=self.request_id, action="cancel")
            self.control.cancel()
        elif self._grace is None:
            log.info(
                "run.orphaned",
                request_id=self.request_id,
                action="continue",
                grace_sec=policy.disconnect_grace_sec,
            )
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(policy.disconnect_grace_sec, self._grace_expired)

    def _grace_expired(self) -> None:
        self._grace = None
        if not self.watchers and not self.ended:
            log.info("run.grace_expired", request_id=self.request_id)
            self.control.cancel()

    # -- the turn -----------------------------------------------------------------------------

    async def execute(self, turn: Turn, transport: Transport) -> None:
        async def emit(event: ChatEvent) -> None:
            if isinstance(event, Accepted):
                self._retry_checked = True
                self.model, self.waiting = event.model, event.queue_position > 0
                if self.waiting:
                    self.registry.yield_model(self)
                if not self._committed_with_turn(event):
                    self.post(processing_body(event, self.token))
            else:
                self.waiting = False
                if not self._committed_with_turn(event):
                    if not self._retry_checked:
                        await self._check_retry(turn)
                    self.record(event)
            await self.keep_pace()  # an engine that never awaits must not hog the loop

        observed = self.registry.metrics.observe_turn(transport, emit)
        try:
            await self.registry.chat.run_turn(turn, observed, self.control)
        except JournalAnswered as answered:
            await self._replay(answered)
        except Exception:
            log.exception("run.crashed", request_id=self.request_id)
            await observed(Failed("internal", "internal error; the server log has the details"))
        finally:
            if self.state is RunState.RUNNING:  # (FINISHED already when its final frame is)
                self.state = RunState.ENDED
            self.waiting = False
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            if self._end_journaled:  # committed with the answer: nothing left to write
                self.publish(len(self.frames), ended=True)
            else:
                self.registry.journal_later(self)  # the end itself is journaled too
            # Shielded: even when this task is cancelled (a hard close), its frames are
            # committed (and so sent) before the run leaves memory.
            await asyncio.shield(self.registry.retire(self))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class RunRegistry:
    """The server's running requests, by request_id, and the journal of ended ones."""

    def __init__(
        self,
        chat: ChatService,
        store: RegistryStore,
        settings: ReliabilitySettings,
        metrics: Metrics,
    ) -> None:
        self.chat = chat
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.accepting = True
        self._runs: dict[str, Run] = {}
        self._dirty: dict[Run, None] = {}  # runs with frames to journal, in order
        self._writer: asyncio.Task[None] | None = None
        self._pace = JournalPace(settings.journal_interval_ms / 1000)
        self._nudge: asyncio.Future[None] | None = None  # set: the writer's pace is cut short
        self._last_prune = 0.0

    async def open(self) -> None:
        self.store.on_cancel_request(self._cancel_requested)
        await self._prune()

    def _cancel_requested(self, request_id: str) -> None:
        """Another replica (or socket) asked the store to cancel `request_id`: if it runs here,
        it is cancelled (stored as cancelled, its watchers everywhere get `complete`)."""
        run = self._runs.get(request_id)
        if run is not None and not run.ended:
            log.info("run.cancel_requested", request_id=request_id)
            run.control.cancel()

    async def cancel_elsewhere(self, request_id: str) -> None:
        """Cancel `request_id`, which does not run here (maybe on another replica)."""
        await self.store.request_cancel(request_id)

    async def running_elsewhere(self, request_id: str) -> bool:
        """Whether `request_id` has a journal that has not ended while no run of it is here:
        another replica runs it (or ran it and died, until recovery ends it)."""
        if request_id in self._runs or not self.store.shared:
            return False
        tail = await self.store.journal_tail(request_id, 0x7FFFFFFF)
        return tail is not None and not tail.ended

    async def follow(self, request_id: str, after_seq: int) -> AsyncIterator[ServerFrame]:
        """The journaled frames of `request_id` after `after_seq`, as they are committed by
        whichever replica runs it, each once, in order, to its final frame. The journal is the
        truth; the store's change events (NOTIFY) only say when to read it again."""
        async with self.store.journal_changes(request_id) as changed:
            seq = after_seq
            while True:
                changed.clear()  # before the read: a commit after it sets it again
                tail = await self.store.journal_tail(request_id, seq)
                if tail is None:
                    return  # pruned meanwhile
                for text in tail.frames:
                    frame = decode_frame(text)
                    seq = frame.seq if frame.seq is not None else seq + 1
                    yield frame
                if tail.ended:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FOLLOW_RECHECK_SEC):
                        await changed.wait()

    def get(self, request_id: str) -> Run | None:
        return self._runs.get(request_id)

    def running(self) -> list[Run]:
        return [run for run in self._runs.values() if not run.ended]

    def start(
        self, turn: Turn, sink: FrameSink, on_end: EndHook | None = None, *, transport: Transport
    ) -> Watcher:
        """Start `turn` as a run watched through `sink`, counted in the metrics as `transport`'s.
        Raises Conflict (its request_id is running) or Busy (the server is shutting down)."""
        if not self.accepting:
            raise Busy("the server is shutting down; try again shortly")
        previous = self._runs.get(turn.request_id)
        if previous is not None and not previous.finished:
            raise Conflict(f"request {turn.request_id!r} is already running")
        run = Run(self, turn.request_id)
        self._runs[turn.request_id] = run  # a finished run of the same id is leaving memory
        watcher = run.watch(sink, -1, on_end)
        watcher.live = True  # nothing is logged yet: no replay
        turn = dataclasses.replace(turn, journal=run)
        run.task = asyncio.create_task(run.execute(turn, transport), name=f"run:{turn.request_id}")
        return watcher

    # -- one model, one request at a time: unwatched answers give way ---------------------------

    def yield_model(self, waiter: Run) -> None:
        """`waiter` was accepted behind others on its model: cancel the runs on that model that
        nobody watches, so that it does not wait out their grace."""
        for run in self.running():
            if (
                run is not waiter
                and run.model == waiter.model
                and not run.watchers
                and not run.control.cancelled
            ):
                log.info(
                    "run.yielded_model",
                    request_id=run.request_id,
                    model=run.model,
                    to=waiter.request_id,
                )
                run.control.cancel()

    def someone_waits_for(self, model: str, *, besides: Run) -> bool:
        """Whether a watched run other than `besides` waits in `model`'s queue."""
        return any(
            run is not besides and run.waiting and run.watchers and run.model == model
            for run in self.running()
        )

    async def journal(self, request_id: str) -> list[ServerFrame] | None:
        """Every journaled frame of request_id: from memory while its run is there, else from
        the store (raises FrameError for a journaled text that is no frame)."""
        run = self._runs.get(request_id)
        if run is not None:
            return run.frames[: run.durable]
        texts = await self.store.read_journal(request_id)
        return None if texts is None else [decode_frame(text) for text in texts]

    async def token_digest(self, request_id: str) -> str | None:
        """The digest of request_id's resume token (None: no such request, or none stored)."""
        run = self._runs.get(request_id)
        if run is not None:
            return run.token_digest
        record = await self.store.journal_record(request_id)
        return None if record is None else record.token_digest

    # -- the journal writer: new frames of every run, committed in batches, then sent -----------

    def journal_later(self, run: Run) -> None:
        """`run` has frames (or its end) to journal: the writer takes it with its next batch."""
        self._dirty[run] = None
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_journals(), name="journal-writer")
        elif self._nudge is not None and run.urgent:
            _wake(self._nudge)

    async def _keep_pace(self) -> None:
        """Wait as long as the pace asks, or until an urgent run has frames."""
        delay = self._pace.delay(urgent=any(run.urgent for run in self._dirty))
        if delay > 0:
            loop = asyncio.get_running_loop()
            self._nudge = nudge = loop.create_future()
            timer = loop.call_later(delay, _wake, nudge)
            try:
                await nudge
            finally:
                timer.cancel()
                self._nudge = None
        self._pace.started()

    async def retire(self, run: Run) -> None:
        """Wait until the ended run's journal is committed, then forget the run."""
        await run.done.wait()
        if self._runs.get(run.request_id) is run:
            del self._runs[run.request_id]

    async def _write_journals(self) -> None:
        while self._dirty:
            await self._keep_pace()
            # Each run's frames not yet on their way; a run whose last frames are on their way
            # with its answer (or whose opening is with its question) has nothing here, and
            # is published by that commit, not this one.
            batch = [(run, run.journal_append()) for run in self._dirty if not run.finished]
            self._dirty.clear()
            appends = [append for _, append in batch if append is not None]
            try:
                started = time.perf_counter()
                await self.store.append_journals(appends)
                self.metrics.journal_committed(appends, time.perf_counter() - started)
            except Exception:
                # The chat goes on: its frames are sent unjournaled (resume may then miss them);
                # the turn's own store writes will tell the client if the store is gone.
                log.exception("runs.journal_failed", requests=len(appends))
            for run, append in batch:
                try:
                    if append is not None:
                        run.publish(append.first_seq + len(append.frames), append.ended)
                    elif run.ended and not run.frames:  # nothing to journal: it is over
                        run.publish(0, ended=True)
                except Exception:  # one broken watcher must not stop every run's frames
                    log.exception("runs.publish_failed", request_id=run.request_id)
                    run.done.set()
            if time.monotonic() - self._last_prune > PRUNE_INTERVAL_SEC:
                await self._prune()

    async def _prune(self) -> None:
        self._last_prune = time.monotonic()
        try:
            deleted = await self.store.prune_journals(
                self.settings.journal_max_age_sec, self.settings.journal_max_rows
            )
        except Exception:
            log.exception("runs.prune_failed")
            return
        if deleted:
            log.info("runs.journal_pruned", frames=deleted)

    # -- shutdown -----------------------------------------------------------------------------

    async def drain(self, limit_sec: float | None = None) -> None:
        """Refuse new runs, let running ones finish for `limit_sec` (default:
        `reliability.drain_timeout_sec`), cancel the rest; return when every run has stored
        its answer and committed its journal."""
        self.accepting = False
        limit = self.settings.drain_timeout_sec if limit_sec is None else limit_sec
        tasks = {run.task for run in self._runs.values() if run.task is not None}
        if not tasks:
            return
        log.info("runs.draining", running=len(self.running()), timeout_sec=limit)
        _, pending = await asyncio.wait(tasks, timeout=limit)
        if pending:
            await self._cancel(pending)

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        runs = [run for run in self._runs.values() if run.task in tasks and not run.ended]
        log.info("runs.cancelling", running=len(runs))
        for run in runs:
            run.control.cancel()  # stops the phase running; the answer is stored as cancelled
        _, stuck = await asyncio.wait(tasks, timeout=CANCEL_GRACE_SEC)
        for task in stuck:  # did not stop within the grace: the turn stores `interrupted`
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)

    async def aclose(self) -> None:
        """Cancel whatever still runs (no drain happened, or a new run slipped in) and wait."""
        self.accepting = False
        tasks = {run.task for run in self._runs.values() if run.task is not None}
        if tasks:
            await self._cancel(tasks)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
