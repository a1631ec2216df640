"""The echo engine: deterministic, word by word, and it passes the Engine contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.contract.engine_contract import EngineContract, collect, request
from tether.engines.base import ChatMessage, GenerationRequest
from tether.engines.echo import EchoEngine, split_words


@pytest.fixture
async def engine() -> AsyncIterator[EchoEngine]:
    echo = EchoEngine()
    yield echo
    await echo.aclose()


class TestEchoContract(EngineContract):
    slow_options: ClassVar[dict[str, object]] = {"token_delay_ms": 20}


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_words_concatenate_to_the_input(text: str) -> None:
    words = split_words(text)
    assert "".join(words) == text
    assert all(word.strip() for word in words) or not text.strip()


async def test_streams_the_last_user_message_word_by_word(engine: EchoEngine) -> None:
    deltas = await collect(engine, request("hello  big\nworld "))
    assert [d.text for d in deltas[:-1]] == ["hello  ", "big\n", "world "]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3


async def test_answers_a_tool_result(engine: EchoEngine) -> None:
    req = GenerationRequest(
        request_id="t",
        messages=(
            ChatMessage("user", "what is 6*7?"),
            ChatMessage("tool", "42", name="calculator", tool_call_id="c1"),
        ),
    )
    deltas = await collect(engine, req)
    assert "".join(d.text for d in deltas) == "Tool calculator returned: 42"


async def test_max_tokens_cuts_with_length(engine: EchoEngine) -> None:
    deltas = await collect(engine, request("one two three four", max_tokens=2))
    assert "".join(d.text for d in deltas) == "one two "
    assert deltas[-1].finish_reason == "length"


async def test_the_delay_is_capped(engine: EchoEngine) -> None:
    # A delay over the cap would make this test take 10 s per word; the cap keeps it at 1 s.
    deltas = await collect(engine, request("a b", token_delay_ms=10_000))
    assert "".join(d.text for d in deltas) == "a b"
