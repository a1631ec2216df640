"""The settings' schema: one frozen pydantic model per section of config.yaml, `Settings` over all.

Each model states its keys, defaults and bounds; `tether.config.loader` builds one from
config.yaml, the environment and command-line flags, and says which key (and variable) is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tether.engines.registry import ENGINES

DEFAULT_SYSTEM_PROMPT = "You are Tether, a helpful assistant running locally."


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tether"


_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(value: str) -> bool:
    scheme = _URL_SCHEME.match(value)
    return scheme is not None and scheme.group(1).lower() in POSTGRES_SCHEMES


def sqlite_url_path(value: str) -> str:
    """`sqlite:///rel.db`, `sqlite:////abs.db` (SQLAlchemy style, as the seeds used) or a path.

    Raises ValueError for a URL of another scheme (`postgresql://...` is no file name); the
    message names the scheme only, never the rest (it may hold a password)."""
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if value.startswith(prefix):
            return value[len(prefix) :]
    scheme = _URL_SCHEME.match(value)
    if scheme is not None:
        name = scheme.group(1).lower()
        if name in POSTGRES_SCHEMES:
            raise ValueError(
                f"{name}:// is no SQLite file: give a PostgreSQL URL as storage.url "
                "(TETHER_STORAGE__URL)"
            )
        raise ValueError(
            f"{name}:// databases are not served; Tether stores in SQLite "
            "(sqlite:///path/to/file.db or a file path) or PostgreSQL (postgresql://...)"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)  # 0: pick a free port
    token: SecretStr | None = None
    # This replica's id on a shared store (PostgreSQL): stable, so that a replica restarted
    # under it recovers its own open turns at once (tether.store.replica_ids). Unset:
    # `<hostname>:<port>`; two running replicas never share one (the second is refused).
    replica_id: str | None = Field(default=None, min_length=1, max_length=200)
    # permessage-deflate on /ws/chat when a client offers it. Tether's frames are small (a
    # chunk is a few words of JSON): deflate saves little on them and costs CPU per frame both
    # ways (measured without it: echo turns/s +30 %, first frame p50 halved, frames/s +60 %).
    ws_compression: bool = False

    @field_validator("token")
    @classmethod
    def _token_is_sendable(cls, token: SecretStr | None) -> SecretStr | None:
        # A token with white space cannot be sent intact in an Authorization header, and a
        # blank one would look set while protecting nothing.
        if token is not None and any(c.isspace() for c in token.get_secret_value()):
            raise ValueError("the token must not contain white space")
        return token


class StorageSettings(_Section):
    path: Path = Field(default_factory=lambda: default_data_dir() / "tether.db")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    # A database URL: `sqlite:///file.db` sets `path` (as the seeds configured it);
    # `postgresql://user:password@host:port/db` stores in PostgreSQL, shared by several
    # replicas (tether.store.postgres); any other scheme is refused at start-up.
    url: str | None = None
    # PostgreSQL: how long a replica that stopped heartbeating keeps its turns (then a living
    # replica recovers them), and the connections each replica holds at most.
    lease_sec: float = Field(default=30.0, gt=0)
    pool_size: int = Field(default=10, ge=2, le=1000)

    @field_validator("url")
    @classmethod
    def _served_scheme(cls, url: str | None) -> str | None:
        if url is not None and not is_postgres_url(url):
            sqlite_url_path(url)  # raises for a scheme other than sqlite
        return url

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL URL when the store is PostgreSQL, else None (SQLite at `path`)."""
        return self.url if self.url is not None and is_postgres_url(self.url) else None

    @model_validator(mode="before")
    @classmethod
    def _url_gives_the_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            with contextlib.suppress(ValueError):  # refused by _served_scheme, by key
                return {**data, "path": sqlite_url_path(data["url"])}
        return data


class OpenAISettings(_Section):
    """An OpenAI-compatible upstream: mlc_llm serve, Ollama, vLLM, llama.cpp's server."""

    base_url: str | None = None  # e.g. http://127.0.0.1:8080/v1; unset: no upstream
    api_key: SecretStr | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0)
    # A turn's tools as `tools` in the request: "auto" sends them and drops them for a model
    # whose upstream refuses them with a 400; true: always (a 400 is the turn's error); false:
    # never (calls then come only as text in the answer).
    native_tools: bool | Literal["auto"] = "auto"
    # The `tool_choice` sent with them: auto, required, none, or the one function to call. A
    # round that answers tool results sends none (the upstream's default, auto).
    tool_choice: str = Field(default="auto", min_length=1)


