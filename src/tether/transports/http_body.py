"""Request bodies of the HTTP routes, read one way: bounded, JSON only, parsed safely.

`read_body(request, limit)` is the only way a route reads its body (`read_json` parses it):

- a body that is not empty must say `Content-Type: application/json` (any `charset`
  parameter is ignored; the body is UTF-8 as JSON is), else 415 `unsupported_media_type`.
  Forms and `text/plain` are what a page of another site can POST without asking (no CORS
  preflight), so refusing them keeps such requests out of every route;
- a declared `Content-Length` over `limit` is refused with 413 `too_large` before a byte of
  the body is read, and a body streamed past `limit` (chunked, or longer than declared) as soon
  as it passes it: no more than `limit` bytes plus one network read is held;
- the JSON is parsed by `tether.jsonsafe` (NaN, deep nesting, lone surrogates, integers past
  4300 digits: 400 `bad_request` naming what is wrong). An empty body is `None`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from tether import jsonsafe
from tether.errors import BadRequest, TooLarge, UnsupportedMediaType
from tether.protocol import id_problem

JSON_MEDIA_TYPE = "application/json"


async def read_body(request: Request, limit: int) -> bytes:
    """The raw JSON body, at most `limit` bytes; raises UnsupportedMediaType or TooLarge."""
    headers = request.headers
    declared = headers.get("content-length")
    has_body = "transfer-encoding" in headers or (declared is not None and declared.strip() != "0")
    if has_body and not _is_json(headers.get("content-type")):
        raise UnsupportedMediaType(
            f"the request body must be JSON, sent with 'Content-Type: {JSON_MEDIA_TYPE}'"
        )
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise TooLarge(f"request body over {limit} bytes")
    return bytes(body)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


async def read_json(request: Request, limit: int) -> Any:
    """The body parsed as JSON (None when empty); raises UnsupportedMediaType, TooLarge or
    BadRequest."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return None
    try:
        data = jsonsafe.loads(raw)
    except jsonsafe.JSONInputError as exc:
        raise BadRequest(f"request body {exc}") from None
    if jsonsafe.has_lone_surrogates(raw, data):
        raise BadRequest(f"request body {jsonsafe.LONE_SURROGATE}")
    return data


def path_id(request: Request, name: str) -> str:
    """The path parameter `name`, an id; raises BadRequest (a `%00` in it, ...)."""
    value: str = request.path_params[name]
    problem = id_problem(value)
    if problem is not None:
        raise BadRequest(f"{name} {problem}")
    return value
