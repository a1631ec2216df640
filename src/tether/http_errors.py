"""The error body of every HTTP response, built in one place.

Tether's routes answer an error with `{"error": {"code", "message"}}` and the HTTP status of
`code` (`tether.errors.http_status`: the codes of the socket's `error` frames, and the security
middleware's). Whoever answers with an error (a route through TetherError, the app's handlers
for unknown routes and crashes, the security middleware in raw ASGI) asks `error_body` for the
body of the request's path, so a route family with another error shape (OpenAI's, under `/v1/`)
is one entry of `ERROR_SHAPES`, not a second set of handlers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse

from tether.errors import TetherError, http_status
from tether.openai_errors import openai_shape

# (code, message) -> the HTTP status and the JSON body.
ErrorShape = Callable[[str, str], tuple[int, dict[str, Any]]]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str  # stable, machine-readable: bad_request, not_found, busy, ...
    message: str  # for a person


class ErrorBody(BaseModel):
    """`tether_shape`, as the OpenAPI document (`tether.openapi`) shows it."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


def tether_shape(code: str, message: str) -> tuple[int, dict[str, Any]]:
    return http_status(code), {"error": {"code": code, "message": message}}


# Path prefixes whose errors have a shape of their own, the first match wins; every other path
# gets `tether_shape`.
ERROR_SHAPES: Sequence[tuple[str, ErrorShape]] = (("/v1/", openai_shape),)


def shape_for(path: str) -> ErrorShape:
    for prefix, shape in ERROR_SHAPES:
        if path.startswith(prefix):
            return shape
    return tether_shape


def error_body(path: str, code: str, message: str) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an error with `code` answering a request for `path`."""
    return shape_for(path)(code, message)


def error_bytes(path: str, code: str, message: str) -> tuple[int, bytes]:
    """As `error_body`, the body encoded (for raw ASGI senders)."""
    status, body = error_body(path, code, message)
    return status, json.dumps(body).encode()


def error_response(
    path: str, error: TetherError, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    status, body = error_body(path, error.code, error.message)
    return JSONResponse(body, status_code=status, headers=headers)
