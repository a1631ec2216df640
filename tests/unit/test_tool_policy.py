"""ToolPolicy: the one decision whether a turn offers tools, and what it then renders."""

from __future__ import annotations

import pytest

from tether.chat import NO_TOOLS, ToolPolicy
from tether.detector import PassthroughDetector, ToolCallDetector
from tether.engines.base import ModelInfo, ToolCall
from tether.protocol import ChatOptions
from tether.tools.base import ToolResult, ToolSpec

PING = ToolSpec("ping", "Ping.", {"type": "object", "properties": {}})


class Runner:
    def __init__(self, specs: list[ToolSpec]) -> None:
        self._specs = specs

    def specs(self) -> list[ToolSpec]:
        return self._specs

    async def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        return []


@pytest.mark.parametrize(
    ("model_tools", "option", "offered"),
    [
        (True, None, True),  # the template declares tools: offered by default
        (False, None, False),
        (False, True, True),  # the turn forces them on
        (True, False, False),  # ... or off
    ],
)
def test_the_turn_overrides_the_model(
    model_tools: bool, option: bool | None, offered: bool
) -> None:
    policy = ToolPolicy(runner=Runner([PING]))
    model = ModelInfo("m", "echo", tools=model_tools)
    offers = policy.offers(model, ChatOptions(tools=option))
    assert offers is offered
    assert policy.offered(offers) == ((PING,) if offered else ())
    assert bool(policy.fragment(offers)) is offered


def test_no_specs_no_offer() -> None:
    policy = ToolPolicy(runner=Runner([]))
    assert not policy.offers(ModelInfo("m", "echo"), ChatOptions(tools=True))


def test_no_tools_offers_none_and_passes_text_through() -> None:
    assert not NO_TOOLS.offers(ModelInfo("m", "echo"), ChatOptions(tools=True))
    assert isinstance(NO_TOOLS.detector(True), PassthroughDetector)
    assert isinstance(ToolPolicy().detector(True), ToolCallDetector)
