"""The `mlc` engine: MLC-LLM compiled models from `dist/`, run by `mlc_llm.AsyncMLCEngine`.

`mlc_llm` is not on PyPI, so it is optional and imported only when this engine is built and a
model is loaded. Install it from MLC's own index (the CPU build; see
https://llm.mlc.ai/docs/install/mlc_llm.html for CUDA, ROCm, Vulkan and Metal builds)::

    pip install --pre -f https://mlc.ai/wheels mlc-llm-nightly-cpu mlc-ai-nightly-cpu

Models are found by `mlc_discovery` (its docstring has the library-matching rule). Each model
gets one `AsyncMLCEngine`, created on first use in a worker thread (loading takes seconds to
minutes) and kept in an LRU cache of `max_loaded` engines; eviction calls `terminate()`, deferred
until the evicted model's in-flight requests have finished.

MLC batches requests internally (continuous batching), so a new request starts at once:
`queue_position` is always 0.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import structlog

from tether.engines.base import (
    ChatMessage,
    Delta,
    EngineError,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
    UsageReport,
)
from tether.engines.mlc_discovery import MLCModel, discover
from tether.engines.openai_wire import ChunkReader, stream_fields
from tether.tool_markup import call_markup, response_markup

log = structlog.get_logger(__name__)

MLCMode = Literal["local", "interactive", "server"]
MLC_INSTALL_COMMAND = (
    "pip install --pre -f https://mlc.ai/wheels mlc-llm-nightly-cpu mlc-ai-nightly-cpu"
)


class MLCNotInstalledError(EngineError):
    """The `mlc` engine was chosen but `mlc_llm` cannot be imported. `str()` is one line."""

    def __init__(self, reason: str = "not installed") -> None:
        super().__init__(
            f"the mlc engine needs the mlc_llm package ({reason}); "
            f"install it with: {MLC_INSTALL_COMMAND}"
        )


def require_mlc() -> None:
    """Fail fast, without the slow import, when `mlc_llm` is not there at all."""
    try:
        spec = importlib.util.find_spec("mlc_llm")
    except (ImportError, ValueError) as exc:
        raise MLCNotInstalledError(str(exc)) from exc
    if spec is None:
        raise MLCNotInstalledError()


def import_mlc() -> ModuleType:
    try:
        return importlib.import_module("mlc_llm")
    except ImportError as exc:  # also a broken install, e.g. a missing TVM runtime
        raise MLCNotInstalledError(f"import failed: {exc}") from exc


def to_mlc_messages(messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """Messages in the shape MLC accepts.

    MLC's request validation allows a system message only first and rejects the `tool` role and
    assistant `tool_calls`, so system messages are merged into one at the front, calls are
    written back into the assistant text in the `tool_markup` (what the model emitted) and tool
    results go in a user message as its `<tool_response>` (consecutive results share one), the
    way Hermes and Qwen templates render them.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            system.append(message.content)
        elif message.role == "assistant":
            calls = [call_markup(c.name, c.arguments) for c in message.tool_calls]
            text = "\n".join(part for part in (message.content, *calls) if part)
            out.append({"role": "assistant", "content": text})
        elif message.role == "tool":
            response = response_markup(message.content)
            previous = out[-1] if out else None
            if previous and previous.get("_tool"):
                previous["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool": True})
        else:
            out.append({"role": "user", "content": message.content})
    for item in out:
        item.pop("_tool", None)
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return out


def chunk_fields(chunk: Any) -> Mapping[str, Any]:
    """An MLC stream chunk (a pydantic `ChatCompletionStreamResponse`) as its JSON object."""
    if isinstance(chunk, Mapping):
        return chunk
    dump = getattr(chunk, "model_dump", None)
    if dump is None:
        raise EngineError(f"MLC sent an unexpected chunk: {chunk!r:.100}")
    fields: Mapping[str, Any] = dump(mode="json")
    return fields


@dataclass(slots=True)
class _Loaded:
    model: MLCModel
    engine: Any  # mlc_llm.AsyncMLCEngine
    active: int = 0
    evicted: bool = False


