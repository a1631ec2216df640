"""JSON from clients, read without surprises.

`json.loads` has three ways to fail besides JSONDecodeError, each a crash where it is not
expected: RecursionError for deep nesting (`[[[[...`), ValueError for an integer longer than
Python's 4300-digit limit, UnicodeDecodeError for bytes that are not UTF-8. It accepts `NaN`,
`Infinity` and `-Infinity`, which are not JSON, and reads `1e999` as infinity: `loads` refuses
them (or, with `finite=False`, leaves them for `has_non_finite` to find once the caller has
read what it needs to reply, such as a request id), since no field wants them and a NaN
compares false with every bound. And it accepts escapes of lone surrogates (`"\\ud800"`),
giving strings that cannot be encoded as UTF-8 again: echoed in a reply, stored in SQLite or
logged, they raise far from where they came in.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

# Surrogates (\ud800-\udfff), as JSON escapes or (in a str from elsewhere than the network)
# themselves: only text holding one needs its strings walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


class JSONInputError(ValueError):
    """The text is not JSON we accept; the message says why ("is not valid JSON", ...)."""


NON_FINITE = "holds NaN, Infinity or a number too large for a float, which JSON does not allow"


def _refuse_constant(_name: str) -> Any:
    raise JSONInputError(NON_FINITE)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(NON_FINITE)
    return value


def loads(raw: str | bytes, *, finite: bool = True) -> Any:
    """`json.loads` that fails only with JSONInputError; refuses non-finite numbers unless
    `finite` is False."""
    try:
        if not finite:
            return json.loads(raw)
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except JSONInputError:
        raise
    except RecursionError:
        raise JSONInputError("is nested too deeply") from None
    except UnicodeDecodeError:
        raise JSONInputError("is not valid UTF-8") from None
    except json.JSONDecodeError:
        raise JSONInputError("is not valid JSON") from None
    except ValueError:  # what is left: an integer past Python's limit of digits
        raise JSONInputError(
            f"holds an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None


LONE_SURROGATE = "holds a lone surrogate escape (\\ud800-\\udfff)"


def has_lone_surrogates(raw: str | bytes, data: Any) -> bool:
    """Whether `data`, parsed from `raw`, holds a string that is not valid Unicode."""
    if isinstance(raw, bytes):
        if _SURROGATE_ESCAPE_BYTES.search(raw) is None:
            return False
    elif _SURROGATE_ESCAPE.search(raw) is None:
        return False
    stack = [data]  # iterative: `data` may be nested as deep as json.loads allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_unicode(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def has_non_finite(data: Any) -> bool:
    """Whether `data` (parsed with `finite=False`) holds NaN or an infinity."""
    stack = [data]  # iterative, as in has_lone_surrogates
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def is_unicode(text: str) -> bool:
    """Whether `text` can be encoded as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
