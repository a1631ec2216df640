"""One loaded GGUF model and its decode loop: up to `n_slots` generations decoded together.

Every request for the model becomes a `Job` handed to `submit`; one thread (the model's own,
`serve`) is the only one that touches the llama.cpp context (`NativeModel`). Each turn of its
loop takes the jobs that arrived (fits the prompt into the window, makes the sequence's sampler,
gives it a slot: `Scheduler.choose`/`start`), ends the sequences whose consumers left, and
decodes one step for all the others together (`Scheduler.plan`): one token per generating
sequence, plus chunks of the prompts being read. Then each sequence that wanted logits samples
its next token with its own sampler chain (its options and seed: a greedy answer is the same
alone or in a batch), its text goes through its stop strings, and it ends on an end-of-generation
token, a stop string, `max_tokens` or its context window being full.

Prompt reuse:

- a slot's KV cells stay after its generation, and a new prompt goes to the free slot sharing
  the longest prefix with it, so a returning session only evaluates what is new;
- the state of each finished sequence is also saved in a `PromptCache` (byte-bounded LRU), and
  restored into the chosen slot when it shares a longer prefix than the slot does;
- a history too long for the window is cut where that conversation was cut last (`TrimMemory`),
  so the prompt's start stays the same and these reuses keep working.

Each job's stream (`ThreadStream`) gets its text deltas, then one final delta (also when
cancelled: finish "cancelled", with the usage of what was evaluated and sampled), then its end.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from tether.engines.base import (
    ChatMessage,
    Delta,
    EngineError,
    FinishReason,
    GenerationRequest,
    Usage,
)
from tether.engines.batch_schedule import Piece, Scheduler
from tether.engines.chat_template import ChatTemplate
from tether.engines.context_fit import FittedPrompt, TrimMemory, fit_prompt
from tether.engines.grammars import call_grammar, json_grammar
from tether.engines.llama_native import FlashAttention, NativeModel, Sampler, SamplerSpec
from tether.engines.prompt_cache import PromptCache, SavedState
from tether.engines.stop_strings import StopMatcher
from tether.engines.thread_stream import ThreadStream

log = structlog.get_logger(__name__)

# Prompt tokens evaluated per step, shared by the prompts being read (oldest first). Measured on
# 2 cores, chunks of 64 to 512 evaluate a prompt equally fast; 128 keeps a step (and so a cancel,
# and the pause the other sequences see) well under a second on SmolLM2 on one busy core.
PREFILL_BUDGET = 128


@dataclass(frozen=True, slots=True)
class Sampling:
    """The engine's defaults for what a request leaves unset (and what it cannot set)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0

    def spec(self, request: GenerationRequest) -> SamplerSpec:
        """The request's sampling; a forced call's grammar outranks a JSON schema's (the answer
        is then a call, not text)."""
        options = request.options
        grammar = (
            json_grammar(options.json_schema)
            if request.forced_call is None
            else call_grammar(request.tools, request.forced_call)
        )
        return SamplerSpec(
            temperature=self.temperature if options.temperature is None else options.temperature,
            top_p=self.top_p if options.top_p is None else options.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            seed=options.seed,
            grammar=grammar,
        )


@dataclass(slots=True)
class RunProgress:
    """Shared between the decode thread (which counts) and the event loop (which cancels)."""

    tokens: int = 0  # tokens sampled so far, an end-of-generation token included
    tokens_at_cancel: int | None = None
    cancelled_at: float | None = None  # time.perf_counter()

    def mark_cancelled(self) -> None:
        if self.cancelled_at is None:
            self.tokens_at_cancel, self.cancelled_at = self.tokens, time.perf_counter()


@dataclass(frozen=True, slots=True)
class RunStats:
    """What one generation did; handed to the engine's `on_run` hook, in the decode thread."""

    request_id: str
    model: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache or the prompt cache
    trimmed_messages: int
    prefill_s: float
    total_s: float
    tokens_after_cancel: int | None = None  # sampled after cancel was asked for
    cancel_latency_s: float | None = None  # from cancel to the sequence ending


@dataclass(eq=False, slots=True)
class Job:
    """One request for the model, as the engine hands it over (on the event loop)."""

    request: GenerationRequest
    sampling: Sampling
    stream: ThreadStream[Delta]
    progress: RunProgress = field(default_factory=RunProgress)
    on_run: Callable[[RunStats], None] | None = None


