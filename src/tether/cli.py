"""The `tether` command: serve, chat, sessions."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether import __version__
from tether.config import ConfigError, Settings, load_settings

DEFAULT_URL = "ws://127.0.0.1:8000/ws/chat"


def _secrets(settings: Settings) -> list[str]:
    """What the log must never show: the bearer token, the upstream API key."""
    from tether.security import configured_token

    api_key = settings.engine.openai.api_key
    return [
        secret
        for secret in (configured_token(settings), api_key and api_key.get_secret_value())
        if secret
    ]


def _listen(host: str, port: int) -> socket.socket | None:
    """The bound listening socket; None once it has said in one line why it cannot be."""
    from tether.server import listen_socket

    try:
        return listen_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} is in use (is another server running?); stop it or pick another"
            why += " with --port"
        else:
            why = exc.strerror or str(exc)
        print(f"tether serve: cannot listen on {host}:{port}: {why}", file=sys.stderr)
        return None


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
    configure_logging(settings.log.level, settings.log.format, secrets=_secrets(settings))
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
    sock = _listen(settings.server.host, settings.server.port)
    if sock is None:
        return 1
    # SIGTERM: stop accepting, let answers finish (reliability.drain_timeout_sec), exit 0.
    server = TetherServer(uvicorn_config(app, settings), drain=lambda: drain_app(app))
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits (3) when the app's start-up fails
        if server.started:
            raise
        reason = getattr(app.state, "startup_error", None) or "see the log above"
        print(f"tether serve: start-up failed: {reason}", file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else 3
    return 0


# -- chat -------------------------------------------------------------------------------------


def _chat_options(args: argparse.Namespace) -> dict[str, Any]:
    """`--model` and each `--option KEY=VALUE` (VALUE read as JSON when it is JSON)."""
    options: dict[str, Any] = {}
    for item in args.option or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE, e.g. temperature=0.7")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    if args.model:
        options["model"] = args.model
    return options


def _chat(args: argparse.Namespace) -> int:
    from tether.terminal_chat import chat

    try:
        options = _chat_options(args)
    except ValueError as exc:
        print(f"tether chat: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(
        chat(args.url, args.token, session_id=args.session, prompt=args.prompt, options=options)
    )


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
    chat.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a chat option, e.g. -o temperature=0.7 -o max_tokens=200 (repeatable)",
    )
    chat.set_defaults(run=_chat)

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
