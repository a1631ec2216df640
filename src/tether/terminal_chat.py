"""`tether chat`: a terminal client of /ws/chat that survives a dropped connection.

It prints each answer as it streams. When the socket drops mid-answer (a network blip, a server
restart), it reconnects and sends `resume` with the last `seq` it printed and the request's
resume token (from its `processing` frame: the new socket is not the one that started it), so
the answer goes on where it stopped: no text lost, none printed twice. An answer the server
could not finish (it was killed) ends with `finish_reason: "interrupted"`, which is said on
stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import websockets
from websockets.asyncio.client import ClientConnection

from tether.protocol import (
    ChunkBody,
    CompleteBody,
    ErrorBody,
    FrameError,
    ProcessingBody,
    ServerFrame,
    ToolCallBody,
    ToolResultBody,
    decode_frame,
)

# Waits between reconnection attempts after a drop (about 30 s in all), then give up.
RECONNECT_DELAYS_SEC: Sequence[float] = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15)

Log = Callable[[str], None]
# Close codes after which connecting again cannot help: the server refuses this client.
REFUSALS = {4401: "the server refused the token (unauthorized); give the right one with --token"}
REFUSED_STATUSES = {
    401: "the server refused the token (unauthorized); give the right one with --token",
    403: "the server refused the connection (forbidden: Origin or Host not allowed)",
}


class Refused(Exception):
    """The server will not talk to this client: reconnecting would only loop."""


def _refusal(exc: Exception) -> Refused | None:
    """A Refused for a close or a handshake status that says so (else None: a drop)."""
    if isinstance(exc, websockets.exceptions.ConnectionClosed) and exc.rcvd is not None:
        reason = REFUSALS.get(exc.rcvd.code)
        return None if reason is None else Refused(f"{reason} (close code {exc.rcvd.code})")
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        status = exc.response.status_code
        reason = REFUSED_STATUSES.get(status)
        return None if reason is None else Refused(f"{reason} (HTTP {status})")
    return None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Link:
    """The client's socket to the server, opened again when it drops."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        *,
        delays: Sequence[float] = RECONNECT_DELAYS_SEC,
        log: Log = _stderr,
    ) -> None:
        self.url = url
        self.headers = headers
        self.delays = delays
        self.log = log
        self._ws: ClientConnection | None = None

    async def open(self) -> None:
        """Connect once; errors go to the caller (a server that is not there at all)."""
        self._ws = await websockets.connect(
            self.url, additional_headers=self.headers, max_size=None
        )

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def reconnect(self) -> None:
        """Connect again after a drop, waiting longer between tries; raises the last error."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self.log("[connection lost; reconnecting]")
        error: Exception | None = None
        for delay in self.delays:
            await asyncio.sleep(delay)  # backing off from a server that is restarting
            try:
                await self.open()
            except (OSError, websockets.exceptions.WebSocketException) as exc:
                if (refused := _refusal(exc)) is not None:
                    raise refused from None
                error = exc
                continue
            self.log("[reconnected]")
            return
        assert error is not None
        raise error

    async def send(self, frame: dict[str, Any]) -> None:
        """Send `frame`, reconnecting first if the socket has dropped."""
        text = json.dumps(frame)
        if self._ws is None:
            await self.open()
        assert self._ws is not None
        try:
            await self._ws.send(text)
        except websockets.exceptions.ConnectionClosed as exc:
            if (refused := _refusal(exc)) is not None:
                raise refused from None
            await self.reconnect()
            assert self._ws is not None
            await self._ws.send(text)

    async def recv(self) -> ServerFrame | None:
        """The next frame, or None when the socket dropped (the caller decides what next);
        raises Refused when the server closed it for good (a refused token). A text that is no
        frame of this protocol (from a newer server) is skipped."""
        assert self._ws is not None
        while True:
            try:
                text = await self._ws.recv()
            except websockets.exceptions.ConnectionClosed as exc:
                if (refused := _refusal(exc)) is not None:
                    raise refused from None
                return None
            with contextlib.suppress(FrameError):
                return decode_frame(text if isinstance(text, str) else text.decode())


class Turn:
    """One question and its streamed answer."""

    def __init__(self, link: Link, out: TextIO, log: Log = _stderr) -> None:
        self.link = link
        self.out = out
        self.log = log
        self.request_id = uuid.uuid4().hex
        self.last_seq = -1  # the last frame printed: a resume asks for what comes after
        self.token: str | None = None  # the request's resume token, once `processing` came

    async def run(
        self, text: str, session_id: str | None, options: dict[str, Any]
    ) -> tuple[str | None, bool]:
        """Send the question and print the answer; return (session_id, succeeded)."""
        frame: dict[str, Any] = {"type": "chat", "request_id": self.request_id, "text": text}
        if session_id:
            frame["session_id"] = session_id
        if options:
            frame["options"] = options
        await self.link.send(frame)
        try:
            return await self._print(session_id)
        except asyncio.CancelledError:
            # Ctrl-C: stop the answer on the server too (else it runs on for the disconnect grace).
            with contextlib.suppress(Exception):
                cancel = {"type": "cancel", "request_id": self.request_id}
                await asyncio.wait_for(asyncio.shield(self.link.send(cancel)), 2)
            raise

    async def _print(self, session_id: str | None) -> tuple[str | None, bool]:
        while True:
            reply = await self.link.recv()
            if reply is None:
                await self.link.reconnect()
                await self.link.send(self._resume())
                continue
            if reply.request_id != self.request_id:
                continue
            if reply.seq is not None:
                self.last_seq = reply.seq
            match reply.body:
                case ProcessingBody(session_id=accepted_in, resume_token=token):
                    session_id, self.token = accepted_in, token
                case ChunkBody(kind="text", text=text):
                    self.out.write(text)
                    self.out.flush()
                case ToolCallBody(name=name, arguments=arguments):
                    self.out.write(f"\n[tool {name} {json.dumps(arguments)}]")
                case ToolResultBody(name=name, result=result, error=error):
                    shown = result if error is None else f"error: {error}"
                    self.out.write(f"\n[tool {name} -> {shown}]\n")
                case CompleteBody(finish_reason=finish_reason):
                    self.out.write("\n")
                    self.out.flush()
                    if finish_reason == "interrupted":
                        self.log("[the server stopped during this answer; it is stored as it is]")
                        return session_id, False
                    return session_id, True
                case ErrorBody(code=code, message=message):
                    self.log(f"\nerror ({code}): {message}")
                    return session_id, False

    def _resume(self) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "resume",
            "request_id": self.request_id,
            "after_seq": self.last_seq,
        }
        if self.token is not None:
            frame["token"] = self.token
        return frame


async def chat(
    url: str,
    token: str | None,
    *,
    session_id: str | None,
    prompt: str | None,
    options: dict[str, Any],
) -> int:
    """`tether chat`: one prompt (`prompt`), or a conversation on stdin."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    link = Link(url, headers)
    try:
        await link.open()
        try:
            if prompt is not None:
                new_session, ok = await Turn(link, sys.stdout).run(prompt, session_id, options)
                if new_session and new_session != session_id:
                    _stderr(f"(session {new_session}; continue it with --session)")
                return 0 if ok else 1
            loop = asyncio.get_running_loop()
            _stderr(f"Connected to {url}. Type a message; Ctrl-D to quit.")
            while True:
                try:
                    line = await loop.run_in_executor(None, input, "you> ")
                except EOFError:
                    print(file=sys.stderr)
                    return 0
                if line.strip():
                    session_id, _ = await Turn(link, sys.stdout).run(line, session_id, options)
        finally:
            await link.close()
    except Refused as exc:
        _stderr(f"tether chat: {url}: {exc}")
        return 1
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        if (refused := _refusal(exc)) is not None:
            _stderr(f"tether chat: {url}: {refused}")
        else:
            _stderr(f"tether chat: cannot talk to {url}: {exc}")
        return 1