@dataclass(eq=False, slots=True)
class _Sequence:
    """A job in its slot: what the decode thread keeps for it."""

    job: Job
    fitted: FittedPrompt
    sampler: Sampler
    limit: int  # completion tokens it may make: max_tokens, and the room left in its window
    cached: int = 0
    completion: int = 0
    started: float = field(default_factory=time.perf_counter)
    prefilled: float | None = None
    stops: StopMatcher = field(init=False)
    decoder: codecs.IncrementalDecoder = field(init=False)

    def __post_init__(self) -> None:
        self.stops = StopMatcher(self.job.request.options.stop)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def cancelled(self) -> bool:
        return self.job.stream.cancelled.is_set()

    def say(self, data: bytes, *, final: bool = False) -> None:
        text = self.stops.feed(self.decoder.decode(data, final=final))
        if final:
            text += self.stops.flush()
        if text:
            self.job.stream.emit(Delta(text=text))

    def final_delta(self, finish: FinishReason) -> Delta:
        metadata: dict[str, Any] = {
            "trimmed_messages": self.fitted.trimmed_messages,
            "cached_tokens": self.cached,
        }
        if self.fitted.truncated_messages:
            metadata["truncated_messages"] = self.fitted.truncated_messages
        usage = Usage(prompt_tokens=len(self.fitted.tokens), completion_tokens=self.completion)
        return Delta(finish_reason=finish, usage=usage, metadata=metadata)

    def stats(self, model: str, finish: FinishReason) -> RunStats:
        ended = time.perf_counter()
        progress = self.job.progress
        after_cancel = latency = None
        if progress.tokens_at_cancel is not None and progress.cancelled_at is not None:
            after_cancel = progress.tokens - progress.tokens_at_cancel
            latency = ended - progress.cancelled_at
        return RunStats(
            request_id=self.job.request.request_id,
            model=model,
            finish_reason=finish,
            prompt_tokens=len(self.fitted.tokens),
            completion_tokens=self.completion,
            cached_tokens=self.cached,
            trimmed_messages=self.fitted.trimmed_messages,
            prefill_s=(self.prefilled or ended) - self.started,
            total_s=ended - self.started,
            tokens_after_cancel=after_cancel,
            cancel_latency_s=latency,
        )


