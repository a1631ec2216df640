"""Hypothesis strategies for client frames: near-valid ones and hostile ones.

The frames are built to get past the first checks (the right `type`, a plausible `request_id`)
and then be wrong in one or more fields: wrong types, huge numbers, NaN, nested junk, unicode
with lone surrogates (as JSON escapes), deep nesting, integers past Python's digit limit.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import strategies as st

from tether.protocol import CLIENT_TYPES


def encode(frame: Any, ascii_only: bool) -> str:
    """JSON text; integers of any length are written out in full, as a hostile client might."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(frame, ensure_ascii=ascii_only)
    finally:
        sys.set_int_max_str_digits(limit)


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`common` four times in five: frames that get past the first checks reach the later ones."""
    return st.integers(0, 4).flatmap(lambda n: rare if n == 0 else common)


# Any unicode, lone surrogates included (json.dumps writes them as \udXXX escapes).
any_text = st.text(st.characters(codec=None), max_size=40)
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=1, max_value=4000).map(lambda n: 10**n),
    st.integers(min_value=1, max_value=4000).map(lambda n: -(10**n)),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), huge_ints, floats, any_text)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def field(
    valid: st.SearchStrategy[Any], *hostile: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    return mostly(valid, st.one_of(*hostile, junk))


plain_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "model": field(st.none() | plain_text, any_text),
    "temperature": field(st.floats(0, 5), floats, huge_ints),
    "top_p": field(st.floats(0.01, 1), floats, huge_ints),
    "max_tokens": field(st.integers(1, 10_000), huge_ints, floats),
    "seed": field(st.integers(0, 2**32), huge_ints, floats),
    "stop": field(plain_text | st.lists(plain_text, max_size=3), any_text, st.lists(any_text)),
    "tools": field(st.booleans()),
    "show_thoughts": field(st.booleans()),
    "token_delay_ms": field(st.integers(0, 1000), huge_ints, floats),
}
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "session_id": field(st.none() | plain_text, any_text),
    "agent_id": field(st.none() | plain_text, any_text),
    "parent_id": field(st.none() | plain_text, any_text),
    "options": field(
        st.fixed_dictionaries({}, optional=OPTIONS),
        st.dictionaries(any_text, junk, max_size=3),  # unknown options
    ),
    "after_seq": field(st.integers(-1, 1000), huge_ints, floats),
}
plain_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
request_ids = field(plain_ids, any_text, st.text(min_size=199))


def client_frames(max_text_chars: int) -> st.SearchStrategy[str | bytes]:
    """Raw client frames, four in five near-valid JSON, the rest hostile text or bytes."""
    texts = field(
        plain_text, any_text, st.text(min_size=max_text_chars - 1, max_size=max_text_chars + 2)
    )
    near_valid = st.builds(
        lambda kind, fields, extra: {"type": kind, **fields, **extra},
        mostly(st.sampled_from(CLIENT_TYPES), st.sampled_from(["Chat", "", "chat ", "x" * 300])),
        st.fixed_dictionaries({"request_id": request_ids, "text": texts}, optional=FIELDS),
        mostly(st.just({}), st.dictionaries(any_text, junk, max_size=2)),  # unknown fields
    )
    seed_003 = st.builds(
        lambda action, payload, request_id: {
            "action": action,
            "payload": payload,
            "request_id": request_id,
        },
        mostly(st.just("chat"), st.sampled_from([*CLIENT_TYPES, "x"])),
        field(st.fixed_dictionaries({"text": texts}, optional=FIELDS)),
        request_ids,
    )
    near_valid_json = st.builds(encode, st.one_of(near_valid, seed_003), st.booleans())
    return mostly(
        near_valid_json,
        st.one_of(
            st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 200_000)),
            st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(1, 50_000)),
            st.builds(
                lambda n: '{"type": "ping", "request_id": "r", "n": ' + "7" * n + "}",
                st.integers(1, 20_000),
            ),
            st.binary(max_size=64),
        ),
    )
