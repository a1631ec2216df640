"""ChatService: the transport-independent turn loop.

A turn: commit the user's message, tell the transport (`Accepted`), build the prompt from the
session's branch, stream the engine's answer through the detector, run any tool calls and loop,
then commit the answer and tell the transport (`Completed`). Transports cancel a turn through its
`TurnControl`; the answer so far is then stored and the turn completes as `cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import structlog

from tether.detector import (
    CallPiece,
    MalformedCall,
    PassthroughDetector,
    StreamDetector,
    TextPiece,
    ThoughtPiece,
    ToolCallDetector,
)
from tether.engines.base import (
    ChatMessage,
    Engine,
    EngineBusyError,
    EngineError,
    FinishReason,
    ForcedCall,
    GenerationOptions,
    GenerationRequest,
    ModelInfo,
    ToolCall,
    UnknownModelError,
    Usage,
)
from tether.engines.router import EngineRouter
from tether.errors import BadRequest, NotFound, TetherError
from tether.events import (
    Accepted,
    ChatEvent,
    Completed,
    Failed,
    Queued,
    Started,
    StatelessEvent,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCallFinished,
    ToolCallsRequested,
    ToolCallStarted,
)
from tether.protocol import ChatOptions, ProtocolError, parse_options
from tether.session_turns import ONE_PROCESS, SessionHolds, SessionPlace, SessionTurns
from tether.store.base import (
    Agent,
    JournalEnd,
    JournalStart,
    Message,
    MessageStatus,
    NewMessage,
    TurnStart,
    TurnStore,
)
from tether.tools.base import ToolResult, ToolRunner, ToolSpec
from tether.tools.prompt import render_tools_prompt

EventSink = Callable[[ChatEvent], Awaitable[None]]
StatelessSink = Callable[[StatelessEvent], Awaitable[None]]
DeltaSink = Callable[[TextDelta | ThinkingDelta], Awaitable[None]]  # what both sinks take
DetectorFactory = Callable[[bool], StreamDetector]  # argument: whether tools are offered
T = TypeVar("T")

log = structlog.get_logger("tether.chat")

TITLE_CHARS = 60
# What a title drops of a first line written in markdown: a heading, quote or list marker at its
# start, emphasis and code marks, a link's target (its text stays).
_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+]\s+|\d+[.)]\s+)+")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_INLINE_MARK = re.compile(r"\*\*|__|~~|`+|(?<!\w)[*_]|[*_](?!\w)")


def title_of(text: str) -> str:
    """A new session's title: the first non-blank line of its first message as plain text (no
    markdown marks), at most TITLE_CHARS characters; "" when the message is blank."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    plain = _INLINE_MARK.sub("", _LINK.sub(r"\1", _LINE_MARK.sub("", line)))
    return " ".join(plain.split())[:TITLE_CHARS].rstrip()


@dataclass(frozen=True, slots=True)
class Edit:
    """The turn's text replaces the stored user message `message_id`: the new message goes
    beside it (same parent), a branch; the old one stays."""

    message_id: str


@dataclass(frozen=True, slots=True)
class Regenerate:
    """The turn answers a stored user message again (`message_id`, or the user message of the
    turn `message_id` belongs to): no user message is stored (the turn's `text` is unused), the
    new answer goes beside the earlier ones."""

    message_id: str


class TurnJournal(Protocol):
    """How a stored turn's frames ride on its own commits (`tether.runs.Run` is one): the frame
    saying it was accepted is committed with its user message, its last frames and the
    journal's end with its answer. Each is asked for just before the store call it goes with.
    """

    def opening(self, accepted: Callable[[TurnStart], Accepted]) -> JournalStart:
        """The journal row `begin_turn` opens, committing the frame of `accepted` (the turn's
        `Accepted` event, made from what `begin_turn` stores)."""
        ...

    def closing(self, final: ChatEvent) -> JournalEnd:
        """The journal's last frames, `final`'s among them (the event the turn emits once the
        answer is stored), for `end_turn` to commit with the answer."""
        ...


@dataclass(frozen=True, slots=True)
class Turn:
    request_id: str
    text: str
    session_id: str | None = None
    agent_id: str | None = None
    parent_id: str | None = None
    # As the client sent them: an agent's default_options fill in what they leave unset.
    options: ChatOptions = field(default_factory=ChatOptions)
    # A turn that branches from a stored message (needs `session_id`); None: a new message.
    redo: Edit | Regenerate | None = None
    journal: TurnJournal | None = None  # its frames' journal (tether.runs sets it)


