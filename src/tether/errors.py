"""One error root: every failure a client can see has a stable `code` and an HTTP status."""

from __future__ import annotations

from typing import ClassVar


class TetherError(Exception):
    """An error with a stable machine-readable `code`, safe to show to the client."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(TetherError):
    code = "bad_request"
    http_status = 400


class NotFound(TetherError):
    code = "not_found"
    http_status = 404


class Conflict(TetherError):
    code = "conflict"
    http_status = 409


class TooLarge(TetherError):
    code = "too_large"
    http_status = 413


class RateLimited(TetherError):
    code = "rate_limited"
    http_status = 429


class Busy(TetherError):
    code = "busy"
    http_status = 503


class NotImplementedYet(TetherError):
    code = "not_implemented"
    http_status = 501


class EngineFailure(TetherError):
    code = "engine_error"
    http_status = 502


class InternalError(TetherError):
    code = "internal"
    http_status = 500


def http_status(code: str) -> int:
    """The HTTP status of an error `code` as a frame carries it (500 for a code not known)."""
    for error in TetherError.__subclasses__():
        if error.code == code:
            return error.http_status
    return TetherError.http_status
