"""One front for several engines: a request's `model` picks the engine that serves it.

The chat core talks to an `EngineRouter`, never to one engine: `resolve(model)` names the engine
and the model (no model: the default engine's configured model, else its first), `stream` sends
the request there with the model filled in, and `models()` lists every engine's models. The
model-to-engine map is learnt from `models()` and refreshed once on a miss, so a model added to
`dist/` or to the upstream server is found without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace

import structlog

from tether.engines.base import (
    Delta,
    Engine,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
)

log = structlog.get_logger("tether.engines")


class EngineRouter:
    def __init__(self, engines: Sequence[Engine], *, default_model: str | None = None) -> None:
        if not engines:
            raise ValueError("an EngineRouter needs at least one engine")
        self.engines = list(engines)
        self.default = self.engines[0]
        self.name = self.default.name
        self.default_model = default_model
        self._routes: dict[str, tuple[Engine, ModelInfo]] = {}
        self._refresh_lock = asyncio.Lock()

    async def _list(self, engine: Engine) -> list[ModelInfo]:
        try:
            return await engine.models()
        except Exception as exc:  # one broken upstream must not hide the other engines' models
            log.warning("engines.list_failed", engine=engine.name, error=str(exc))
            return []

    async def models(self) -> list[ModelInfo]:
        listed = await asyncio.gather(*(self._list(engine) for engine in self.engines))
        routes: dict[str, tuple[Engine, ModelInfo]] = {}
        for engine, infos in zip(self.engines, listed, strict=True):
            for info in infos:
                routes.setdefault(info.id, (engine, info))  # earlier engines win a shared name
        self._routes = routes
        return [info for infos in listed for info in infos]

    async def resolve(self, model: str | None) -> tuple[Engine, ModelInfo]:
        """The engine and model that serve `model`; raises UnknownModelError."""
        wanted = model or self.default_model
        if wanted is None:
            for info in await self._list(self.default):
                return self.default, info
            raise UnknownModelError(f"the {self.default.name} engine has no model to serve")
        if wanted not in self._routes:
            async with self._refresh_lock:
                if wanted not in self._routes:
                    await self.models()
        if wanted not in self._routes:
            known = ", ".join(sorted(self._routes)) or "none"
            raise UnknownModelError(f"model {wanted!r} is not available (models: {known})")
        return self._routes[wanted]

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        engine, info = await self.resolve(request.model)
        async with contextlib.aclosing(engine.stream(replace(request, model=info.id))) as deltas:
            async for delta in deltas:
                yield delta

    def queue_position(self, model: str | None) -> int:
        wanted = model or self.default_model
        engine = self._routes[wanted][0] if wanted in self._routes else self.default
        return engine.queue_position(wanted)

    async def aclose(self) -> None:
        await asyncio.gather(*(engine.aclose() for engine in self.engines))
