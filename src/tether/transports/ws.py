"""`/ws/chat`: protocol v1 over one WebSocket, many interleaved requests.

A chat request runs as a `Run` of the server's `RunRegistry` (`tether.runs`), not in the socket:
the socket starts runs and *watches* them (the ones it started or resumed), and a run outlives
its socket (the disconnect policy is in `tether.runs`). Frames of all watched runs, each request
numbering its own, go into the socket's `Outbox`, whose writer task sends them in order; a run
never waits for the client, and a client that does not keep up is closed with 1008
(`tether.transports.ws_outbox`). The socket only renders frames: it knows nothing of engines,
tools or SQL.

A request belongs to the socket that started it: `resume` and `cancel` from another socket must
carry the request's `token` (the `resume_token` of its `processing` frame); a wrong or missing
one is answered `not_found`, as for an id never seen, so ids cannot be probed. A socket that
presented the token once (or sent an ended request's `chat` again, same question) needs it no
more.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import OrderedDict

import structlog
from starlette.websockets import WebSocket

from tether.chat import Edit, Regenerate, Turn
from tether.config import LimitsSettings
from tether.errors import TetherError
from tether.protocol import (
    CancelFrame,
    ChatFrame,
    ErrorBody,
    FrameBody,
    PingFrame,
    PongBody,
    ProtocolError,
    RegenerateFrame,
    RequestFrames,
    ResumeFrame,
    ServerFrame,
    parse_client_frame,
)
from tether.runs import RunRegistry, Watcher
from tether.tokens import matches
from tether.transports.ws_limits import SocketGuard
from tether.transports.ws_outbox import Outbox

log = structlog.get_logger("tether.ws")


class OutboxSink:
    """A socket's `Outbox` as the runs it watches see it (a `tether.runs.FrameSink`)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def put(self, frame: ServerFrame) -> None:
        self._outbox.put(frame.text)

    async def room(self) -> bool:
        return await self._outbox.room()


# Requests remembered per socket (started here, or their token presented): they need no token,
# a late `cancel` of an ended one is quiet, and frames about them are sent unnumbered.
KNOWN_MEMORY = 256


def turn_from_frame(frame: ChatFrame | RegenerateFrame) -> Turn:
    if isinstance(frame, RegenerateFrame):
        return Turn(
            request_id=frame.request_id,
            text="",
            session_id=frame.session_id,
            options=frame.options,
            redo=Regenerate(frame.message_id),
        )
    return Turn(
        request_id=frame.request_id,
        text=frame.text,
        session_id=frame.session_id,
        agent_id=frame.agent_id,
        parent_id=frame.parent_id,
        options=frame.options,
        redo=None if frame.sibling_of is None else Edit(frame.sibling_of),
    )


