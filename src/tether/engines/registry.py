"""The engines Tether knows: one table from an engine's name to how it is built.

A new engine is one module and one line here: an `EngineSpec` with its name, a `build` that
turns the settings into the engine (importing its module then, so optional dependencies are
imported only when the engine is built) and an `available` that says whether it can be offered
beside the configured one. Its settings are the section of the same name under `engine:` in
`tether.config` (`EngineSettings.llamacpp`, `.openai`, `.mlc`). `engine.name` is checked against
this table, and `tether.engines.factory` builds from it in this order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tether.config import EngineSettings
    from tether.engines.base import Engine


class EngineUnavailable(Exception):
    """The configured engine cannot start here; the message says what to do."""


@dataclass(frozen=True)
class EngineSpec:
    name: str
    build: Callable[[EngineSettings], Engine]
    available: Callable[[EngineSettings], bool] = lambda config: True  # offered beside the default


def _default_model(config: EngineSettings, name: str) -> str | None:
    """`engine.model` is the default of the configured engine only."""
    return config.model if config.name == name else None


def _echo(config: EngineSettings) -> Engine:
    from tether.engines.echo import EchoEngine

    return EchoEngine()


def _llamacpp(config: EngineSettings) -> Engine:
    from tether.engines.llama_model import Sampling
    from tether.engines.llamacpp import LlamaCppEngine

    llama = config.llamacpp
    return LlamaCppEngine(
        config.dist_path,
        default_model=_default_model(config, "llamacpp"),
        n_ctx=llama.n_ctx,
        n_threads=llama.n_threads,
        parallel=llama.parallel,
        flash_attn=llama.flash_attn,
        max_loaded=llama.max_loaded,
        max_queue=llama.max_queue,
        prompt_cache_bytes=llama.prompt_cache_mb << 20,
        sampling=Sampling(
            temperature=llama.temperature,
            top_p=llama.top_p,
            top_k=llama.top_k,
            min_p=llama.min_p,
            repeat_penalty=llama.repeat_penalty,
        ),
    )


def _mlc(config: EngineSettings) -> Engine:
    from tether.engines.base import EngineError
    from tether.engines.mlc import MLCEngine

    try:
        return MLCEngine(
            config.dist_path,
            device=config.mlc.device,
            mode=config.mlc.mode,
            default_model=_default_model(config, "mlc"),
            max_loaded=config.mlc.max_loaded,
        )
    except EngineError as exc:
        raise EngineUnavailable(str(exc)) from exc


def _openai(config: EngineSettings) -> Engine:
    from tether.engines.openai_compat import OpenAIEngine

    upstream = config.openai
    if not upstream.base_url:
        raise EngineUnavailable("engine.openai.base_url is not set")
    return OpenAIEngine(
        upstream.base_url,
        api_key=upstream.api_key.get_secret_value() if upstream.api_key else None,
        default_model=_default_model(config, "openai"),
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        native_tools=upstream.native_tools,
        tool_choice=upstream.tool_choice,
    )


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("echo", _echo),
        EngineSpec("llamacpp", _llamacpp),
        EngineSpec("mlc", _mlc, available=lambda config: find_spec("mlc_llm") is not None),
        EngineSpec("openai", _openai, available=lambda config: config.openai.base_url is not None),
    )
}
