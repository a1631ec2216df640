"""The `tether` command: serve, chat, sessions, models, tools, agents."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether import __version__
from tether.config import ConfigError, Settings, load_settings

DEFAULT_URL = "ws://127.0.0.1:8000/ws/chat"
DEFAULT_HTTP_URL = "http://127.0.0.1:8000"


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
    from tether.serving.config import listen_socket

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
    from tether.log import configure_logging
    from tether.security import check_bind
    from tether.serving.config import raise_open_file_limit, uvicorn_config
    from tether.serving.graceful import TetherServer
    from tether.tools.registry import ToolConfigError

    try:
        settings = load_settings(
            config_path=args.config,
            overrides={
                "server.host": args.host,
                "server.port": args.port,
                "server.replica_id": args.replica_id,
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
    """`--model` and each `--option KEY=VALUE`."""
    options = _key_values(args.option)
    if args.model:
        options["model"] = args.model
    return options


def _key_values(items: Sequence[str] | None) -> dict[str, Any]:
    """Each `KEY=VALUE` of `--option` (VALUE read as JSON when it is JSON)."""
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE, e.g. temperature=0.7")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
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
    """The server's http(s) address from `--url`: http://host:port, or its ws:// socket URL."""
    base = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    return base.rstrip("/").removesuffix("/ws/chat")


def _auth(args: argparse.Namespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {args.token}"} if args.token else {}


def _say_error(response: Any) -> int:
    """Print the server's `{"error": {"code", "message"}}` (or its status) in one line; 1."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {"code": response.status_code, "message": response.text[:200]}
    print(f"error ({error.get('code')}): {error.get('message')}", file=sys.stderr)
    return 1


def _server_get(args: argparse.Namespace, path: str) -> Any:
    """GET `path` on the server (an httpx.Response); None when no server answers there."""
    import httpx

    base = _http_base(args.url)
    try:
        return httpx.get(f"{base}{path}", headers=_auth(args), timeout=10)
    except httpx.TransportError:
        print(f"(no server at {base}: listing from the configuration)", file=sys.stderr)
        return None


def _sessions(args: argparse.Namespace) -> int:
    import httpx

    base = _http_base(args.url)
    try:
        with httpx.Client(base_url=base, headers=_auth(args), timeout=10) as client:
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
    return _say_error(response)


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
    from tether.engines.factory import EngineUnavailable

    response = None if args.local else _server_get(args, "/models")
    if response is not None:
        if not response.is_success:
            return _say_error(response)
        _print_models(response.json())
        return 0
    try:
        _print_models(asyncio.run(_local_models(args)))
    except (ConfigError, EngineUnavailable) as exc:
        print(f"tether models: {exc}", file=sys.stderr)
        return 2
    return 0


# -- tools and agents -------------------------------------------------------------------------


def _print_tools(tools: list[dict[str, Any]]) -> None:
    if not tools:
        print("no tools enabled", file=sys.stderr)
    width = max((len(tool["name"]) for tool in tools), default=0)
    for tool in tools:
        summary = (tool.get("description") or "").strip().splitlines()
        print(f"{tool['name']:<{width}}  {summary[0] if summary else ''}")


def _tools(args: argparse.Namespace) -> int:
    """The running server's tools (its MCP servers' too); with no server there, the built-in
    and Python tools this config enables (MCP servers' tools are known once they run)."""
    from dataclasses import asdict

    from tether.tools.loader import build_registry
    from tether.tools.registry import ToolConfigError

    response = None if args.local else _server_get(args, "/tools")
    if response is not None:
        if not response.is_success:
            return _say_error(response)
        _print_tools(response.json())
        return 0
    try:
        settings = load_settings(config_path=args.config)
        registry = build_registry(
            settings.tools.enabled,
            files_root=settings.tools.files_root,
            max_read_bytes=settings.tools.max_read_bytes,
        )
    except (ConfigError, ToolConfigError) as exc:
        print(f"tether tools: {exc}", file=sys.stderr)
        return 2
    _print_tools([asdict(tool.spec) for tool in registry.tools()])
    return 0


def _agent_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, JSON body) for the agents command's flags."""
    if args.put:
        if not args.name:
            raise ValueError("--put needs --name")
        body = {
            "name": args.name,
            "system_prompt": args.system_prompt or "",
            "markdown_context": args.context.read_text(encoding="utf-8") if args.context else "",
            "default_options": _key_values(args.option),
        }
        return "PUT", f"/agents/{args.put}", body
    if args.delete:
        return "DELETE", f"/agents/{args.delete}", None
    if args.show:
        return "GET", f"/agents/{args.show}", None
    return "GET", "/agents", None


def _agents(args: argparse.Namespace) -> int:
    import httpx

    try:
        method, path, body = _agent_request(args)
    except (ValueError, OSError) as exc:
        print(f"tether agents: {exc}", file=sys.stderr)
        return 2
    base = _http_base(args.url)
    try:
        response = httpx.request(
            method, f"{base}{path}", json=body, headers=_auth(args), timeout=10
        )
    except httpx.HTTPError as exc:
        print(f"tether agents: cannot talk to {base}: {exc}", file=sys.stderr)
        return 1
    if not response.is_success:
        return _say_error(response)
    if method == "DELETE":
        print(f"deleted {args.delete}")
    elif path == "/agents":
        for agent in response.json():
            print(f"{agent['id']}  {agent['updated_at']}  {agent['name']}")
    else:
        print(json.dumps(response.json(), indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="A local chat server for LLMs.")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--replica-id", help="this replica's id on PostgreSQL (default <hostname>:<port>)"
    )
    serve.add_argument("--db", type=Path, help="SQLite file (default ~/.local/share/tether)")
    serve.add_argument("--engine", help="echo, llamacpp, mlc or openai")
    serve.add_argument("--model", help="default model")
    serve.add_argument("--config", type=Path, help="config file (default ./config.yaml)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    def client_flags(sub: argparse.ArgumentParser, url: str = DEFAULT_HTTP_URL) -> None:
        what = "server socket" if url == DEFAULT_URL else "server address (its ws:// URL works too)"
        sub.add_argument("--url", default=url, help=f"{what} (default {url})")
        sub.add_argument(
            "--token",
            default=os.environ.get("TETHER_TOKEN") or None,  # the server reads it there too
            help="bearer token, when the server asks for one (default $TETHER_TOKEN)",
        )

    chat = commands.add_parser("chat", help="chat in the terminal, or send one prompt")
    client_flags(chat, DEFAULT_URL)
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

    tools = commands.add_parser("tools", help="list the tools the model may call")
    client_flags(tools)
    tools.add_argument("--local", action="store_true", help="ask the configuration, not a server")
    tools.add_argument("--config", type=Path, help="config file (default ./config.yaml)")
    tools.set_defaults(run=_tools)

    agents = commands.add_parser("agents", help="list, show, save or delete agents")
    client_flags(agents)
    action = agents.add_mutually_exclusive_group()
    action.add_argument("--show", metavar="ID", help="print an agent")
    action.add_argument("--put", metavar="ID", help="create or replace an agent (needs --name)")
    action.add_argument("--delete", metavar="ID", help="delete an agent")
    agents.add_argument("--name", help="with --put: the agent's name")
    agents.add_argument("--system-prompt", help="with --put: its system prompt")
    agents.add_argument("--context", type=Path, help="with --put: a Markdown file of context")
    agents.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="with --put: a default chat option, e.g. -o temperature=0.2 (repeatable)",
    )
    agents.set_defaults(run=_agents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result
