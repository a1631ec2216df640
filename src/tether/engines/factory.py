"""Build the engines the settings ask for, behind one EngineRouter.

The configured engine (`engine.name`) is the default. Beside it the router has every other
engine of `tether.engines.registry` that is available here: `echo` (a wiring check any client can
pick with `options.model: "echo"`), `llamacpp` for the GGUF files in `dist/`, `mlc` for the
compiled models in `dist/` when `mlc_llm` is installed, and `openai` when
`engine.openai.base_url` is set. Optional engines are imported only when built.
"""

from __future__ import annotations

from tether.config import Settings
from tether.engines.base import Engine
from tether.engines.registry import ENGINES, EngineUnavailable
from tether.engines.router import EngineRouter

__all__ = ["EngineUnavailable", "build_engine", "build_router"]


def build_engine(name: str, settings: Settings) -> Engine:
    spec = ENGINES.get(name)
    if spec is None:
        raise EngineUnavailable(f"unknown engine {name!r}")
    return spec.build(settings.engine)


def build_router(settings: Settings) -> EngineRouter:
    config = settings.engine
    others = [s for s in ENGINES.values() if s.name != config.name and s.available(config)]
    engines = [build_engine(config.name, settings), *(spec.build(config) for spec in others)]
    return EngineRouter(engines, default_model=config.model)
