"""Render chat messages into one prompt string with the model's own chat template.

The template is the GGUF's `tokenizer.chat_template` (a Hugging Face Jinja template), run by
llama-cpp-python's `Jinja2ChatFormatter`, so the prompt is what the model was trained on. Messages
go in the OpenAI shape templates expect: tool calls as `tool_calls` with `arguments` as an object,
tool results as role `tool`. Templates that know nothing of `tool_calls` get the calls written into
the assistant text as `<tool_call>{json}</tool_call>` (what the detector reads back), so the model
still sees what it did. A template that rejects the messages (strict user/assistant alternation,
no system or tool role) gets a plainer form: tool results as user turns, the system prompt folded
into the first user turn, consecutive turns of one role merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from jinja2 import TemplateError
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import ChatCompletionRequestMessage

from tether.engines.base import ChatMessage, EngineError
from tether.tool_markup import call_markup, response_markup

# For GGUF files without a template: ChatML, which SmolLM2, Qwen and Hermes models use.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _message_dict(message: ChatMessage, *, inline_tool_calls: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        if inline_tool_calls:
            calls = "\n".join(call_markup(c.name, c.arguments) for c in message.tool_calls)
            out["content"] = f"{message.content}\n{calls}" if message.content else calls
        else:
            out["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            out["name"] = message.name
    return out


def _plain_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The most widely accepted shape: alternating user/assistant turns, text only."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        entry = _message_dict(message, inline_tool_calls=True)
        if message.role == "tool":
            entry = {"role": "user", "content": response_markup(entry["content"])}
        if turns and turns[-1]["role"] == entry["role"]:
            turns[-1]["content"] += "\n\n" + entry["content"]
        else:
            turns.append(entry)
    if system:
        if turns and turns[0]["role"] == "user":
            turns[0]["content"] = f"{system}\n\n{turns[0]['content']}"
        else:
            turns.insert(0, {"role": "user", "content": system})
    return turns


class ChatTemplate:
    def __init__(self, template: str | None, *, bos_token: str, eos_token: str) -> None:
        self.source = template or CHATML
        self._formatter = Jinja2ChatFormatter(
            self.source, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=True
        )
        self._inline_tool_calls = "tool_calls" not in self.source

    def _format(self, messages: list[dict[str, Any]]) -> str:
        typed = cast(list[ChatCompletionRequestMessage], messages)
        return self._formatter(messages=typed).prompt

    def render(self, messages: Sequence[ChatMessage]) -> str:
        native = [_message_dict(m, inline_tool_calls=self._inline_tool_calls) for m in messages]
        try:
            return self._format(native)
        except (TemplateError, ValueError, TypeError, KeyError) as error:
            try:
                return self._format(_plain_messages(messages))
            except (TemplateError, ValueError, TypeError, KeyError):
                raise EngineError(f"the model's chat template failed: {error}") from error
