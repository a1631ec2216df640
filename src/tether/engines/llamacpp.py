"""The `llamacpp` engine: GGUF models from the dist folder, in-process through llama-cpp-python.

Each loaded model decodes up to `parallel` generations together in one llama.cpp context
(`LoadedModel`: one decode thread per model, continuous batching, a slot per sequence). In front
of the slots each model has a line: requests wait for a free slot (a `FairLine`: clients in turn
by the request's `client`, the chat core's session, each client's own in arrival order), a
bounded number may wait (`EngineBusyError` past that), `queue_position` says how many go first,
and a waiting request's `on_queue_position` hears each new place. A slot passes on only when its
sequence has ended in the decode thread, not when the consumer leaves, so a cancelled generation
never overlaps the next one in its slot. A consumer that leaves early and gave a `usage_sink`
waits for the sequence's final delta (a step at most) while the stream closes, for its usage.
Loaded models live in an LRU of `max_loaded` entries; an idle model beyond that is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from tether.engines.llama_model import Job, LoadedModel, RunProgress, RunStats, Sampling
from tether.engines.llama_native import FlashAttention
from tether.engines.thread_stream import ThreadStream

log = structlog.get_logger(__name__)

DEFAULT_N_CTX = 4096
DEFAULT_PARALLEL = 1
DEFAULT_MAX_QUEUE = 16
DEFAULT_PROMPT_CACHE_BYTES = 256 << 20
SHUTDOWN_TIMEOUT_S = 10.0
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(eq=False, slots=True)
class _Resident:
    """A loaded model and the one thread that drives it (`thread_stream` says why one)."""

    model: LoadedModel
    thread: ThreadPoolExecutor
    serving: Future[None]  # the decode loop; resolved once the model is closed

    def close(self) -> Future[None]:
        self.model.stop()
        self.thread.shutdown(wait=False)  # the thread ends once the loop has closed the model
        return self.serving


@dataclass(eq=False, slots=True)
class _Line:
    """One model's line: its slots' holders and waiters, and the model once loaded."""

    name: str
    path: Path
    lock: FairLine
    in_line: int = 0  # running + waiting
    resident: _Resident | None = None
    loading: asyncio.Future[_Resident] | None = None
    streams: set[ThreadStream[Delta]] = field(default_factory=set)  # generations running now
    tools: bool = False  # whether its chat template renders tools
    token_bytes: int | None = None  # its vocabulary's longest token (`read_longest_token`)
    stamp: tuple[int, int] | None = None  # (size, mtime) of the file these were read from


def _loaded(line: _Line, loading: asyncio.Future[_Resident]) -> None:
    """A load has ended: the next request that finds no model loads again. Its failure was
    told to every request that waited for it (maybe none, if they all left)."""
    line.loading = None
    if not loading.cancelled():
        loading.exception()  # retrieved: no "never retrieved" warning when nobody waited


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(
        self,
        dist_path: Path,
        *,
        default_model: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        parallel: int = DEFAULT_PARALLEL,
        flash_attn: FlashAttention = "off",
        max_loaded: int = 1,
        max_queue: int = DEFAULT_MAX_QUEUE,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        sampling: Sampling | None = None,
        on_run: Callable[[RunStats], None] | None = None,
    ) -> None:
        """`n_ctx` is each sequence's window; `parallel` how many sequences a model decodes
        together (each holds `n_ctx` of KV cache); `n_threads` defaults to every core;
        `flash_attn` is llama.cpp's flash attention (auto, on, off);
        `max_queue` is how many requests may wait per model; `prompt_cache_bytes` bounds each
        loaded model's cache of saved prompt states (0 turns it off); `on_run` gets each
        generation's `RunStats`, called in the model's decode thread."""
        self.dist_path = Path(dist_path)
        self.default_model = normalize_model_name(default_model) if default_model else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.parallel = max(1, parallel)
        self.flash_attn: FlashAttention = flash_attn
        self.max_loaded = max(1, max_loaded)
        self.max_queue = max(0, max_queue)
        self.prompt_cache_bytes = prompt_cache_bytes
        self.sampling = sampling or Sampling()
        self.on_run = on_run
        self._lines: dict[str, _Line] = {}
        self._loaded: OrderedDict[str, _Line] = OrderedDict()  # least recently used first
        self._closed = False

    # -- models --------------------------------------------------------------------------------

    def _scan(self) -> dict[str, Path]:
        """The GGUF files in dist now, each given a line (a directory listing: no thread)."""
        on_disk = discover_gguf(self.dist_path)
        for name, path in on_disk.items():
            line = self._lines.get(name)
            if line is None:
                self._lines[name] = _Line(name, path, FairLine(self.parallel))
            elif line.resident is None:
                line.path = path  # the file may have moved; a loaded model keeps its own
        return on_disk

    def _resolve(self, model: str | None) -> str | None:
        if model:
            return normalize_model_name(model)
        if self.default_model:
            return self.default_model
        return min(self._lines or self._scan(), default=None)  # the first by name

    def _line(self, model: str | None) -> _Line:
        name = self._resolve(model)
        if name is None:
            raise UnknownModelError(f"no GGUF model in {self.dist_path}")
        line = self._lines.get(name)
        if line is None:
            self._scan()  # a file may have been added since
            line = self._lines.get(name)
        if line is None:
            known = ", ".join(sorted(self._lines)) or "none"
            raise UnknownModelError(f"unknown model {name!r} (available: {known})")
        return line

    async def models(self) -> list[ModelInfo]:
        on_disk = self._scan()
        lines = [self._lines[name] for name in sorted(set(on_disk) | set(self._loaded))]
        await self._read_headers(lines)
        return [
            ModelInfo(
                id=line.name,
                engine=self.name,
                loaded=line.resident is not None,
                path=str(line.path),
                tools=line.tools,
                structured_output=True,  # a llama.cpp grammar from the JSON schema
                forced_calls=True,  # a grammar of the `<tool_call>` markup (engines/grammars.py)
                # n_ctx tokens of at most token_bytes each: an upper bound of the text it reads.
                history_bytes=self.n_ctx * line.token_bytes if line.token_bytes else None,
            )
            for line in lines
        ]

    async def _read_headers(self, lines: list[_Line]) -> None:
        """Learn which models' templates take tools and their longest tokens, from files not
        read since they changed."""
        stale: list[tuple[_Line, tuple[int, int]]] = []
        for line in lines:
            with contextlib.suppress(OSError):
                stat = line.path.stat()
                if line.stamp != (stamp := (stat.st_size, stat.st_mtime_ns)):
                    stale.append((line, stamp))
        if not stale:
            return
        paths = [line.path for line, _ in stale]
        headers = await asyncio.to_thread(
            lambda: [(read_gguf_string(p, CHAT_TEMPLATE_KEY), read_longest_token(p)) for p in paths]
        )
        for (line, stamp), (template, token_bytes) in zip(stale, headers, strict=True):
            line.tools, line.token_bytes = template_takes_tools(template), token_bytes
            line.stamp = stamp

    def queue_position(self, model: str | None, arriving: int = 0) -> int:
        name = self._resolve(model)
        line = self._lines.get(name) if name else None
        if line is None:
            self._check_room(name or "", arriving)
            return 0
        self._check_room(line.name, line.in_line + arriving)
        return line.lock.ahead(None)

    def _check_room(self, name: str, in_line: int) -> None:
        """Refuse one more request for a model `in_line` requests want (running or waiting)."""
        waiting = in_line - self.parallel
        if waiting >= self.max_queue:
            raise EngineBusyError(f"model {name!r} has {waiting} requests waiting; try again later")

    async def _load(self, line: _Line) -> _Resident:
        """The line's model, loaded once however many requests ask for it at the same time."""
        if line.resident is None:
            if line.loading is None:
                line.loading = asyncio.ensure_future(self._start(line))
                line.loading.add_done_callback(partial(_loaded, line))
            await asyncio.shield(line.loading)
        if line.resident is None:  # closed by aclose meanwhile
            raise EngineError("the llamacpp engine is shut down")
        self._loaded[line.name] = line
        self._loaded.move_to_end(line.name)
        return line.resident

    async def _start(self, line: _Line) -> _Resident:
        self._evict(room_for=1)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llamacpp-{line.name}")
        load = partial(
            LoadedModel,
            line.name,
            line.path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_slots=self.parallel,
            flash_attn=self.flash_attn,
            prompt_cache_bytes=self.prompt_cache_bytes,
        )
        try:
            model = await asyncio.wrap_future(thread.submit(load))
        except BaseException:
            thread.shutdown(wait=False)  # failed or cancelled: nothing will use it
            raise
        resident = _Resident(model, thread, thread.submit(model.serve))
        if self._closed:  # shut down while loading
            resident.close()
            raise EngineError("the llamacpp engine is shut down")
        line.resident = resident
        return resident

    def _evict(self, room_for: int = 0) -> None:
        """Close idle models, least recently used first, until the LRU has room.

        A model in use (running or with requests in line) stays: the LRU may be over its size
        until that model's line empties, when this runs again.
        """
        for line in list(self._loaded.values()):
            if len(self._loaded) + room_for <= self.max_loaded:
                return
            if line.in_line == 0 and line.resident is not None:
                line.resident.close()  # on the model's thread; nothing waits for it
                line.resident = None
                del self._loaded[line.name]

    # -- generation ----------------------------------------------------------------------------

    def _release(self, line: _Line) -> None:
        line.in_line -= 1
        line.lock.release()
        self._evict()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self._closed:
            raise EngineError("the llamacpp engine is shut down")
        line = self._line(request.model)
        self._check_room(line.name, line.in_line)
        line.in_line += 1
        try:
            await line.lock.acquire(
                request.client, request.on_queue_position, request.queue_position
            )
        except BaseException:
            line.in_line -= 1
            raise
        stream: ThreadStream[Delta] | None = None
        report = UsageReport(request)
        try:
            if self._closed:  # shut down while this request waited
                raise EngineError("the llamacpp engine is shut down")
            resident = await self._load(line)
            progress = RunProgress()
            # The slot passes on when the sequence has ended, whatever the consumer does.
            running: ThreadStream[Delta] = ThreadStream(
                on_cancel=progress.mark_cancelled,
                on_done=lambda: self._sequence_done(line, running),
            )
            stream = running
            line.streams.add(running)
            resident.model.submit(Job(request, self.sampling, running, progress, self.on_run))
            async for delta in stream:
                if delta.usage is not None:
                    report(delta.usage)
                yield delta
        finally:
            if stream is None:
                self._release(line)
            elif report.sent or not report.wanted:
                stream.cancel()
            else:
                # Left early (or failed): the sequence stops within a step and still sends its
                # final delta, whose usage counts what was evaluated and sampled until then.
                for delta in await stream.drain(until=lambda d: d.finish_reason is not None):
                    if delta.usage is not None:
                        report(delta.usage)

    def _sequence_done(self, line: _Line, stream: ThreadStream[Delta]) -> None:
        line.streams.discard(stream)
        self._release(line)

    async def aclose(self) -> None:
        """Stop running generations and close every loaded model; return when both are done.

        A model's decode loop ends its running sequences ("cancelled") and closes the model;
        requests still waiting in line fail with `EngineError`.
        """
        self._closed = True
        waits: list[asyncio.Future[None]] = []
        for line in self._lines.values():
            for stream in list(line.streams):
                stream.cancel()
                waits.append(stream.done)
            if line.resident is not None:
                waits.append(asyncio.wrap_future(line.resident.close()))
                line.resident = None
        self._loaded.clear()
        if waits:
            await asyncio.wait(waits, timeout=SHUTDOWN_TIMEOUT_S)
