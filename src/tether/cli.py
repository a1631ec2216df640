"""The `tether` command: serve, chat, sessions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from tether import __version__
from tether.config import ConfigError, load_settings

DEFAULT_URL = "ws://127.0.0.1:8000/ws/chat"


def _serve(args: argparse.Namespace) -> int:
    import structlog

    from tether.app import create_app, drain_app
    from tether.engines.factory import EngineUnavailable
    from tether.graceful import TetherServer
    from tether.log import configure_logging
    from tether.security import check_bind
    from tether.server import raise_open_file_limit, uvicorn_config
    from tether.tools.registry import ToolConfigError

    try:
        settings = load_settings(
            config_path=args.config,
            overrides={
                "server.host": args.host,
                "server.port": args.port,
                "storage.path": args.db,
                "engine.name": args.engine,
                "engine.model": args.model,
                "log.level": args.log_level,
            },
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    refusal = check_bind(settings)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    configure_logging(settings.log.level, settings.log.format)
    limit, needed = raise_open_file_limit(settings.security.max_connections)
    if limit < needed:
        structlog.get_logger("tether.cli").warning(
            "serve.file_limit",
            open_files=limit,
            needed=needed,
            hint="raise `ulimit -n` or lower security.max_connections",
        )
    try:
        app = create_app(settings)
    except (ToolConfigError, EngineUnavailable) as exc:
        print(f"tether serve: {exc}", file=sys.stderr)
        return 2
    # SIGTERM: stop accepting, let answers finish (reliability.drain_timeout_sec), exit 0.
    server = TetherServer(uvicorn_config(app, settings), drain=lambda: drain_app(app))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits (3) when the app's start-up fails
        if server.started:
            raise
        reason = getattr(app.state, "startup_error", None) or "see the log above"
        print(f"tether serve: start-up failed: {reason}", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 3
    return 0


# -- chat -------------------------------------------------------------------------------------


async def _chat_turn(
    ws: Any, text: str, session_id: str | None, model: str | None, out: TextIO
) -> tuple[str | None, bool]:
    """Send one turn and print it as it streams; return (session_id, succeeded)."""
    request_id = uuid.uuid4().hex
    frame: dict[str, Any] = {"type": "chat", "request_id": request_id, "text": text}
    if session_id:
        frame["session_id"] = session_id
    if model:
        frame["options"] = {"model": model}
    await ws.send(json.dumps(frame))
    try:
        return await _print_turn(ws, request_id, session_id, out)
    except asyncio.CancelledError:
        # Ctrl-C: stop the answer on the server too (else it runs on for the disconnect grace).
        with contextlib.suppress(Exception):
            cancel = json.dumps({"type": "cancel", "request_id": request_id})
            await asyncio.wait_for(asyncio.shield(ws.send(cancel)), 2)
        raise


async def _print_turn(
    ws: Any, request_id: str, session_id: str | None, out: TextIO
) -> tuple[str | None, bool]:
    while True:
        reply = json.loads(await ws.recv())
        if reply.get("request_id") != request_id:
            continue
        status = reply.get("status")
        chunk = reply.get("chunk") or {}
        if status == "processing":
            session_id = chunk.get("metadata", {}).get("session_id", session_id)
        elif status == "chunk" and chunk.get("type") == "text":
            out.write(chunk.get("data", ""))
            out.flush()
        elif status == "tool":
            data = chunk.get("data", {})
            if chunk.get("type") == "tool_call":
                out.write(f"\n[tool {data.get('name')} {json.dumps(data.get('arguments'))}]")
            else:
                shown = data.get("result") if "result" in data else f"error: {data.get('error')}"
                out.write(f"\n[tool {data.get('name')} -> {shown}]\n")
        elif status == "complete":
            out.write("\n")
            out.flush()
            return session_id, True
        elif status == "error":
            error = reply.get("error", {})
            print(f"\nerror ({error.get('code')}): {error.get('message')}", file=sys.stderr)
            return session_id, False


async def _chat(args: argparse.Namespace) -> int:
    import websockets

    url = args.url
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    try:
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            session_id: str | None = args.session
            if args.prompt is not None:
                session_id, ok = await _chat_turn(
                    ws, args.prompt, session_id, args.model, sys.stdout
                )
                if session_id and session_id != args.session:
                    print(f"(session {session_id}; continue it with --session)", file=sys.stderr)
                return 0 if ok else 1
            loop = asyncio.get_running_loop()
            print(f"Connected to {url}. Type a message; Ctrl-D to quit.", file=sys.stderr)
            while True:
                try:
                    line = await loop.run_in_executor(None, input, "you> ")
                except EOFError:
                    print(file=sys.stderr)
                    return 0
                if not line.strip():
                    continue
                session_id, _ = await _chat_turn(ws, line, session_id, args.model, sys.stdout)
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        print(f"tether chat: cannot talk to {url}: {exc}", file=sys.stderr)
        return 1


# -- sessions ---------------------------------------------------------------------------------


def _http_base(url: str) -> str:
    base = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    return base.removesuffix("/ws/chat")


def _sessions(args: argparse.Namespace) -> int:
    import httpx

    base = _http_base(args.url)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            if args.delete:
                response = client.delete(f"/sessions/{args.delete}")
                if response.status_code == 204:
                    print(f"deleted {args.delete}")
                    return 0
            elif args.show:
                response = client.get(f"/sessions/{args.show}/messages")
                if response.is_success:
                    for message in response.json():
                        print(f"{message['role']:>9}: {message['content']}")
                    return 0
            else:
                response = client.get("/sessions")
                if response.is_success:
                    for session in response.json():
                        print(f"{session['id']}  {session['updated_at']}  {session['title']}")
                    return 0
    except httpx.HTTPError as exc:
        print(f"tether sessions: cannot talk to {base}: {exc}", file=sys.stderr)
        return 1
    error = response.json().get("error", {})
    print(f"error ({error.get('code')}): {error.get('message')}", file=sys.stderr)
    return 1


# -- models -----------------------------------------------------------------------------------


def _print_models(models: list[dict[str, Any]]) -> None:
    if not models:
        print("no models found", file=sys.stderr)
    for model in models:
        state = "loaded" if model.get("loaded") else "-"
        tools = "tools" if model.get("tools") else "-"
        path = model.get("path") or ""
        print(f"{model['id']:<40} {model['engine']:<9} {state:<7} {tools:<6} {path}")


async def _local_models(args: argparse.Namespace) -> list[dict[str, Any]]:
    from dataclasses import asdict

    from tether.engines.factory import build_router

    settings = load_settings(config_path=args.config, overrides={"engine.name": args.engine})
    router = build_router(settings)
    try:
        return [asdict(model) for model in await router.models()]
    finally:
        await router.aclose()


def _models(args: argparse.Namespace) -> int:
    """The running server's models; with no server there, what this config would serve."""
    import httpx

    from tether.engines.factory import EngineUnavailable

    base = _http_base(args.url)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    if not args.local:
        try:
            response = httpx.get(f"{base}/models", headers=headers, timeout=10)
        except httpx.TransportError:
            print(f"(no server at {base}: listing from the configuration)", file=sys.stderr)
        else:
            if response.is_success:
                _print_models(response.json())
                return 0
            error = response.json().get("error", {})
            print(f"error ({error.get('code')}): {error.get('message')}", file=sys.stderr)
            return 1
    try:
        _print_models(asyncio.run(_local_models(args)))
    except (ConfigError, EngineUnavailable) as exc:
        print(f"tether models: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="A local chat server for LLMs.")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--db", type=Path, help="SQLite file (default ~/.local/share/tether)")
    serve.add_argument("--engine", help="echo, llamacpp, mlc or openai")
    serve.add_argument("--model", help="default model")
    serve.add_argument("--config", type=Path, help="config file (default ./config.yaml)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    def client_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--url", default=DEFAULT_URL, help=f"server socket (default {DEFAULT_URL})"
        )
        sub.add_argument("--token", help="bearer token, when the server asks for one")

    chat = commands.add_parser("chat", help="chat in the terminal, or send one prompt")
    client_flags(chat)
    chat.add_argument("--session", help="continue this session (default: a new one)")
    chat.add_argument("--prompt", help="send this one message, print the answer, exit")
    chat.add_argument("--model", help="model to ask")
    chat.set_defaults(run=lambda a: asyncio.run(_chat(a)))

    sessions = commands.add_parser("sessions", help="list, show or delete sessions")
    client_flags(sessions)
    group = sessions.add_mutually_exclusive_group()
    group.add_argument("--show", metavar="ID", help="print the messages of a session")
    group.add_argument("--delete", metavar="ID", help="delete a session")
    sessions.set_defaults(run=_sessions)

    models = commands.add_parser("models", help="list the models the server can serve")
    client_flags(models)
    models.add_argument("--local", action="store_true", help="ask the configuration, not a server")
    models.add_argument("--config", type=Path, help="config file (default ./config.yaml)")
    models.add_argument("--engine", help="default engine, as for serve")
    models.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result
