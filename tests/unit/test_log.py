"""The log's redaction: credentials in any form a logger may print them."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from tether.log import REDACTED, Redactor, configure_logging

SECRET = "s3cret-Token_value"


@pytest.mark.parametrize(
    "line",
    [
        f"< authorization: Bearer {SECRET}",
        f"< Authorization: Basic {SECRET}",
        f"headers=[(b'host', b'x'), (b'authorization', b'Bearer {SECRET}')]",
        json.dumps({"event": "h", "headers": {"Authorization": f"Bearer {SECRET}"}}),
        json.dumps({"event": json.dumps({"authorization": f"Bearer {SECRET}"})}),
        f"< GET /ws/chat?token={SECRET} HTTP/1.1",
        f"< GET /ws/chat?a=1&token={SECRET}&b=2 HTTP/1.1",
        f"url=http://h/x?access_token={SECRET}",
    ],
)
def test_header_and_query_forms_are_redacted_whatever_the_token(line: str) -> None:
    redacted = Redactor()(line)  # no configured secret: the forms alone
    assert SECRET not in redacted
    assert REDACTED in redacted


def test_a_configured_secret_is_redacted_anywhere_also_escaped() -> None:
    secret = 'tok"with/odd+chars'
    redact = Redactor([secret])
    assert redact(f"said {secret} twice {secret}") == f"said {REDACTED} twice {REDACTED}"
    assert secret not in redact(json.dumps({"event": f"x {secret}"}))
    assert "tok%22with%2Fodd%2Bchars" not in redact("/p?t=tok%22with%2Fodd%2Bchars")


def test_short_secrets_and_ordinary_words_are_left_alone() -> None:
    redact = Redactor(["a"])
    text = "max_tokens=20 prompt_tokens=3 a cat"
    assert redact(text) == text


def test_configured_logging_redacts_stdlib_and_structlog_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug", "json", secrets=[SECRET])
    try:
        logging.getLogger("websockets.server").debug("< authorization: Bearer %s", SECRET)
        structlog.get_logger("tether.test").warning("oops", detail=f"saw {SECRET}")
        logging.getLogger("uvicorn.error").error("failed", exc_info=ValueError(SECRET))
    finally:
        root.handlers[:], root.level = handlers, level
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert err.count(REDACTED) >= 3
    assert SECRET not in err
