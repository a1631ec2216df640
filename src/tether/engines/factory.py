"""Build the configured engine. Optional engines are imported only when chosen."""

from __future__ import annotations

from tether.config import Settings
from tether.engines.base import Engine, EngineError
from tether.engines.echo import EchoEngine


class EngineUnavailable(Exception):
    """The configured engine cannot start here; the message says what to do."""


def build_engine(settings: Settings) -> Engine:
    config = settings.engine
    if config.name == "echo":
        return EchoEngine()
    if config.name == "openai":
        from tether.engines.openai_compat import OpenAIEngine

        upstream = config.openai
        return OpenAIEngine(
            upstream.base_url,
            api_key=upstream.api_key.get_secret_value() if upstream.api_key else None,
            default_model=config.model,
            connect_timeout=upstream.connect_timeout,
            read_timeout=upstream.read_timeout,
        )
    if config.name == "mlc":
        from tether.engines.mlc import MLCEngine

        try:
            return MLCEngine(
                config.dist_path,
                device=config.mlc.device,
                mode=config.mlc.mode,
                default_model=config.model,
                max_loaded=config.mlc.max_loaded,
            )
        except EngineError as exc:
            raise EngineUnavailable(str(exc)) from exc
    raise EngineUnavailable(f"engine {config.name!r} is not available in this build")
