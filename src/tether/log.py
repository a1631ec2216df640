"""structlog set-up: JSON lines for machines, pretty lines on a terminal.

Request context (`request_id`, `session_id`) is bound with `structlog.contextvars` inside each
request's own asyncio task, so every line that request logs carries it and no other task sees it.
Standard-library loggers (uvicorn, websockets, aiosqlite) are routed through the same renderer.

Secrets never reach the output: every rendered line, whatever logger and level it comes from,
passes through a `Redactor` last. It replaces `Authorization` header values (as text, JSON or a
repr of ASGI header pairs), `token=` query values, and each configured secret (the bearer token,
the upstream API key) wherever it appears, with `[redacted]`. (uvicorn's debug log prints every
WebSocket handshake header and the raw request line, `?token=` included.)
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import structlog

LogFormat = Literal["auto", "json", "console"]
REDACTED = "[redacted]"
# Shorter secrets are not replaced as plain text (a one-letter token would blank every "a");
# their header and query forms still are.
MIN_LITERAL_SECRET = 6

_QUOTE = r"(?:['\"]|\\\")"  # ' or " or, inside a JSON-rendered string, \"
_AUTHORIZATION = re.compile(
    rf"(authorization{_QUOTE}*\s*[:=,]\s*(?:b?{_QUOTE})?\s*(?:(?:bearer|basic|token)\s+)?)"
    r"[^\s'\"\\,;)}\]]+",
    re.IGNORECASE,
)
_TOKEN_PARAM = re.compile(r"((?<![A-Za-z0-9_])(?:access_)?token=)[^\s&#'\"\\]+", re.IGNORECASE)


class Redactor:
    """Takes credentials out of rendered log text; see the module docstring."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_LITERAL_SECRET:
                forms |= {secret, json.dumps(secret)[1:-1], quote(secret), quote_plus(secret)}
        longest_first = sorted(forms, key=len, reverse=True)
        self._literals = (
            re.compile("|".join(re.escape(form) for form in longest_first)) if forms else None
        )

    def __call__(self, text: str) -> str:
        text = _AUTHORIZATION.sub(rf"\g<1>{REDACTED}", text)
        text = _TOKEN_PARAM.sub(rf"\g<1>{REDACTED}", text)
        if self._literals is not None:
            text = self._literals.sub(REDACTED, text)
        return text

    def processor(self, _logger: Any, _method: str, rendered: Any) -> Any:
        """The last step of the formatter: the rendered line in, the redacted line out."""
        return self(rendered) if isinstance(rendered, str) else rendered


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", secrets: Iterable[str] = ()
) -> None:
    """Log lines of every logger to stderr, `secrets` (and any credential) redacted."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Methods below `level` are a bare `return None`: a filtered-out line costs no processing
        # (the stdlib BoundLogger ran every processor before the stdlib logger dropped it).
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if use_console else [structlog.processors.format_exc_info]),
            renderer,
            Redactor(secrets).processor,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # aiosqlite logs every statement at DEBUG; that is noise even in debug mode.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