class LoadedModel:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_slots: int = 1,
        flash_attn: FlashAttention = "off",
        prefill_budget: int = PREFILL_BUDGET,
        prompt_cache_bytes: int = 0,
    ) -> None:
        """Load the model (blocking: call it on the thread that will `serve` it)."""
        self.name = name
        self.path = path
        self.native = NativeModel(
            path, n_ctx=n_ctx, n_seq=n_slots, n_threads=n_threads, flash_attn=flash_attn
        )
        self.n_ctx = self.native.n_ctx
        budget = min(prefill_budget, self.native.n_batch - n_slots)
        self.scheduler: Scheduler[_Sequence] = Scheduler(n_slots, budget)
        self.template = ChatTemplate(
            self.native.metadata("tokenizer.chat_template"),
            bos_token=self.native.token_text(self.native.bos),
            eos_token=self.native.token_text(self.native.eos),
        )
        self.prompt_cache = PromptCache(prompt_cache_bytes)
        self.trims = TrimMemory()  # where long histories were cut: the same place next turn
        self._wake = threading.Condition()
        self._inbox: list[Job] = []
        self._stopping = False

    # -- the event loop's side -----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Hand a job to the decode loop (thread-safe); its stream tells the rest."""
        with self._wake:
            self._inbox.append(job)
            self._wake.notify()

    def stop(self) -> None:
        """End `serve`: running sequences finish "cancelled", waiting jobs fail (thread-safe)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()

    # -- prompts -------------------------------------------------------------------------------

    def encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt tokens for `messages`: the template's text, its special tokens parsed.

        The template writes BOS itself where the model wants one, so none is added here.
        """
        return self.native.tokenize(self.template.render(messages))

    def fit(self, messages: Sequence[ChatMessage], max_tokens: int | None) -> FittedPrompt:
        """The prompt, trimmed so that it leaves room for the answer in the context window."""
        room = min(max_tokens or self.n_ctx // 4, self.n_ctx // 2)
        return fit_prompt(messages, self.encode, self.n_ctx - room, self.trims)

    # -- the decode thread ---------------------------------------------------------------------

    def serve(self) -> None:
        """The decode loop, until `stop`; then the model is closed."""
        try:
            while (arrivals := self._next_arrivals()) is not None:
                try:
                    self._turn(arrivals)
                except Exception as error:  # a bug here must not leave streams hanging
                    log.exception("llamacpp.decode_loop_failed", model=self.name)
                    for seq_id, _ in self.scheduler.running():
                        self._fail(seq_id, EngineError(f"generation failed: {error}"))
        finally:
            self._shut()

    def _turn(self, arrivals: list[Job]) -> None:
        for job in arrivals:
            self._admit(job)
        for seq_id, sequence in self.scheduler.running():
            if sequence.cancelled:
                self._end(seq_id, "cancelled")
        pieces = self.scheduler.plan()
        if pieces:
            self._step(pieces)

    def _next_arrivals(self) -> list[Job] | None:
        """The jobs that came since the last step (waiting while there is nothing to do), or
        None once stopping."""
        with self._wake:
            while not (self._inbox or self._stopping or self.scheduler.running()):
                self._wake.wait()
            if self._stopping:
                return None
            arrivals, self._inbox = self._inbox, []
            return arrivals

    def _admit(self, job: Job) -> None:
        options = job.request.options
        try:
            fitted = self.fit(job.request.messages, options.max_tokens)
            if not fitted.tokens:
                raise EngineError("the chat template produced an empty prompt")
            sampler = self.native.sampler(job.sampling.spec(job.request), fitted.tokens)
        except EngineError as error:
            job.stream.end(error)
            return
        except Exception as error:  # llama.cpp or template failures reach the client
            job.stream.end(EngineError(f"generation failed: {error}"))
            return
        limit = self.n_ctx - len(fitted.tokens)
        if options.max_tokens is not None:
            limit = min(limit, options.max_tokens)
        sequence = _Sequence(job, fitted, sampler, limit)
        seq_id = self._place(sequence)
        if seq_id is None:
            return
        if sequence.cancelled:
            self._end(seq_id, "cancelled")
        elif limit <= 0:
            self._end(seq_id, "length")

    def _place(self, sequence: _Sequence) -> int | None:
        """Give the sequence a slot, reusing the longest prefix of its prompt known; None when
        llama.cpp refused to clear the slot (the sequence has failed)."""
        tokens = sequence.fitted.tokens
        seq_id, live = self.scheduler.choose(tokens)
        restored: Sequence[int] | None = None
        if len(self.prompt_cache):
            saved_len, saved = self.prompt_cache.best(np.asarray(tokens, dtype=np.intc))
            if saved is not None and saved_len > live:
                try:
                    self.native.restore(seq_id, saved.data)
                    restored = saved.tokens.tolist()
                except EngineError:
                    self.scheduler.forget(seq_id)  # what the slot holds now is unknown
                    restored = ()
        keep = self.scheduler.start(seq_id, sequence, tokens, restored)
        try:
            self.native.drop(seq_id, keep)
        except EngineError as error:
            self._fail(seq_id, error)
            return None
        sequence.cached = keep
        return seq_id

    def _step(self, pieces: list[Piece]) -> None:
        try:
            outputs = self.native.decode(pieces)
        except Exception as error:
            failure = error if isinstance(error, EngineError) else EngineError(str(error))
            for piece in pieces:
                self._fail(piece.seq_id, failure)
            return
        self.scheduler.evaluated(pieces)
        now = time.perf_counter()
        wanting = [piece for piece in pieces if piece.logits]
        for piece, output in zip(wanting, outputs, strict=True):
            sequence = self.scheduler.job(piece.seq_id)
            if sequence is None:
                continue
            if sequence.prefilled is None:
                sequence.prefilled = now
            token = sequence.sampler.sample(output)
            finish = self._take(sequence, token)
            if finish is None:
                self.scheduler.feed(piece.seq_id, token)
            else:
                self._end(piece.seq_id, finish)

    def _take(self, sequence: _Sequence, token: int) -> FinishReason | None:
        """Add a sampled token to the answer; why the sequence ends, if it does."""
        sequence.job.progress.tokens += 1
        if sequence.cancelled:
            return "cancelled"
        if self.native.is_end_of_generation(token):
            return "stop"
        sequence.completion += 1
        sequence.say(self.native.piece(token))
        if sequence.stops.stopped:
            return "stop"
        if sequence.completion >= sequence.limit:
            return "length"
        return None

    def _end(self, seq_id: int, finish: FinishReason) -> None:
        """The sequence is over: its final delta, its state saved, its stream ended."""
        sequence = self.scheduler.finish(seq_id)
        if sequence is None:
            return
        sequence.sampler.free()
        stream = sequence.job.stream
        if finish != "cancelled":
            sequence.say(b"", final=True)
        stream.emit(sequence.final_delta(finish))
        if finish != "cancelled":
            self._remember(seq_id)
        hook = sequence.job.on_run
        if hook is not None:
            try:
                hook(sequence.stats(self.name, finish))
            except Exception:  # a broken hook must not fail a finished answer
                log.exception("llamacpp.on_run_failed")
        stream.end()

    def _fail(self, seq_id: int, error: EngineError) -> None:
        sequence = self.scheduler.finish(seq_id)
        self.scheduler.forget(seq_id)
        if sequence is not None:
            sequence.sampler.free()
            sequence.job.stream.end(error)

    def _remember(self, seq_id: int) -> None:
        tokens = self.scheduler.cached(seq_id)
        if self.prompt_cache.capacity_bytes > 0 and tokens:
            data = self.native.save(seq_id)
            self.prompt_cache.put(SavedState(np.asarray(tokens, dtype=np.intc), data))

    def _shut(self) -> None:
        with self._wake:
            waiting, self._inbox = self._inbox, []
        for job in waiting:
            job.stream.end(EngineError("the llamacpp engine is shut down"))
        for seq_id, _ in self.scheduler.running():
            self._end(seq_id, "cancelled")
        self.prompt_cache.clear()
        self.trims.clear()
        self.native.close()
