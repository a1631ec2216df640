"""Build the configured engine. Optional engines are imported only when chosen."""

from __future__ import annotations

from tether.config import Settings
from tether.engines.base import Engine
from tether.engines.echo import EchoEngine


class EngineUnavailable(Exception):
    """The configured engine cannot start here; the message says what to do."""


def build_engine(settings: Settings) -> Engine:
    name = settings.engine.name
    if name == "echo":
        return EchoEngine()
    raise EngineUnavailable(f"engine {name!r} is not available in this build")
