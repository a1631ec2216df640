"""OpenAI's error body, for the `/v1/` routes: `{"error": {"message", "type", "param", "code"}}`.

One table maps Tether's error codes (`tether.errors`, the socket's) to OpenAI's status, `type`
and `code`, chosen so that the official SDKs raise the exception a user of OpenAI expects
(`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, ...). A full model
queue is 429, which the SDKs retry, where Tether's own routes say 503. Every `/v1/` error goes
through `openai_shape`: the route's own refusals, the app's handlers and the security
middleware's (registered in `tether.http_errors.ERROR_SHAPES`).
"""

from __future__ import annotations

from typing import Any

from tether.errors import http_status

# Tether's code -> OpenAI's (status, type, code); a code not here keeps Tether's status.
ERRORS: dict[str, tuple[int, str, str | None]] = {
    "bad_request": (400, "invalid_request_error", None),
    "invalid_host": (400, "invalid_request_error", "invalid_host"),
    "unauthorized": (401, "authentication_error", "invalid_api_key"),
    "forbidden_origin": (403, "permission_error", "forbidden_origin"),
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "method_not_allowed": (405, "invalid_request_error", "method_not_allowed"),
    "conflict": (409, "invalid_request_error", "conflict"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "unsupported_media_type": (415, "invalid_request_error", "unsupported_media_type"),
    "busy": (429, "rate_limit_error", "model_busy"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "too_many_connections": (429, "rate_limit_error", "too_many_connections"),
    "engine_error": (502, "server_error", "engine_error"),
    "server_busy": (503, "server_error", "server_busy"),
    "internal": (500, "server_error", None),
}


def openai_error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_status(code: str) -> tuple[int, str, str | None]:
    """OpenAI's (status, type, code) for Tether's error `code`."""
    known = ERRORS.get(code)
    if known is not None:
        return known
    status = http_status(code)
    return status, "server_error" if status >= 500 else "invalid_request_error", code


def openai_shape(code: str, message: str) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI-shaped body of Tether's error `code` (an `ErrorShape`)."""
    status, error_type, openai_code = openai_status(code)
    param = "model" if code == "not_found" else None
    return status, openai_error_body(message, error_type, param, openai_code)