class MLCEngine:
    """Serves the MLC models under `dist`.

    `device`: MLC's device string (`auto`, `cpu`, `cuda`, `cuda:1`, `vulkan`, `metal`, ...).
    `mode`: MLC's engine mode (`local`, `interactive`, `server`). `default_model`: used when a
    request names none (else the first model found). `max_loaded`: the LRU cache size.
    `model_libs`: model id -> library path, overriding the matching rule.
    """

    name = "mlc"

    def __init__(
        self,
        dist: str | os.PathLike[str] = "dist",
        *,
        device: str = "auto",
        mode: MLCMode = "local",
        default_model: str | None = None,
        max_loaded: int = 1,
        model_libs: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> None:
        require_mlc()
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.dist = Path(dist)
        self.device = device
        self.mode: MLCMode = mode
        self.default_model = default_model
        self.max_loaded = max_loaded
        self._overrides = {k: Path(v) for k, v in (model_libs or {}).items()}
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._loading: dict[str, asyncio.Task[_Loaded]] = {}
        self._load_lock = asyncio.Lock()
        self._closed = False

    def discover(self) -> list[MLCModel]:
        return discover(self.dist, device=self.device, overrides=self._overrides)

    async def models(self) -> list[ModelInfo]:
        found = await asyncio.to_thread(self.discover)
        return [
            ModelInfo(id=m.id, engine=self.name, loaded=m.id in self._loaded, path=str(m.path))
            for m in found
        ]

    def queue_position(self, model: str | None, arriving: int = 0) -> int:
        return 0  # MLC batches concurrent requests; none waits for another to finish

    def _resolve(self, requested: str | None) -> MLCModel:
        wanted = requested or self.default_model
        if wanted is not None and wanted in self._loaded:
            return self._loaded[wanted].model
        found = self.discover()
        if wanted is None:
            if not found:
                raise UnknownModelError(f"no MLC models in {self.dist}")
            return found[0]
        for model in found:
            if model.id == wanted:
                return model
        known = ", ".join(m.id for m in found) or "none"
        raise UnknownModelError(f"unknown MLC model {wanted!r} (in {self.dist}: {known})")

    async def _acquire(self, model: MLCModel) -> _Loaded:
        """The loaded engine for `model`, counted as in use until `_release`."""
        while True:
            entry = self._loaded.get(model.id)
            if entry is None:
                task = self._loading.get(model.id)
                if task is None:
                    task = asyncio.create_task(self._load(model))
                    self._loading[model.id] = task
                    task.add_done_callback(lambda _: self._loading.pop(model.id, None))
                # Shielded: a cancelled requester must not abandon a half-loaded model; the
                # load finishes and the engine lands in the cache for the next request.
                entry = await asyncio.shield(task)
            if not entry.evicted:  # another model's load may have evicted it meanwhile
                self._loaded.move_to_end(model.id)
                entry.active += 1
                return entry

    async def _load(self, model: MLCModel) -> _Loaded:
        # One load at a time: two models loading together can exhaust device memory.
        async with self._load_lock:
            if self._closed:
                raise EngineError("the mlc engine is closed")
            module = await asyncio.to_thread(import_mlc)
            await self._evict(keep=self.max_loaded - 1)
            log.info("mlc_model_loading", model=model.id, lib=str(model.model_lib))
            try:
                engine = await asyncio.to_thread(self._construct, module, model)
            except Exception as exc:
                raise EngineError(f"loading MLC model {model.id!r} failed: {exc}") from exc
            entry = _Loaded(model, engine)
            self._loaded[model.id] = entry
            return entry

    def _construct(self, module: ModuleType, model: MLCModel) -> Any:
        return module.AsyncMLCEngine(
            str(model.path),
            device=self.device,
            model_lib=str(model.model_lib) if model.model_lib else None,
            mode=self.mode,
        )

    async def _evict(self, keep: int) -> None:
        while len(self._loaded) > keep:
            _, entry = self._loaded.popitem(last=False)
            entry.evicted = True
            if entry.active == 0:
                await self._terminate(entry)

    async def _release(self, entry: _Loaded) -> None:
        entry.active -= 1
        if entry.evicted and entry.active == 0:
            await self._terminate(entry)

    async def _terminate(self, entry: _Loaded) -> None:
        log.info("mlc_model_unloading", model=entry.model.id)
        try:
            await asyncio.to_thread(entry.engine.terminate)
        except Exception as exc:
            log.warning("mlc_terminate_failed", model=entry.model.id, error=repr(exc))

    def _create_kwargs(self, request: GenerationRequest, mlc_request_id: str) -> dict[str, Any]:
        return {
            "messages": to_mlc_messages(request.messages),
            "request_id": mlc_request_id,
            **stream_fields(request.options),
        }

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        entry = await self._acquire(self._resolve(request.model))
        # Request ids are unique per socket only; MLC needs them unique per engine.
        mlc_request_id = f"{request.request_id}-{secrets.token_hex(6)}"
        state = ChunkReader()
        chunks: Any = None
        finished = False
        report = UsageReport(request)
        try:
            try:
                chunks = await entry.engine.chat.completions.create(
                    **self._create_kwargs(request, mlc_request_id)
                )
                async for chunk in chunks:
                    if text := state.take(chunk_fields(chunk)):
                        yield Delta(text=text)
                finished = True
            except (GeneratorExit, asyncio.CancelledError):
                report(state.usage_so_far(request))  # left early: what MLC sent so far
                raise
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"MLC generation failed: {exc}") from exc
            finally:
                if not finished:  # cancelled, closed early or failed: stop MLC's work now
                    await self._abort(entry, mlc_request_id, chunks)
        finally:
            await self._release(entry)
        report(state.usage_so_far(request))
        yield state.final(request)

    async def _abort(self, entry: _Loaded, mlc_request_id: str, chunks: Any) -> None:
        try:
            result = entry.engine.abort(mlc_request_id)
            if inspect.isawaitable(result):
                await result
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        except Exception as exc:
            log.warning("mlc_abort_failed", request_id=mlc_request_id, error=repr(exc))

    async def aclose(self) -> None:
        self._closed = True
        pending = list(self._loading.values())
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._evict(keep=0)
