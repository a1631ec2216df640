"""Resume tokens: who may `resume` or `cancel` a request from another socket.

A request's `processing` frame carries a token drawn here (128 random bits, URL-safe base64).
The store keeps only its SHA-256; a presented token is hashed and compared with
`hmac.compare_digest`, so neither the stored row nor the comparison's timing gives it away.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(16)


def digest(value: str) -> str:
    """SHA-256 of `value` (UTF-8, lone surrogates kept), as hex."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def matches(token: str | None, expected: str | None) -> bool:
    """Whether `token` hashes to `expected`; never for a missing token or digest."""
    if token is None or expected is None:
        return False
    return hmac.compare_digest(digest(token), expected)