class ChatSocket:
    """One client connection: reads client frames and watches the runs it started or resumed."""

    def __init__(
        self,
        websocket: WebSocket,
        runs: RunRegistry,
        limits: LimitsSettings,
        hub: SocketHub | None = None,
    ) -> None:
        self.websocket = websocket
        self.runs = runs
        self.limits = limits
        self.hub = hub
        self.watching: dict[str, Watcher] = {}  # running requests this socket receives
        # Requests running on another replica that this socket follows through the journal.
        self.following: dict[str, asyncio.Task[None]] = {}
        # Requests this socket may resume and cancel: request_id -> their token's digest.
        self.known: OrderedDict[str, str] = OrderedDict()
        self.guard = SocketGuard(limits)  # message rate and idle timeout
        self.outbox = Outbox(
            self._send_now,
            websocket.close,
            max_frames=limits.send_buffer_frames,
            timeout_sec=limits.send_timeout_sec,
            on_stall=self._stalled,
        )
        self.frames = OutboxSink(self.outbox)

    async def serve(self) -> None:
        await self.websocket.accept()
        self.outbox.start()
        self.guard.start(self.close, busy=lambda: bool(self.watching or self.following))
        if self.hub is not None:
            self.hub.add(self)
        client = self.websocket.client
        log.info("ws.open", client=f"{client.host}:{client.port}" if client else None)
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                await self.handle(raw)
        finally:
            self.guard.stop()
            if self.hub is not None:
                self.hub.discard(self)
            self._stop_watching()
            await self.outbox.stop()
            log.info("ws.close")

    def _stop_watching(self) -> None:
        # The client is gone; its runs go on without it (the disconnect policy decides).
        watchers, self.watching = self.watching, {}
        for watcher in watchers.values():
            watcher.run.unwatch(watcher)
        following, self.following = self.following, {}
        for task in following.values():
            task.cancel()

    def _stalled(self, reason: str) -> None:
        """The client does not take its frames: it is closed (1008) and its runs go on."""
        log.warning("ws.client_too_slow", reason=reason, requests=len(self.watching))
        self._stop_watching()

    async def close(self, code: int, reason: str) -> None:
        """Close from the server side (shutdown, idle, abuse) once the frames waiting are sent;
        the receive loop then ends as for any close."""
        await self.outbox.close(code, reason)

    async def _send_now(self, text: str) -> None:
        """The writer's send (one at a time, in order)."""
        self.guard.activity()
        await self.websocket.send_text(text)

    def send_body(self, request_id: str, body: FrameBody) -> None:
        """Send a frame about `request_id` from outside its turn (a refusal, a pong), to this
        socket only.

        About a request this socket knows (started, watches, resumed) the frame goes without
        `seq`: it is not one of the request's frames, is never journaled nor replayed, and the
        request's own seq stays contiguous. About any other id it is numbered on its own, from
        0 (it is all this socket hears of that id).
        """
        if isinstance(body, ErrorBody):
            self.runs.metrics.error(body.code)
        if request_id in self.watching or request_id in self.following or request_id in self.known:
            self.outbox.put(ServerFrame(request_id, None, body).text)
        else:
            self.outbox.put(RequestFrames(request_id).next(body).text)

    def _ended(self, watcher: Watcher) -> None:
        """A watched run ended (its final frame is queued)."""
        request_id = watcher.run.request_id
        if self.watching.get(request_id) is watcher:
            del self.watching[request_id]
            # (a retried chat replays the journal of the first: its token is that one's)
            self._remember(request_id, watcher.run.token_digest)

    def _remember(self, request_id: str, token_digest: str) -> None:
        self.known[request_id] = token_digest
        self.known.move_to_end(request_id)
        while len(self.known) > KNOWN_MEMORY:
            self.known.popitem(last=False)

    def _may(self, request_id: str, token: str | None, token_digest: str | None) -> bool:
        """Whether this socket may resume or cancel the request whose token hashes to
        `token_digest` (None: no such request); remembers it if so."""
        if token_digest is None:
            return False
        known = self.known.get(request_id)
        known_here = known is not None and hmac.compare_digest(known, token_digest)
        if not known_here and not matches(token, token_digest):
            return False
        self._remember(request_id, token_digest)
        return True

    def _not_found(self, request_id: str, message: str) -> None:
        self.send_body(request_id, ErrorBody("not_found", message))

    async def handle(self, raw: str | bytes) -> None:
        if not self.outbox.open:  # closing (dropped or shut down): late frames are not acted on
            return
        if not await self.guard.admit(raw, self.send_body, self.close):
            return
        try:
            frame = parse_client_frame(raw, max_text_chars=self.limits.max_text_chars)
        except ProtocolError as exc:
            self.send_body(exc.request_id or "", ErrorBody(exc.code, exc.message))
            return
        if isinstance(frame, ChatFrame | RegenerateFrame):
            await self._start(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, PingFrame):
            self.send_body(frame.request_id, PongBody())
        elif isinstance(frame, ResumeFrame):
            await self._resume(frame)

    def _too_busy(self) -> ErrorBody | None:
        if len(self.watching) + len(self.following) < self.limits.max_requests_per_socket:
            return None
        return ErrorBody(
            "busy",
            f"this socket already runs {len(self.watching)} requests "
            f"(limit {self.limits.max_requests_per_socket}); wait for one to complete",
        )

    async def _start(self, frame: ChatFrame | RegenerateFrame) -> None:
        request_id = frame.request_id
        running = self.runs.get(request_id)
        if running is not None and not running.finished:
            self.send_body(
                request_id,
                ErrorBody("conflict", f"request {request_id!r} is already running"),
            )
            return
        refusal = self._too_busy()
        if refusal is not None:
            self.send_body(request_id, refusal)
            return
        if await self.runs.running_elsewhere(request_id):  # on another replica
            self.send_body(
                request_id, ErrorBody("conflict", f"request {request_id!r} is already running")
            )
            return
        # The same question under the id of an ended request (the client is retrying: it may
        # never have seen `processing`) gets what became of it, as a resume would: the run
        # finds out in its first transaction (tether.runs).
        try:
            watcher = self.runs.start(
                turn_from_frame(frame), self.frames, self._ended, transport="ws"
            )
        except TetherError as exc:  # the server is shutting down, or the id began meanwhile
            self.send_body(request_id, ErrorBody(exc.code, exc.message))
            return
        self.watching[request_id] = watcher
        self._remember(request_id, watcher.run.token_digest)

    async def _resume(self, frame: ResumeFrame) -> None:
        """Replay the frames after `after_seq`, then the live ones if the request still runs.

        Replays go at the client's pace (`Outbox.room`); this socket reads its next frame when
        the replay is queued."""
        request_id, after_seq = frame.request_id, frame.after_seq
        if not self._may(request_id, frame.token, await self.runs.token_digest(request_id)):
            self._not_found(request_id, self._no_resume(request_id))
            return
        run = self.runs.get(request_id)
        if run is not None and not run.finished:
            watcher = self.watching.get(request_id)
            if watcher is not None and watcher.run is run:
                await watcher.rewind(after_seq)  # asked again on the socket that watches it
                return
            refusal = self._too_busy()
            if refusal is not None:
                self.send_body(request_id, refusal)
                return
            watcher = run.watch(self.frames, after_seq, self._ended)
            self.watching[request_id] = watcher
            await watcher.replay()
            return
        frames = await self.runs.journal(request_id)
        if not frames:
            self._not_found(request_id, self._no_resume(request_id))
            return
        if frames[-1].final:
            await self._replay(frames, after_seq)
        elif request_id not in self.following:  # running on another replica
            refusal = self._too_busy()
            if refusal is not None:
                self.send_body(request_id, refusal)
                return
            self.following[request_id] = asyncio.create_task(
                self._follow(request_id, after_seq), name=f"follow:{request_id}"
            )

    async def _follow(self, request_id: str, after_seq: int) -> None:
        """Queue the frames of a request another replica runs, from the shared journal, at the
        client's pace, to its final frame (each once, in order: seq goes on from after_seq)."""
        try:
            async for frame in self.runs.follow(request_id, after_seq):
                if not await self.outbox.room():
                    return
                self.outbox.put(frame.text)
        except Exception:
            log.exception("ws.follow_failed", request_id=request_id)
        finally:
            if self.following.get(request_id) is asyncio.current_task():
                del self.following[request_id]

    @staticmethod
    def _no_resume(request_id: str) -> str:
        return (
            f"no request {request_id!r} to resume: unknown, its journal expired, "
            "or the token (its processing frame's resume_token) is missing or wrong"
        )

    async def _replay(self, frames: list[ServerFrame], after_seq: int) -> None:
        """Queue an ended request's journaled frames after `after_seq` at the client's pace.

        The client has every frame already: send the final one again, so that it learns the
        request is over (a resume always ends in the request's `complete` or `error`)."""
        for frame in frames[after_seq + 1 :] or frames[-1:]:
            if not await self.outbox.room():
                return
            self.outbox.put(frame.text)

    async def _cancel(self, frame: CancelFrame) -> None:
        request_id = frame.request_id
        run = self.runs.get(request_id)
        if run is not None and self._may(request_id, frame.token, run.token_digest):
            if not run.ended:
                run.control.cancel()
            return  # a cancel that raced the request's completion needs no answer
        if (
            run is None
            and await self.runs.running_elsewhere(request_id)
            and self._may(request_id, frame.token, await self.runs.token_digest(request_id))
        ):
            await self.runs.cancel_elsewhere(request_id)  # the replica running it cancels it
            return
        if request_id not in self.known:  # (one this socket knows has ended: quiet)
            self._not_found(
                request_id,
                f"no running request {request_id!r} (or the token is missing or wrong)",
            )


class SocketHub:
    """The open chat sockets, so that a shutdown can close them."""

    def __init__(self) -> None:
        self._sockets: set[ChatSocket] = set()

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, socket: ChatSocket) -> None:
        self._sockets.add(socket)

    def discard(self, socket: ChatSocket) -> None:
        self._sockets.discard(socket)

    async def close_all(self, code: int, reason: str) -> None:
        await asyncio.gather(*(socket.close(code, reason) for socket in list(self._sockets)))


async def chat_endpoint(websocket: WebSocket) -> None:
    services = websocket.app.state.services
    await ChatSocket(websocket, services.runs, services.settings.limits, services.sockets).serve()
