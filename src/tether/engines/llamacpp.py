"""The `llamacpp` engine: GGUF models from the dist folder, in-process through llama-cpp-python.

A llama.cpp context serves one stream at a time, so each model has a line: requests wait their
turn (a `FairLine`: clients in turn by the request's `client`, the chat core's session, each
client's own in arrival order), a bounded number may wait (`EngineBusyError` past that), and
`queue_position` says how many are ahead. Generation runs in a
thread of the model's own (`ThreadStream`; loading and closing run there too); the model's turn
passes on only when the work there has ended, not when the consumer leaves, so a cancelled
generation can never overlap the next one. A consumer that leaves early and gave a `usage_sink`
waits for the worker's final delta (a token at most) while the stream closes, for its usage.
Loaded models live in an LRU of `max_loaded` entries; an idle model beyond that is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import structlog

from tether.engines.base import (
    Delta,
    EngineBusyError,
    EngineError,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
    UsageReport,
)
from tether.engines.fair_line import FairLine
from tether.engines.gguf_models import (
    discover_gguf,
    normalize_model_name,
    read_gguf_string,
    read_longest_token,
    template_takes_tools,
)
from tether.engines.llama_model import LoadedModel, RunProgress, RunStats, Sampling
from tether.engines.thread_stream import ThreadStream

log = structlog.get_logger(__name__)

DEFAULT_N_CTX = 4096
DEFAULT_MAX_QUEUE = 16
DEFAULT_PROMPT_CACHE_BYTES = 256 << 20
SHUTDOWN_TIMEOUT_S = 10.0
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(eq=False, slots=True)
class _Resident:
    """A loaded model and the one thread that drives it (`thread_stream` says why one)."""

    model: LoadedModel
    thread: ThreadPoolExecutor

    def close(self) -> Future[None]:
        closing = self.thread.submit(self.model.close)
        self.thread.shutdown(wait=False)  # the thread ends once the close has run
        return closing


@dataclass(eq=False, slots=True)
class _Slot:
    """One model's line: who holds it, how many are in it, and the model once loaded."""

    name: str
    path: Path
    lock: FairLine = field(default_factory=FairLine)
    in_line: int = 0  # running + waiting
    resident: _Resident | None = None
    worker: ThreadStream[Delta] | None = None  # the generation running now
    tools: bool = False  # whether its chat template renders tools
    token_bytes: int | None = None  # its vocabulary's longest token (`read_longest_token`)
    stamp: tuple[int, int] | None = None  # (size, mtime) of the file these were read from


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(
        self,
        dist_path: Path,
        *,
        default_model: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        max_loaded: int = 1,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        sampling: Sampling | None = None,
        on_run: Callable[[RunStats], None] | None = None,
    ) -> None:
        """`n_threads` defaults to every core; `max_queue` is how many requests may wait per
        model; `prompt_cache_bytes` bounds each loaded model's cache of saved prompt states (0
        turns it off); `on_run` gets each generation's `RunStats`, called in the worker thread."""
        self.dist_path = Path(dist_path)
        self.default_model = normalize_model_name(default_model) if default_model else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.max_loaded = max(1, max_loaded)
        self.max_queue = max(0, max_queue)
        self.prompt_cache_bytes = prompt_cache_bytes
        self.sampling = sampling or Sampling()
        self.on_run = on_run
        self._slots: dict[str, _Slot] = {}
        self._loaded: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._closed = False

    # -- models --------------------------------------------------------------------------------

    def _scan(self) -> dict[str, Path]:
        """The GGUF files in dist now, each given a slot (a directory listing: no thread)."""
        on_disk = discover_gguf(self.dist_path)
        for name, path in on_disk.items():
            slot = self._slots.get(name)
            if slot is None:
                self._slots[name] = _Slot(name, path)
            elif slot.resident is None:
                slot.path = path  # the file may have moved; a loaded model keeps its own
        return on_disk

    def _resolve(self, model: str | None) -> str | None:
        if model:
            return normalize_model_name(model)
        if self.default_model:
            return self.default_model
        return min(self._slots or self._scan(), default=None)  # the first by name

    def _slot(self, model: str | None) -> _Slot:
        name = self._resolve(model)
        if name is None:
            raise UnknownModelError(f"no GGUF model in {self.dist_path}")
        slot = self._slots.get(name)
        if slot is None:
            self._scan()  # a file may have been added since
            slot = self._slots.get(name)
        if slot is None:
            known = ", ".join(sorted(self._slots)) or "none"
            raise UnknownModelError(f"unknown model {name!r} (available: {known})")
        return slot

    async def models(self) -> list[ModelInfo]:
        on_disk = self._scan()
        slots = [self._slots[name] for name in sorted(set(on_disk) | set(self._loaded))]
        await self._read_headers(slots)
        return [
            ModelInfo(
                id=slot.name,
                engine=self.name,
                loaded=slot.resident is not None,
                path=str(slot.path),
                tools=slot.tools,
                structured_output=True,  # a llama.cpp grammar from the JSON schema
                # n_ctx tokens of at most token_bytes each: an upper bound of the text it reads.
                history_bytes=self.n_ctx * slot.token_bytes if slot.token_bytes else None,
            )
            for slot in slots
        ]

    async def _read_headers(self, slots: list[_Slot]) -> None:
        """Learn which models' templates take tools and their longest tokens, from files not
        read since they changed."""
        stale: list[tuple[_Slot, tuple[int, int]]] = []
        for slot in slots:
            with contextlib.suppress(OSError):
                stat = slot.path.stat()
                if slot.stamp != (stamp := (stat.st_size, stat.st_mtime_ns)):
                    stale.append((slot, stamp))
        if not stale:
            return
        paths = [slot.path for slot, _ in stale]
        headers = await asyncio.to_thread(
            lambda: [(read_gguf_string(p, CHAT_TEMPLATE_KEY), read_longest_token(p)) for p in paths]
        )
        for (slot, stamp), (template, token_bytes) in zip(stale, headers, strict=True):
            slot.tools, slot.token_bytes = template_takes_tools(template), token_bytes
            slot.stamp = stamp

    def queue_position(self, model: str | None) -> int:
        name = self._resolve(model)
        slot = self._slots.get(name) if name else None
        if slot is None:
            return 0
        self._check_room(slot)
        return slot.in_line

    def _check_room(self, slot: _Slot) -> None:
        if slot.in_line > self.max_queue:
            raise EngineBusyError(
                f"model {slot.name!r} has {slot.in_line - 1} requests waiting; try again later"
            )

    async def _load(self, slot: _Slot) -> _Resident:
        if slot.resident is None:
            self._evict(room_for=1)
            thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{slot.name}")
            load = partial(
                LoadedModel,
                slot.name,
                slot.path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                prompt_cache_bytes=self.prompt_cache_bytes,
            )
            try:
                model = await asyncio.wrap_future(thread.submit(load))
            except BaseException:
                thread.shutdown(wait=False)  # failed or cancelled: nothing will use it
                raise
            slot.resident = _Resident(model, thread)
            if self._closed:  # shut down while loading
                slot.resident.close()
                slot.resident = None
                raise EngineError("the llamacpp engine is shut down")
        self._loaded[slot.name] = slot
        self._loaded.move_to_end(slot.name)
        return slot.resident

    def _evict(self, room_for: int = 0) -> None:
        """Close idle models, least recently used first, until the LRU has room.

        A model in use (running or with requests in line) stays: the LRU may be over its size
        until that model's line empties, when this runs again.
        """
        for slot in list(self._loaded.values()):
            if len(self._loaded) + room_for <= self.max_loaded:
                return
            if slot.in_line == 0 and slot.resident is not None:
                slot.resident.close()  # on the model's thread; nothing waits for it
                slot.resident = None
                del self._loaded[slot.name]

    # -- generation ----------------------------------------------------------------------------

    def _release(self, slot: _Slot) -> None:
        slot.in_line -= 1
        slot.lock.release()
        self._evict()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._closed:
            raise EngineError("the llamacpp engine is shut down")
        slot = self._slot(request.model)
        self._check_room(slot)
        slot.in_line += 1
        try:
            await slot.lock.acquire(request.client)
        except BaseException:
            slot.in_line -= 1
            raise
        worker: ThreadStream[Delta] | None = None
        report = UsageReport(request)
        try:
            if self._closed:  # shut down while this request waited
                raise EngineError("the llamacpp engine is shut down")
            resident = await self._load(slot)
            progress = RunProgress()
            # The line moves on when the work has ended, whatever the consumer does.
            worker = ThreadStream(
                partial(self._work, resident.model, request, progress),
                resident.thread,
                on_cancel=progress.mark_cancelled,
                on_done=partial(self._worker_done, slot),
            )
            slot.worker = worker
            worker.start()
            async for delta in worker:
                if delta.usage is not None:
                    report(delta.usage)
                yield delta
        finally:
            if worker is None:
                self._release(slot)
            elif report.sent or not report.wanted:
                worker.cancel()
            else:
                # Left early (or failed): the worker stops within a token and still sends its
                # final delta, whose usage counts what was evaluated and sampled until then
                # (not waiting for what it does after that: saving the prompt state).
                for delta in await worker.drain(until=lambda d: d.finish_reason is not None):
                    if delta.usage is not None:
                        report(delta.usage)

    def _worker_done(self, slot: _Slot) -> None:
        slot.worker = None
        self._release(slot)

    def _work(
        self,
        model: LoadedModel,
        request: GenerationRequest,
        progress: RunProgress,
        emit: Callable[[Delta], None],
        cancelled: threading.Event,
    ) -> None:
        """The worker thread's job: one generation, then the `on_run` hook."""
        try:
            stats = model.generate(
                request.request_id,
                request.messages,
                request.options,
                self.sampling,
                emit,
                cancelled,
                progress,
            )
        except EngineError:
            raise
        except Exception as error:  # llama.cpp failures reach the client as engine errors
            raise EngineError(f"generation failed: {error}") from error
        if self.on_run is not None:
            try:
                self.on_run(stats)
            except Exception:  # a broken hook must not fail a finished answer
                log.exception("llamacpp.on_run_failed")

    async def aclose(self) -> None:
        """Stop running generations and close every loaded model; return when both are done.

        A model's close runs on its own thread, so it waits there for a cancelled generation to
        finish; requests still waiting in line fail with `EngineError`.
        """
        self._closed = True
        waits: list[asyncio.Future[None]] = []
        for slot in self._slots.values():
            if slot.worker is not None:
                slot.worker.cancel()
                waits.append(slot.worker.done)
            if slot.resident is not None:
                waits.append(asyncio.wrap_future(slot.resident.close()))
                slot.resident = None
        self._loaded.clear()
        if waits:
            await asyncio.wait(waits, timeout=SHUTDOWN_TIMEOUT_S)
