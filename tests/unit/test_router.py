"""The EngineRouter: a request's model picks the engine; unknown models are refused."""

from __future__ import annotations

import pytest

from tests.contract.engine_contract import collect, request
from tether.engines.base import GenerationRequest, ModelInfo, UnknownModelError
from tether.engines.echo import EchoEngine
from tether.engines.router import EngineRouter


def echo_named(model_id: str, engine_name: str) -> EchoEngine:
    engine = EchoEngine()
    engine.model_id = model_id
    engine.name = engine_name
    return engine


class GrowingEngine(EchoEngine):
    """An echo engine whose model list can change, like a dist/ folder getting a new file."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.name = "growing"

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=i, engine=self.name, tools=False) for i in self.ids]


class BrokenEngine(EchoEngine):
    name = "broken"

    async def models(self) -> list[ModelInfo]:
        raise RuntimeError("upstream down")


@pytest.fixture
def engine() -> EngineRouter:
    return EngineRouter([EchoEngine(), echo_named("second", "echo2")])


async def test_no_model_means_the_default_engine(engine: EngineRouter) -> None:
    routed, info = await engine.resolve(None)
    assert (routed.name, info.id) == ("echo", "echo")
    assert engine.name == "echo"


async def test_a_model_picks_its_engine(engine: EngineRouter) -> None:
    routed, info = await engine.resolve("second")
    assert (routed.name, info.id) == ("echo2", "second")
    deltas = await collect(engine, GenerationRequest("r", request("hi").messages, model="second"))
    assert "".join(d.text for d in deltas) == "hi"


async def test_the_configured_default_model(engine: EngineRouter) -> None:
    router = EngineRouter(engine.engines, default_model="second")
    routed, _ = await router.resolve(None)
    assert routed.name == "echo2"


async def test_unknown_models_are_refused_with_the_list(engine: EngineRouter) -> None:
    with pytest.raises(UnknownModelError, match="echo, second"):
        await engine.resolve("gpt-9")


async def test_a_new_model_is_found_without_a_restart() -> None:
    growing = GrowingEngine()
    router = EngineRouter([EchoEngine(), growing])
    with pytest.raises(UnknownModelError):
        await router.resolve("fresh")
    growing.ids.append("fresh")
    routed, info = await router.resolve("fresh")
    assert routed is growing
    assert info.tools is False


async def test_one_broken_engine_does_not_hide_the_others() -> None:
    router = EngineRouter([EchoEngine(), BrokenEngine()])
    assert [m.id for m in await router.models()] == ["echo"]