class MLCSettings(_Section):
    device: str = "auto"  # auto, cpu, cuda, cuda:1, vulkan, metal, ...
    mode: Literal["local", "interactive", "server"] = "local"
    max_loaded: int = Field(default=1, ge=1)


class LlamaCppSettings(_Section):
    n_ctx: int = Field(default=4096, ge=256)  # each sequence's window
    # Sequences of one model decoded together (continuous batching); each holds n_ctx of KV
    # cache (SmolLM2 at 4096: 90 MB a sequence).
    parallel: int = Field(default=1, ge=1, le=64)
    # llama.cpp's flash attention: auto (llama.cpp's choice: on, on a CPU), on, off.
    flash_attn: Literal["auto", "on", "off"] = "off"
    n_threads: int | None = Field(default=None, ge=1)  # None: every core
    max_loaded: int = Field(default=1, ge=1)  # models kept in memory (LRU)
    max_queue: int = Field(default=16, ge=0)  # requests waiting per model before `busy`
    prompt_cache_mb: int = Field(default=256, ge=0)  # saved prompt states per model; 0: off
    # Sampling defaults for what a request leaves unset. Greedy by default: the small default
    # model (SmolLM2-135M) answers plain facts right every time greedily, 17 in 20 at 0.7.
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.0, gt=0)

    @field_validator("flash_attn", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        # YAML 1.1 reads a bare `on`/`off` as a boolean: take it as the word that was written.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class EngineSettings(_Section):
    name: str = "llamacpp"  # a name in tether.engines.registry.ENGINES
    model: str | None = None  # the default model; None: the engine's first
    dist_path: Path = Path("dist")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    llamacpp: LlamaCppSettings = LlamaCppSettings()
    openai: OpenAISettings = OpenAISettings()
    mlc: MLCSettings = MLCSettings()

    @field_validator("name")
    @classmethod
    def _a_registered_engine(cls, name: str) -> str:
        if name not in ENGINES:  # worded as pydantic words a Literal's error
            *others, last = (repr(known) for known in ENGINES)
            raise PydanticCustomError(
                "engine_name",
                "Input should be {names}",
                {"names": f"{', '.join(others)} or {last}"},
            )
        return name

    @model_validator(mode="after")
    def _upstream_needs_a_url(self) -> EngineSettings:
        if self.name == "openai" and not self.openai.base_url:
            raise ValueError(
                "engine.openai.base_url is required when engine.name is openai "
                "(e.g. http://127.0.0.1:8080/v1)"
            )
        return self


class LimitsSettings(_Section):
    max_text_chars: int = Field(default=100_000, ge=1)
    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024)
    # A REST request's body (POST /chat/stream's is a chat frame: max_frame_bytes); past it 413.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_requests_per_socket: int = Field(default=16, ge=1)
    max_tool_loops: int = Field(default=5, ge=0)
    tool_timeout_sec: float = Field(default=15.0, gt=0)
    # Client frames per second on one socket (a token bucket of `message_burst`), past it the
    # frame is refused with `rate_limited`; refusals outpacing the rate by
    # `rate_limit_close_after` frames close the socket with 1008. 0 turns each off.
    messages_per_sec: float = Field(default=50.0, ge=0)
    message_burst: int = Field(default=100, ge=1)
    rate_limit_close_after: int = Field(default=1000, ge=0)
    # No frame either way and no running request for this long: close with 1001. 0: never.
    idle_timeout_sec: float = Field(default=300.0, ge=0)
    # From TCP connect (or a keep-alive request's first byte) to the end of the request
    # headers; a slower client is sent 408 and dropped. 0: never.
    handshake_timeout_sec: float = Field(default=10.0, ge=0)
    # A client that reads slower than its answers stream: frames waiting to go out on its socket,
    # and seconds one frame (or the close) may wait for the client to take it. Past either the
    # socket is closed with 1008 and its requests go on without it (reliability.on_disconnect);
    # an answer never waits for a socket. send_timeout_sec 0: no timeout.
    send_buffer_frames: int = Field(default=10_000, ge=1)
    send_timeout_sec: float = Field(default=30.0, ge=0)


class ReliabilitySettings(_Section):
    """Resume, disconnects and shutdown; the guarantees are described in `tether.runs`."""

    # A socket that closes mid-answer: "continue" generating for `disconnect_grace_sec` (so a
    # `resume` from another socket can pick it up), then cancel; "cancel" at once. Either way
    # the answer so far is stored.
    on_disconnect: Literal["continue", "cancel"] = "continue"
    disconnect_grace_sec: float = Field(default=30.0, ge=0)
    # The frame journal of ended requests (for `resume`): kept this long, at most this many rows.
    journal_max_age_sec: float = Field(default=3600.0, gt=0)
    journal_max_rows: int = Field(default=200_000, ge=1)
    # A stream's frames are committed (then sent) at most once in this many milliseconds, so its
    # tokens share a commit; a request's first output and its end never wait (0: no pace).
    journal_interval_ms: float = Field(default=25.0, ge=0, le=1000)
    # SIGTERM: running answers may finish for this long, then they are cancelled and stored.
    drain_timeout_sec: float = Field(default=10.0, ge=0)


