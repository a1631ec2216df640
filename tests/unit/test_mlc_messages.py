"""How chat history is shaped for MLC, whose request validation is narrower than OpenAI's."""

from __future__ import annotations

from tether.engines.base import ChatMessage, ToolCall
from tether.engines.mlc import MLC_INSTALL_COMMAND, MLCNotInstalledError, to_mlc_messages


def test_plain_turns_pass_through() -> None:
    messages = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
    )
    assert to_mlc_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_system_messages_are_merged_at_the_front() -> None:
    messages = (
        ChatMessage("system", "One."),
        ChatMessage("user", "Hi"),
        ChatMessage("system", "Two."),
    )
    assert to_mlc_messages(messages) == [
        {"role": "system", "content": "One.\n\nTwo."},
        {"role": "user", "content": "Hi"},
    ]


def test_tool_calls_and_results_become_text() -> None:
    call = ToolCall(id="c1", name="add", arguments={"a": 1, "b": 2})
    other = ToolCall(id="c2", name="now", arguments={})
    messages = (
        ChatMessage("user", "1+2?"),
        ChatMessage("assistant", "Let me add.", tool_calls=(call, other)),
        ChatMessage("tool", "3", name="add", tool_call_id="c1"),
        ChatMessage("tool", "noon", name="now", tool_call_id="c2"),
    )
    assert to_mlc_messages(messages) == [
        {"role": "user", "content": "1+2?"},
        {
            "role": "assistant",
            # The Hermes layout, as every engine writes calls back (tether.tool_markup).
            "content": 'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}'
            '\n</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>',
        },
        {
            "role": "user",
            "content": "<tool_response>\n3\n</tool_response>\n"
            "<tool_response>\nnoon\n</tool_response>",
        },
    ]


def test_not_installed_error_is_one_line_with_the_install_command() -> None:
    message = str(MLCNotInstalledError())
    assert "\n" not in message
    assert message.endswith(MLC_INSTALL_COMMAND)
    assert "pip install --pre -f https://mlc.ai/wheels" in message