@dataclass(frozen=True, slots=True)
class StatelessTurn:
    """A turn that carries its whole conversation (what an OpenAI request sends) and stores
    nothing: engine rounds over `messages`. `tools` are offered to the model (rendered into
    the system prompt as Tether's own are) but never run: the calls the model makes come back
    as `ToolCallsRequested` for the client to run. Tether's own tools are offered and run only
    when the service has `stateless_tools` (then `options.tools` decides, as on a stored turn;
    see `_StatelessSteps`). The server's system prompt leads `messages` that have no system
    message. `Completed.message_id` is the `request_id` (no message is stored)."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    options: ChatOptions = field(default_factory=ChatOptions)
    tools: tuple[ToolSpec, ...] = ()
    # The JSON schema the answer must follow (OpenAI's `response_format`); None: free text.
    json_schema: dict[str, Any] | None = None
    # The answer must be a call of one of `tools` (OpenAI's forcing `tool_choice`).
    forced_call: ForcedCall | None = None

    def generation(self) -> GenerationOptions:
        return dataclasses.replace(self.options.generation_options(), json_schema=self.json_schema)


class TurnCancelled(Exception):
    """The turn's control was cancelled (not the task running it)."""


class TurnControl:
    """A transport's handle on a running turn: `cancel()` stops whatever phase is running."""

    def __init__(self) -> None:
        self.cancelled = False
        self._phase: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._phase is not None:
            self._phase.cancel()

    async def run(self, phase: Coroutine[Any, Any, T]) -> T:
        """Run `phase` as a child task that `cancel()` can stop; raise TurnCancelled if it did."""
        if self.cancelled:
            phase.close()
            raise TurnCancelled
        task = asyncio.create_task(phase)
        self._phase = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.cancelled and task.cancelled() and current and not current.cancelling():
                raise TurnCancelled from None
            raise
        finally:
            self._phase = None


