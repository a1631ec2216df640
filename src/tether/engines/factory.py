"""Build the engines the settings ask for, behind one EngineRouter.

The configured engine (`engine.name`) is the default. Beside it the router always has `echo`
(a wiring check any client can pick with `options.model: "echo"`), `llamacpp` for the GGUF files
in `dist/`, `mlc` for the compiled models in `dist/` when `mlc_llm` is installed, and `openai`
when `engine.openai.base_url` is set. Optional engines are imported only when built.
"""

from __future__ import annotations

from importlib.util import find_spec

from tether.config import Settings
from tether.engines.base import Engine, EngineError
from tether.engines.echo import EchoEngine
from tether.engines.router import EngineRouter

ENGINE_ORDER = ("echo", "llamacpp", "mlc", "openai")


class EngineUnavailable(Exception):
    """The configured engine cannot start here; the message says what to do."""


def build_engine(name: str, settings: Settings) -> Engine:
    config = settings.engine
    if name == "echo":
        return EchoEngine()
    if name == "llamacpp":
        from tether.engines.llama_model import Sampling
        from tether.engines.llamacpp import LlamaCppEngine

        llama = config.llamacpp
        return LlamaCppEngine(
            config.dist_path,
            default_model=config.model if config.name == "llamacpp" else None,
            n_ctx=llama.n_ctx,
            n_threads=llama.n_threads,
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
    if name == "openai":
        from tether.engines.openai_compat import OpenAIEngine

        upstream = config.openai
        if not upstream.base_url:
            raise EngineUnavailable("engine.openai.base_url is not set")
        return OpenAIEngine(
            upstream.base_url,
            api_key=upstream.api_key.get_secret_value() if upstream.api_key else None,
            default_model=config.model if config.name == "openai" else None,
            connect_timeout=upstream.connect_timeout,
            read_timeout=upstream.read_timeout,
            native_tools=upstream.native_tools,
            tool_choice=upstream.tool_choice,
        )
    if name == "mlc":
        from tether.engines.mlc import MLCEngine

        try:
            return MLCEngine(
                config.dist_path,
                device=config.mlc.device,
                mode=config.mlc.mode,
                default_model=config.model if config.name == "mlc" else None,
                max_loaded=config.mlc.max_loaded,
            )
        except EngineError as exc:
            raise EngineUnavailable(str(exc)) from exc
    raise EngineUnavailable(f"unknown engine {name!r}")


def _available(name: str, settings: Settings) -> bool:
    if name == "mlc":
        return find_spec("mlc_llm") is not None
    if name == "openai":
        return settings.engine.openai.base_url is not None
    return True


def build_router(settings: Settings) -> EngineRouter:
    default = settings.engine.name
    others = [n for n in ENGINE_ORDER if n != default and _available(n, settings)]
    engines = [build_engine(default, settings), *(build_engine(n, settings) for n in others)]
    return EngineRouter(engines, default_model=settings.engine.model)