class OpenAIApiSettings(_Section):
    # `/v1/chat/completions` also offers Tether's own tools (builtin, MCP: those a socket turn
    # on that model is offered) and runs their calls, answering with the final text; false: only
    # the request's tools are offered, their calls returned to the client, as OpenAI does.
    run_server_tools: bool = False


class MetricsSettings(_Section):
    # `GET /metrics` (Prometheus text format, behind the token like every route but the public
    # ones); false: no such route.
    enabled: bool = True


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a TTY, else JSON


class McpServerConfig(BaseModel):
    """One entry of `mcp.servers` in the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,32}$")
    transport: Literal["stdio", "http"] = "stdio"
    # stdio: the server process (its environment is the SDK's safe minimum plus `env`).
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # http: a streamable-HTTP endpoint such as http://127.0.0.1:8000/mcp.
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # Seconds allowed for each call of its tools (None: limits.tool_timeout_sec), and for
    # start-up (initialize and tool listing).
    timeout: float | None = Field(default=None, gt=0)
    startup_timeout: float = Field(default=30.0, gt=0)
    enabled: bool = True
    # A server that exits or fails to start is started again after `restart_delay` seconds,
    # doubling up to `max_restart_delay` while it keeps failing (false: its tools stay gone).
    restart: bool = True
    restart_delay: float = Field(default=1.0, gt=0)
    max_restart_delay: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _check_transport(self) -> McpServerConfig:
        if self.transport == "stdio" and not self.command:
            raise ValueError(f"mcp server {self.name!r}: transport 'stdio' needs a command")
        if self.transport == "http" and not self.url:
            raise ValueError(f"mcp server {self.name!r}: transport 'http' needs a url")
        return self


class ToolsSettings(_Section):
    # "builtin", built-in names, "pkg.module:function" or "pkg.module" (its @tool functions).
    enabled: list[str] = Field(default_factory=lambda: ["builtin"])
    files_root: Path | None = None  # the only folder list_files/read_file may read
    max_result_bytes: int = Field(default=16 * 1024, ge=256)
    max_read_bytes: int = Field(default=16 * 1024, ge=256)


class McpSettings(_Section):
    servers: list[McpServerConfig] = Field(default_factory=list)


DEFAULT_ALLOWED_ORIGINS = (
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]:*",
    "https://[::1]:*",
)


class SecuritySettings(_Section):
    """Host/Origin checks, public paths and connection caps; the token is `server.token`.

    The rules and the refusal codes are described in `tether.security`.
    """

    # Web pages (besides the server's own origin) that may open /ws/chat and use the REST API:
    # "scheme://host[:port]", port "*" for any port; "*" for any origin; "null".
    allowed_origins: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_ORIGINS))
    # Accepted Host header names ("*.example.com", "*"); None: localhost, 127.0.0.1, ::1 and the
    # bound host; any host when bound to 0.0.0.0 or :: with a token.
    allowed_hosts: list[str] | None = None
    # Paths readable (GET, HEAD) without the token; "/prefix/*" covers a subtree. The browser
    # UI's static files (/ and /ui/*) hold no data: the page asks for the token itself.
    public_paths: list[str] = Field(default_factory=lambda: ["/health", "/", "/ui/*"])
    # Open WebSocket connections, per server and per client address.
    max_connections: int = Field(default=2000, ge=1)
    max_connections_per_client: int = Field(default=1000, ge=1)

    @field_validator("allowed_origins", "allowed_hosts", "public_paths", mode="before")
    @classmethod
    def _split_strings(cls, value: Any) -> Any:
        # From the environment: a JSON list, or comma-separated values.
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        from tether.security.origins import parse_origin_pattern

        for pattern in value:
            parse_origin_pattern(pattern)  # raises ValueError naming the bad entry
        return value


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    engine: EngineSettings = EngineSettings()
    limits: LimitsSettings = LimitsSettings()
    log: LogSettings = LogSettings()
    tools: ToolsSettings = ToolsSettings()
    mcp: McpSettings = McpSettings()
    security: SecuritySettings = SecuritySettings()
    reliability: ReliabilitySettings = ReliabilitySettings()
    metrics: MetricsSettings = MetricsSettings()
    openai_api: OpenAIApiSettings = OpenAIApiSettings()