@dataclass(slots=True)
class _Round:
    """What one engine call produced so far (kept outside the task so cancellation keeps it)."""

    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    malformed: list[MalformedCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    metadata: dict[str, Any] = field(default_factory=dict)

    def record_usage(self, usage: Usage) -> None:
        """The engine's usage sink: called also when the round is cancelled mid-stream."""
        self.usage = usage


@dataclass(slots=True)
class _Clock:
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def timings(self) -> Timings:
        end = time.perf_counter()
        ttft = None if self.first_token is None else (self.first_token - self.started) * 1000
        rate = None
        if self.first_token is not None and self.completion_tokens:
            decode = end - self.first_token
            rate = self.completion_tokens / decode if decode > 0 else None
        return Timings(
            ttft_ms=None if ttft is None else round(ttft, 3),
            tokens_per_s=None if rate is None else round(rate, 2),
            total_ms=round((end - self.started) * 1000, 3),
        )


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _to_chat_message(message: Message) -> ChatMessage:
    return ChatMessage(
        role=message.role,
        content=message.content,
        name=message.name,
        tool_call_id=message.tool_call_id,
        tool_calls=message.tool_calls,
    )


def _with_defaults(options: ChatOptions, agent: Agent | None) -> ChatOptions:
    """The one place a turn's options meet its agent's `default_options`: the turn's own win
    key by key. Raises BadRequest for defaults stored before they were checked."""
    if agent is None or not agent.default_options:
        return options
    try:
        defaults = parse_options(agent.default_options, name="default_options")
    except ProtocolError as exc:
        raise BadRequest(f"agent {agent.id!r} has unusable {exc.message}") from None
    return options.over(defaults)


def _accepted(start: TurnStart, model: str, position: int) -> Accepted:
    """The event of a turn whose start `begin_turn` stored."""
    return Accepted(
        session_id=start.session.id,
        user_message_id=start.message.id,
        model=model,
        queue_position=position,
        created_session=start.created_session,
    )


def _error_event(exc: BaseException) -> Failed:
    if isinstance(exc, TetherError):
        return Failed(exc.code, exc.message)
    if isinstance(exc, UnknownModelError):
        return Failed("not_found", str(exc))
    if isinstance(exc, EngineBusyError):
        return Failed("busy", str(exc) or "the model is busy; try again shortly")
    if isinstance(exc, EngineError):
        return Failed("engine_error", str(exc))
    return Failed("internal", "internal error; the server log has the details")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a turn's answer is stored: the message's status and its finish reason."""

    status: MessageStatus
    finish_reason: FinishReason | None

    @classmethod
    def of(cls, finish: FinishReason) -> Outcome:
        """A turn that ran to `finish` (a cancelled one is stored as cancelled)."""
        status: MessageStatus = "cancelled" if finish == "cancelled" else "complete"
        return cls(status=status, finish_reason=finish)


INTERRUPTED = Outcome(status="interrupted", finish_reason="interrupted")  # server shutdown
FAILED = Outcome(status="error", finish_reason=None)


class _NoRunner:
    """A ToolRunner without tools (so none are ever offered)."""

    def specs(self) -> list[ToolSpec]:
        return []

    async def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        return [ToolResult(call.id, call.name, error="no tools are available") for call in calls]


def _call_detector(offered: bool) -> StreamDetector:
    return ToolCallDetector(detect_calls=offered)


def _passthrough(_offered: bool) -> StreamDetector:
    return PassthroughDetector()


class _LastPrompt:
    """The last fragment rendered and the specs it lists: the tools change rarely (an MCP
    server's list), the turns often."""

    __slots__ = ("specs", "text")

    def __init__(self) -> None:
        self.specs: list[ToolSpec] | None = None
        self.text = ""


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """The tools a turn may offer, as one: the `runner` that runs them, the `prompt` that lists
    specs in the system prompt ("" for none), and the `detector` factory (argument: whether
    tools are offered) that finds the calls in the streamed text. `NO_TOOLS` offers none and
    passes text through untouched."""

    runner: ToolRunner = field(default_factory=_NoRunner)
    prompt: Callable[[Sequence[ToolSpec]], str] = render_tools_prompt
    detector: DetectorFactory = _call_detector
    _last: _LastPrompt = field(default_factory=_LastPrompt, init=False, compare=False, repr=False)

    def offers(self, model_info: ModelInfo, options: ChatOptions) -> bool:
        """Tools go to models whose chat template declares tool support, unless the turn's
        options say; never when the runner has none."""
        wants = model_info.tools if options.tools is None else options.tools
        return bool(wants and self.runner.specs())

    def offered(self, offers: bool) -> tuple[ToolSpec, ...]:
        """The specs an engine request carries."""
        return tuple(self.runner.specs()) if offers else ()

    def fragment(self, offers: bool) -> str:
        """The system-prompt fragment listing the offered tools ("" when none are)."""
        if not offers:
            return ""
        specs = self.runner.specs()
        if specs != self._last.specs:
            self._last.text, self._last.specs = self.prompt(specs), specs
        return self._last.text


NO_TOOLS = ToolPolicy(detector=_passthrough)


class ChatService:
    def __init__(
        self,
        *,
        store: TurnStore,
        engine: EngineRouter,
        system_prompt: str,
        tool_policy: ToolPolicy = NO_TOOLS,
        stateless_tools: ToolPolicy = NO_TOOLS,
        max_tool_loops: int = 5,
        session_holds: SessionHolds = ONE_PROCESS,
    ) -> None:
        self.store = store
        self.engine = engine
        self.system_prompt = system_prompt
        self.tool_policy = tool_policy
        # The server's own tools a stateless turn offers and runs (`openai_api.run_server_tools`);
        # NO_TOOLS: it offers only its own, for the client to run.
        self.stateless_tools = stateless_tools
        self.max_tool_loops = max_tool_loops
        # Turns that continue a session's active branch go one at a time (tether.session_turns),
        # on every replica of a shared store (`session_holds`).
        self.sessions = SessionTurns()
        self.session_holds = session_holds
        # Turns accepted for a model whose first round has not reached the engine's line yet:
        # counted into `queue_position`, so turns arriving together are told distinct places.
        self._admitted: Counter[str] = Counter()

    def _admit(self, engine: Engine, model: str) -> tuple[int, Callable[[], None]]:
        """The turn's place in the model's line, and a one-shot release for when it reaches the
        engine (or ends). Raises EngineBusyError when the line is full."""
        admitted = self._admitted[model]
        position = engine.queue_position(model, arriving=admitted) + admitted
        self._admitted[model] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._admitted[model] -= 1

        return position, release

    # -- the turn ---------------------------------------------------------------------------

    async def run_turn(
        self, turn: Turn, emit: EventSink, control: TurnControl | None = None
    ) -> None:
        """Run one user turn to its end, telling `emit` every event. Never raises TetherErrors."""
        control = control or TurnControl()
        clock = _Clock()
        structlog.contextvars.bind_contextvars(request_id=turn.request_id)
        try:
            # A turn the server cannot answer (unknown model or agent, a full queue) is refused
            # before its message is stored, so it never leaves an unanswered message behind.
            agent = await self._agent_for(turn)
            turn = replace(turn, options=_with_defaults(turn.options, agent))
            engine, model_info = await self.engine.resolve(turn.options.model)
        except (TetherError, EngineError) as exc:
            await emit(_error_event(exc))
            return
        place = self._session_place(turn)
        try:
            if place is not None and not await self._wait_for_session(place, emit, control):
                return
            try:
                position, release = self._admit(engine, model_info.id)
            except EngineError as exc:
                await emit(_error_event(exc))
                return
            try:
                await self._run_admitted(
                    turn, agent, emit, control, clock, engine, model_info, position, release
                )
            finally:
                release()
        finally:
            if place is not None:
                await self._leave_session(place)

    def _session_place(self, turn: Turn) -> SessionPlace | None:
        """The turn's place in its session's line, when it continues the active branch (a
        session named, no parent_id of its own, not an edit or regeneration)."""
        if turn.session_id is None or turn.parent_id is not None or turn.redo is not None:
            return None
        return self.sessions.join(turn.session_id)

    async def _wait_for_session(
        self, place: SessionPlace, emit: EventSink, control: TurnControl
    ) -> bool:
        """Wait (saying so with `Queued`) until the session's earlier turns are answered, here
        and then on other replicas (one ahead there); False when the turn was cancelled
        meanwhile (nothing of it is stored)."""
        try:
            ready = place.ahead == 0
            while not ready:  # told again each time it moves up
                await emit(Queued(queue_position=place.ahead, waiting_for="session"))
                ready = await control.run(place.wait())
            place.hold = await control.run(
                self.session_holds.take(
                    place.session_id,
                    on_wait=lambda: emit(Queued(queue_position=1, waiting_for="session")),
                )
            )
        except TurnCancelled:
            await emit(
                Failed("cancelled", "cancelled while waiting for the session; nothing was stored")
            )
            return False
        return True

    async def _leave_session(self, place: SessionPlace) -> None:
        """The turn is done with its session: its hold let go, the next turn here goes."""
        try:
            if place.hold is not None:
                await self.session_holds.release(place.session_id, place.hold)
        except Exception:  # the hold is taken over once stale (tether.store.pg_session_holds)
            log.exception("session.release_failed", session_id=place.session_id)
        finally:
            self.sessions.leave(place)

    async def _run_admitted(
        self,
        turn: Turn,
        agent: Agent | None,
        emit: EventSink,
        control: TurnControl,
        clock: _Clock,
        engine: Engine,
        model_info: ModelInfo,
        position: int,
        release: Callable[[], None],
    ) -> None:
        try:
            start = await self._begin(turn, model_info.id, position)
        except (TetherError, UnknownModelError) as exc:
            await emit(_error_event(exc))
            return
        structlog.contextvars.bind_contextvars(session_id=start.session.id)
        steps = _TurnSteps(self, turn, start, emit, control, clock, engine, model_info)
        await steps.run(agent, position, release)

    async def _begin(self, turn: Turn, model: str, position: int) -> TurnStart:
        """Commit the turn's start: its user message, or the stored one it answers again (and
        the journal's frame saying so)."""
        journal = None
        if turn.journal is not None:
            journal = turn.journal.opening(lambda start: _accepted(start, model, position))
        if isinstance(turn.redo, Regenerate):
            if turn.session_id is None:
                raise BadRequest("a regeneration needs the session_id of its message")
            return await self.store.begin_regeneration(
                turn.redo.message_id, session_id=turn.session_id, journal=journal
            )
        return await self.store.begin_turn(
            session_id=turn.session_id,
            text=turn.text,
            parent_id=turn.parent_id,
            agent_id=turn.agent_id,
            title=title_of(turn.text),
            sibling_of=turn.redo.message_id if isinstance(turn.redo, Edit) else None,
            journal=journal,
        )

    async def _agent_for(self, turn: Turn) -> Agent | None:
        """The turn's agent, else its session's (a session that does not exist is refused
        later, by `begin_turn`)."""
        if turn.agent_id is None:
            session = (
                None if turn.session_id is None else await self.store.get_session(turn.session_id)
            )
            if session is None or session.agent_id is None:
                return None
            return await self.store.get_agent(session.agent_id)
        agent = await self.store.get_agent(turn.agent_id)
        if agent is None:
            raise NotFound(f"agent {turn.agent_id!r} does not exist")
        return agent

    # -- stateless turns (the OpenAI-compatible route) -----------------------------------------

    async def run_stateless_turn(
        self, turn: StatelessTurn, emit: StatelessSink, control: TurnControl | None = None
    ) -> None:
        """Run one stateless turn, telling `emit` every event: `Started` (or `Failed` when it is
        refused: unknown model, a full queue, a `json_schema` or `forced_call` the model cannot
        enforce), the deltas, `ToolCallsRequested` if the model called tools, then `Completed`
        (or `Failed`).
        The same admission, engine line and detector as `run_turn`; nothing is stored, so a
        cancelled turn just ends (`finish_reason: cancelled`). Never raises TetherErrors."""
        control = control or TurnControl()
        clock = _Clock()
        structlog.contextvars.bind_contextvars(request_id=turn.request_id)
        try:
            engine, model_info = await self.engine.resolve(turn.options.model)
            if turn.json_schema is not None and not model_info.structured_output:
                raise BadRequest(
                    f"response_format: the {model_info.engine} engine cannot enforce a JSON "
                    f"answer (model {model_info.id!r})"
                )
            if turn.forced_call is not None and not model_info.forced_calls:
                raise BadRequest(
                    f"tool_choice: the {model_info.engine} engine cannot force a tool call "
                    f'(model {model_info.id!r}); use "auto" or "none"'
                )
            position, release = self._admit(engine, model_info.id)
        except (TetherError, EngineError) as exc:
            await emit(_error_event(exc))
            return
        try:
            await emit(Started(model_info.id, position))
            steps = _StatelessSteps(self, turn, emit, control, clock, engine, model_info)
            await steps.run(release)
        finally:
            release()


@dataclass(slots=True)
class _StatelessSteps:
    """A stateless turn's engine rounds. Offered: the turn's own tools, and the server's
    (`ChatService.stateless_tools`, if it offers them to the model; a turn's tool of the same
    name wins). A round whose calls are all of the server's tools has them run, their results
    join the conversation and another round follows (up to `max_tool_loops`; only the first is
    held to `forced_call`); any other round ends the turn, its calls of the turn's own tools
    coming back as `ToolCallsRequested` (the server's tools called beside them are not run).
    Usage is summed over the rounds."""

    chat: ChatService
    turn: StatelessTurn
    emit: StatelessSink
    control: TurnControl
    clock: _Clock
    engine: Engine
    model_info: ModelInfo
    usage: Usage = field(default_factory=Usage)
    current: _Round = field(default_factory=_Round)

    def server_specs(self) -> tuple[ToolSpec, ...]:
        policy = self.chat.stateless_tools
        own = {spec.name for spec in self.turn.tools}
        offered = policy.offered(policy.offers(self.model_info, self.turn.options))
        return tuple(spec for spec in offered if spec.name not in own)

    def opening(self, specs: tuple[ToolSpec, ...]) -> list[ChatMessage]:
        """The turn's messages, led by the server's system prompt when they bring none, with
        the offered tools' fragment in the system message."""
        messages, system_prompt = self.turn.messages, self.chat.system_prompt
        if system_prompt and not any(message.role == "system" for message in messages):
            messages = (ChatMessage(role="system", content=system_prompt), *messages)
        return list(_with_tools_prompt(messages, self.chat.tool_policy.prompt(specs)))

    async def run(self, release: Callable[[], None]) -> None:
        server_specs = self.server_specs()
        server = {spec.name for spec in server_specs}
        specs = (*self.turn.tools, *server_specs)
        messages = self.opening(specs)
        forced = self.turn.forced_call
        finish: FinishReason = "stop"
        try:
            for loop in range(self.chat.max_tool_loops + 1):
                await self.round(messages, specs, forced, release)
                forced, finish, calls = None, self.current.finish_reason, self.current.calls
                if not calls or any(call.name not in server for call in calls):
                    break
                if loop == self.chat.max_tool_loops:
                    finish = "tool_loop_limit"
                    break
                messages += await self.control.run(self.run_tools(calls))
        except TurnCancelled:
            finish = "cancelled"
        except Exception as exc:
            failure = _error_event(exc)
            if failure.code == "internal":
                log.exception("turn.failed")
            await self.emit(failure)
            return
        await self.finish(finish, server)

    async def round(
        self,
        messages: list[ChatMessage],
        specs: tuple[ToolSpec, ...],
        forced: ForcedCall | None,
        release: Callable[[], None],
    ) -> None:
        self.current = _Round()
        request = GenerationRequest(
            request_id=self.turn.request_id,
            messages=tuple(messages),
            model=self.model_info.id,
            options=self.turn.generation(),
            tools=specs,
            forced_call=forced,
            usage_sink=self.current.record_usage,
        )
        release()  # from here the engine's own line counts this turn
        generation = _generate(
            self.engine,
            request,
            self.current,
            self.emit,
            self.clock,
            show_thoughts=self.turn.options.show_thoughts,
            detector=self.chat.tool_policy.detector(bool(specs)),
        )
        try:
            await self.control.run(generation)
        finally:
            self.usage = Usage(
                self.usage.prompt_tokens + self.current.usage.prompt_tokens,
                self.usage.completion_tokens + self.current.usage.completion_tokens,
            )

    async def run_tools(self, calls: list[ToolCall]) -> list[ChatMessage]:
        """Run the round's calls of the server's tools: the calling answer and the results."""
        results = await self.chat.stateless_tools.runner.run(list(calls))
        answer = ChatMessage("assistant", "".join(self.current.text), tool_calls=tuple(calls))
        return [
            answer,
            *(
                ChatMessage("tool", _result_text(r), r.name, tool_call_id=r.call_id)
                for r in results
            ),
        ]

    async def finish(self, finish: FinishReason, server: set[str]) -> None:
        for bad_call in self.current.malformed:  # not a call the client could run: say it as text
            await self.emit(TextDelta(bad_call.raw))
        calls = tuple(call for call in self.current.calls if call.name not in server)
        if calls:
            await self.emit(ToolCallsRequested(calls))
        self.clock.completion_tokens = self.usage.completion_tokens
        metadata = dict(self.current.metadata)
        await self.emit(
            Completed(self.turn.request_id, finish, self.usage, self.clock.timings(), metadata)
        )


def _result_text(result: ToolResult) -> str:
    """A tool's result as the model reads it (an error says so)."""
    return (result.result or "") if result.error is None else f"Error: {result.error}"


@dataclass(slots=True)
class _TurnSteps:
    """One stored turn from its committed start to its stored answer, step by step. The state
    (`head`: the newest stored message, where the next attaches; the summed `usage`; the round
    in progress; the finish reason) lives here, outside the phase tasks, so a cancelled phase
    still tells where it got to. The store keeps the turn open (a `turns` row) until
    `store_answer` closes it; a turn left open by a dead process is closed at the next start."""

    chat: ChatService
    turn: Turn
    start: TurnStart
    emit: EventSink
    control: TurnControl
    clock: _Clock
    engine: Engine
    model_info: ModelInfo
    head: str = ""
    usage: Usage = field(default_factory=Usage)
    current: _Round = field(default_factory=_Round)
    finish_reason: FinishReason = "stop"
    told_place: int | None = None  # its client's last word of its place, for the first round

    def __post_init__(self) -> None:
        self.head = self.turn_id

    @property
    def session_id(self) -> str:
        return self.start.session.id

    @property
    def turn_id(self) -> str:
        return self.start.message.id

    @property
    def model(self) -> str:
        return self.model_info.id

    async def run(self, agent: Agent | None, position: int, release: Callable[[], None]) -> None:
        """Accept, answer, store the answer: every way out of the turn stores one."""
        try:
            await self.accept(position)
            await self.answer(agent, release)
        except TurnCancelled:
            self.finish_reason = "cancelled"
        except asyncio.CancelledError:
            await self.interrupted()
            raise
        except Exception as exc:
            await self.failed(exc)
            return
        await self.finish()

    async def accept(self, position: int) -> None:
        self.told_place = position
        created = self.start.created_session
        log.info("turn.accepted", user_message_id=self.turn_id, created=created)
        await self.emit(_accepted(self.start, self.model, position))

    async def answer(self, agent: Agent | None, release: Callable[[], None]) -> None:
        """Engine rounds over the session's branch, running the tools the model calls between
        them, until a round calls none (or the loop limit)."""
        offers = self.chat.tool_policy.offers(self.model_info, self.turn.options)
        history = await self.chat.store.branch(
            self.turn_id, covering_bytes=self.model_info.history_bytes
        )
        messages = [self.system_message(agent, offers), *map(_to_chat_message, history)]
        for loop in range(self.chat.max_tool_loops + 1):
            await self.round(messages, offers, release)
            if not (self.current.calls or self.current.malformed):
                return
            if loop == self.chat.max_tool_loops:
                self.finish_reason = "tool_loop_limit"
                return
            messages = await self.control.run(self.run_tools(messages))

    def system_message(self, agent: Agent | None, offers: bool) -> ChatMessage:
        parts = [agent.system_prompt if agent and agent.system_prompt else self.chat.system_prompt]
        if agent and agent.markdown_context:
            parts.append(agent.markdown_context)
        parts.append(self.chat.tool_policy.fragment(offers))
        return ChatMessage(
            role="system", content="\n\n".join(p.strip() for p in parts if p.strip())
        )

    async def round(
        self, messages: list[ChatMessage], offers: bool, release: Callable[[], None]
    ) -> None:
        """One engine call over `messages`; its usage counts also when it is cancelled."""
        self.current = _Round()
        policy = self.chat.tool_policy
        request = GenerationRequest(
            request_id=self.turn.request_id,
            messages=tuple(messages),
            model=self.model,
            options=self.turn.options.generation_options(),
            tools=policy.offered(offers),
            client=self.session_id,
            usage_sink=self.current.record_usage,
            on_queue_position=self.moved_up,
            queue_position=self.told_place,
        )
        self.told_place = None  # (a later round's place is the line's to tell)
        release()  # from here the engine's own line counts this turn
        generation = _generate(
            self.engine,
            request,
            self.current,
            self.emit,
            self.clock,
            show_thoughts=self.turn.options.show_thoughts,
            detector=policy.detector(offers),
        )
        try:
            await self.control.run(generation)
        finally:
            self.usage = Usage(
                self.usage.prompt_tokens + self.current.usage.prompt_tokens,
                self.usage.completion_tokens + self.current.usage.completion_tokens,
            )
        self.finish_reason = self.current.finish_reason

    async def moved_up(self, place: int) -> None:
        """The turn's place in its model's line changed while it waits (told by the engine)."""
        await self.emit(Queued(queue_position=place, waiting_for="model"))

    async def run_tools(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """Store the calling answer, run its calls, store the results; return the new prompt.

        Every stored call gets a stored result, also when the turn is cancelled mid-call (an
        error result then): a chat template, or an OpenAI-compatible server, refuses a history
        with a call left unanswered.
        """
        bad = [ToolCall(_new_call_id(), "invalid_tool_call", {}) for _ in self.current.malformed]
        calls = [*self.current.calls, *bad]
        messages = [*messages, await self.store_calls(calls)]
        answered: set[str] = set()
        try:
            for call in calls:
                await self.emit(ToolCallStarted(call.id, call.name, call.arguments))
            for result in await self.results(bad):
                await self.emit(
                    ToolCallFinished(
                        result.call_id, result.name, result.result, result.error, result.duration_ms
                    )
                )
                messages.append(await self.store_result(result))
                answered.add(result.call_id)
        except asyncio.CancelledError:
            missing = [
                ToolResult(call.id, call.name, error="cancelled before the tool returned")
                for call in calls
                if call.id not in answered
            ]
            await asyncio.shield(self.store_results(missing))
            raise
        return messages

    async def results(self, bad: list[ToolCall]) -> list[ToolResult]:
        """The runner's results of the parsed calls, then an error for each malformed one."""
        calls = list(self.current.calls)
        results = await self.chat.tool_policy.runner.run(calls) if calls else []
        return results + [
            ToolResult(call.id, call.name, error=f"could not parse the tool call: {bad_call.error}")
            for call, bad_call in zip(bad, self.current.malformed, strict=True)
        ]

    async def store_calls(self, calls: list[ToolCall]) -> ChatMessage:
        """Store the round's answer with its calls (its text is said: not the final answer's)."""
        stored = await self.chat.store.append_to_turn(
            self.session_id,
            self.head,
            NewMessage(
                role="assistant",
                content="".join(self.current.text),
                tool_calls=tuple(calls),
                model=self.model,
                finish_reason="tool_calls",
            ),
            turn_id=self.turn_id,
        )
        self.head = stored.id
        self.current.text.clear()
        return _to_chat_message(stored)

    async def store_result(self, result: ToolResult) -> ChatMessage:
        stored = await self.chat.store.append_to_turn(
            self.session_id,
            self.head,
            NewMessage(
                role="tool",
                content=_result_text(result),
                name=result.name,
                tool_call_id=result.call_id,
                status="complete" if result.error is None else "error",
            ),
            turn_id=self.turn_id,
        )
        self.head = stored.id
        return _to_chat_message(stored)

    async def store_results(self, results: list[ToolResult]) -> None:
        for result in results:
            await self.store_result(result)

    async def store_answer(self, outcome: Outcome, final: Callable[[str], ChatEvent]) -> ChatEvent:
        """Store the answer so far (closing the turn) as `outcome` says; return the event that
        ends the turn, `final(answer_id)`, whose frame the journal commits with the answer."""
        answer_id = uuid.uuid4().hex
        event = final(answer_id)
        journal = None if self.turn.journal is None else self.turn.journal.closing(event)
        await self.chat.store.end_turn(
            self.session_id,
            self.head,
            NewMessage(
                role="assistant",
                content="".join(self.current.text),
                status=outcome.status,
                model=self.model,
                finish_reason=outcome.finish_reason,
                prompt_tokens=self.usage.prompt_tokens,
                completion_tokens=self.usage.completion_tokens,
                id=answer_id,
            ),
            turn_id=self.turn_id,
            journal=journal,
        )
        return event

    async def interrupted(self) -> None:
        """The task itself was cancelled (server shutdown): keep what was said and say so (the
        cancellation was taken, so this emit runs)."""
        self.clock.completion_tokens = self.usage.completion_tokens
        timings = self.clock.timings()
        event = await asyncio.shield(
            self.store_answer(
                INTERRUPTED,
                lambda answer_id: Completed(answer_id, "interrupted", self.usage, timings, {}),
            )
        )
        await self.emit(event)

    async def failed(self, exc: Exception) -> None:
        failure = _error_event(exc)
        if failure.code == "internal":
            log.exception("turn.failed")
        else:
            log.warning("turn.failed", code=failure.code, error=failure.message)
        await self.emit(await self.store_answer(FAILED, lambda _answer_id: failure))

    async def finish(self) -> None:
        self.clock.completion_tokens = self.usage.completion_tokens
        timings = self.clock.timings()
        reason, usage, metadata = self.finish_reason, self.usage, dict(self.current.metadata)
        event = await self.store_answer(
            Outcome.of(reason),
            lambda answer_id: Completed(answer_id, reason, usage, timings, metadata),
        )
        log.info(
            "turn.complete",
            finish_reason=reason,
            completion_tokens=usage.completion_tokens,
            total_ms=timings.total_ms,
        )
        await self.emit(event)


async def _generate(
    engine: Engine,
    request: GenerationRequest,
    out: _Round,
    emit: DeltaSink,
    clock: _Clock,
    *,
    show_thoughts: bool,
    detector: StreamDetector,
) -> None:
    """Stream one engine call into `out`, the text through `detector`, telling `emit` the
    deltas (thoughts only when `show_thoughts`)."""

    async def dispatch(pieces: list[Any]) -> None:
        for piece in pieces:
            if isinstance(piece, TextPiece):
                out.text.append(piece.text)
                await emit(TextDelta(piece.text))
            elif isinstance(piece, ThoughtPiece):
                if show_thoughts:
                    await emit(ThinkingDelta(piece.text))
            elif isinstance(piece, CallPiece):
                out.calls.append(ToolCall(_new_call_id(), piece.name, piece.arguments))
            elif isinstance(piece, MalformedCall):
                out.malformed.append(piece)

    async with contextlib.aclosing(engine.stream(request)) as deltas:
        async for delta in deltas:
            if delta.text:
                clock.token()
                await dispatch(detector.feed(delta.text))
            for call in delta.tool_calls:  # parsed by the engine's runtime
                if isinstance(call, ToolCall):
                    out.calls.append(call)
                else:
                    out.malformed.append(call)
            if delta.finish_reason is not None:
                out.finish_reason = delta.finish_reason
                if delta.usage is not None:
                    out.usage = delta.usage
                if delta.metadata:
                    out.metadata.update(delta.metadata)
    await dispatch(detector.flush())


def _with_tools_prompt(messages: tuple[ChatMessage, ...], fragment: str) -> tuple[ChatMessage, ...]:
    """`messages` with the tools fragment added to the leading system message (or as one)."""
    if not fragment:
        return messages
    if messages and messages[0].role == "system":
        first = messages[0]
        content = "\n\n".join(part for part in (first.content.strip(), fragment) if part)
        return (ChatMessage(role="system", content=content), *messages[1:])
    return (ChatMessage(role="system", content=fragment), *messages)
