"""The `<tool_call>` markup: how a tool call and its result are written as text.

Hermes, Qwen and SmolLM2 models write a call as `<tool_call>{json}</tool_call>`, the JSON object
holding `"name"` and `"arguments"`; their templates render a tool's result back to the model as
`<tool_response>...</tool_response>`. This module is the one definition: the detector reads calls
in this markup, the tools prompt shows it to the model, and the engines whose runtime cannot take
calls as data (MLC's request validation, chat templates that know nothing of `tool_calls`) write
the history's calls and results back in it.
"""

from __future__ import annotations

import json
from typing import Any, Final

TOOL_OPEN: Final = "<tool_call>"
TOOL_CLOSE: Final = "</tool_call>"
RESPONSE_OPEN: Final = "<tool_response>"
RESPONSE_CLOSE: Final = "</tool_response>"


def call_json(name: str, arguments: dict[str, Any]) -> str:
    """The call's JSON body, non-ASCII kept as is."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def call_markup(name: str, arguments: dict[str, Any]) -> str:
    """A call as the model writes it, in the Hermes template's layout (body on its own line)."""
    return f"{TOOL_OPEN}\n{call_json(name, arguments)}\n{TOOL_CLOSE}"


def response_markup(content: str) -> str:
    """A tool's result as Hermes-style templates show it to the model."""
    return f"{RESPONSE_OPEN}\n{content}\n{RESPONSE_CLOSE}"
