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
from dataclasses import dataclass, replace
from typing import Literal

import structlog

from tether.engines.base import (
    Delta,
    Engine,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
)

log = structlog.get_logger("tether.engines")


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """One engine as `/health` shows it: `ready` (it has models), `no_model` (it listed none),
    `unavailable` (listing failed: `error` says why)."""

    state: Literal["ready", "no_model", "unavailable"]
    models: int
    error: str | None = None

    @classmethod
    def of(cls, infos: Sequence[ModelInfo], error: str | None) -> EngineHealth:
        if error is not None:
            return cls("unavailable", 0, error)
        return cls("ready" if infos else "no_model", len(infos))


@dataclass(frozen=True, slots=True)
class RouterHealth:
    ready: bool  # the default model (or the default engine's first) can be asked
    engines: dict[str, EngineHealth]


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

    async def _probe(self, engine: Engine) -> tuple[list[ModelInfo], str | None]:
        """The engine's models, and why it could not list them (None: it could)."""
        try:
            return await engine.models(), None
        except Exception as exc:  # one broken upstream must not hide the other engines' models
            log.warning("engines.list_failed", engine=engine.name, error=str(exc))
            return [], str(exc) or type(exc).__name__

    async def _survey(self) -> list[tuple[list[ModelInfo], str | None]]:
        """Every engine's probe, in order; the model-to-engine map is learnt from them."""
        probes = await asyncio.gather(*(self._probe(engine) for engine in self.engines))
        routes: dict[str, tuple[Engine, ModelInfo]] = {}
        for engine, (infos, _) in zip(self.engines, probes, strict=True):
            for info in infos:
                routes.setdefault(info.id, (engine, info))  # earlier engines win a shared name
        self._routes = routes
        return probes

    async def models(self) -> list[ModelInfo]:
        return [info for infos, _ in await self._survey() for info in infos]

    async def health(self) -> RouterHealth:
        """Each engine's state, and whether a request that names no model can be answered."""
        probes = await self._survey()
        engines = {
            engine.name: EngineHealth.of(infos, error)
            for engine, (infos, error) in zip(self.engines, probes, strict=True)
        }
        if self.default_model is None:
            ready = bool(probes[0][0])
        else:
            ready = self.default_model in self._routes
        return RouterHealth(ready=ready, engines=engines)

    async def resolve(self, model: str | None) -> tuple[Engine, ModelInfo]:
        """The engine and model that serve `model`; raises UnknownModelError."""
        wanted = model or self.default_model
        if wanted is None:
            infos, error = await self._probe(self.default)
            for info in infos:
                return self.default, info
            why = "" if error is None else f" ({error})"
            raise UnknownModelError(f"the {self.default.name} engine has no model to serve{why}")
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

    def queue_position(self, model: str | None, arriving: int = 0) -> int:
        wanted = model or self.default_model
        engine = self._routes[wanted][0] if wanted in self._routes else self.default
        return engine.queue_position(wanted, arriving)

    async def aclose(self) -> None:
        await asyncio.gather(*(engine.aclose() for engine in self.engines))
