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


class Unauthorized(TetherError):
    """No token, or a wrong one (the security middleware)."""

    code = "unauthorized"
    http_status = 401


class ForbiddenOrigin(TetherError):
    """A browser page of an origin not allowed (the security middleware)."""

    code = "forbidden_origin"
    http_status = 403


class InvalidHost(TetherError):
    """A `Host` header that is not one of this server's (the security middleware)."""

    code = "invalid_host"
    http_status = 400


class NotFound(TetherError):
    code = "not_found"
    http_status = 404


class MethodNotAllowed(TetherError):
    code = "method_not_allowed"
    http_status = 405


class Conflict(TetherError):
    code = "conflict"
    http_status = 409


class TooLarge(TetherError):
    code = "too_large"
    http_status = 413


class UnsupportedMediaType(TetherError):
    """An HTTP body that is not `application/json`."""

    code = "unsupported_media_type"
    http_status = 415


class RateLimited(TetherError):
    code = "rate_limited"
    http_status = 429


class TooManyConnections(TetherError):
    """One client holds `security.max_connections_per_client` connections already."""

    code = "too_many_connections"
    http_status = 429


class Busy(TetherError):
    code = "busy"
    http_status = 503


class ServerBusy(TetherError):
    """The server holds `security.max_connections` connections already."""

    code = "server_busy"
    http_status = 503


class CancelledWhileWaiting(TetherError):
    """A turn cancelled before anything of it was stored (it waited for its session)."""

    code = "cancelled"
    http_status = 409


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
