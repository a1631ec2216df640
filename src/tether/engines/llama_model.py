"""One loaded GGUF model and the blocking generation loop that runs in a worker thread.

llama-cpp-python's `Llama` is used through `_Llama`, a protocol naming only what is used here, so
mypy checks these calls even where the library's own annotations are loose. The loop is ours rather
than `create_completion`'s so that it can check for cancellation between prompt chunks and after
every token, count tokens exactly, and choose which cached state to start from:

- the context keeps the tokens it evaluated last and `Llama.generate` reuses their common prefix
  with the next prompt, so a session's next turn only evaluates what is new;
- when sessions interleave on one model, a `PromptCache` of saved states restores the one sharing
  the longest prefix with the prompt before that;
- a history too long for the window is cut where the last turn of that conversation was cut (a
  `TrimMemory`), so the prompt's start stays the same and these reuses keep working.

A `LoadedModel` is not thread-safe: the engine runs one generation at a time on it.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import json
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_grammar import LlamaGrammar

from tether.engines.base import (
    ChatMessage,
    Delta,
    EngineError,
    FinishReason,
    GenerationOptions,
    Usage,
)
from tether.engines.chat_template import ChatTemplate
from tether.engines.context_fit import FittedPrompt, TrimMemory, fit_prompt
from tether.engines.prompt_cache import PromptCache, SavedState, common_prefix
from tether.engines.stop_strings import StopMatcher

# Prompt tokens evaluated between two looks at the cancel flag. Measured on 2 cores, chunks of
# 64 to 512 evaluate a prompt equally fast, and 64 keeps a cancel during a long prompt under a
# second even for SmolLM2 on one busy core.
PREFILL_CHUNK = 64


class _Llama(Protocol):
    """The part of `llama_cpp.Llama` this module uses."""

    input_ids: npt.NDArray[np.intc]
    n_tokens: int
    metadata: dict[str, str]

    @property
    def ctx(self) -> Any: ...  # llama_context_p
    @property
    def model(self) -> Any: ...  # llama_model_p
    def tokenize(self, text: bytes, add_bos: bool = ..., special: bool = ...) -> list[int]: ...
    def detokenize(
        self, tokens: list[int], prev_tokens: list[int] | None = ..., special: bool = ...
    ) -> bytes: ...
    def n_ctx(self) -> int: ...
    def token_bos(self) -> int: ...
    def token_eos(self) -> int: ...
    def set_seed(self, seed: int) -> None: ...
    def eval(self, tokens: Sequence[int]) -> None: ...
    def generate(
        self,
        tokens: Sequence[int],
        top_k: int = ...,
        top_p: float = ...,
        min_p: float = ...,
        typical_p: float = ...,
        temp: float = ...,
        repeat_penalty: float = ...,
        reset: bool = ...,
        grammar: LlamaGrammar | None = ...,
    ) -> Generator[int, Sequence[int] | None, None]: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Sampling:
    """The engine's defaults for what a request leaves unset (and what it cannot set)."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0


@dataclass(slots=True)
class RunProgress:
    """Shared between the worker (which counts) and the event loop (which cancels)."""

    tokens: int = 0  # tokens sampled so far, an end-of-generation token included
    tokens_at_cancel: int | None = None
    cancelled_at: float | None = None  # time.perf_counter()

    def mark_cancelled(self) -> None:
        if self.cancelled_at is None:
            self.tokens_at_cancel, self.cancelled_at = self.tokens, time.perf_counter()


@dataclass(frozen=True, slots=True)
class RunStats:
    """What one generation did; handed to the engine's `on_run` hook, in the worker thread."""

    request_id: str
    model: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the context or the prompt cache
    trimmed_messages: int
    prefill_s: float
    total_s: float
    tokens_after_cancel: int | None = None  # sampled after cancel was asked for
    cancel_latency_s: float | None = None  # from cancel to the worker stopping


@functools.lru_cache(maxsize=32)
def _grammar_of(schema_json: str) -> LlamaGrammar:
    try:
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise EngineError(f"response_format: the JSON schema has no grammar: {error}") from error


def json_grammar(schema: dict[str, Any] | None) -> LlamaGrammar | None:
    """The llama.cpp grammar that makes the answer JSON valid against `schema` (cached)."""
    if schema is None:
        return None
    return _grammar_of(json.dumps(schema, sort_keys=True))


def _save_state(llama: _Llama) -> SavedState:
    size = int(llama_cpp.llama_state_get_size(llama.ctx))
    buffer = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_get_data(llama.ctx, buffer, size))
    return SavedState(
        tokens=llama.input_ids[: llama.n_tokens].copy(),
        data=ctypes.string_at(buffer, written),
    )


def _load_state(llama: _Llama, state: SavedState) -> None:
    buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
    if int(llama_cpp.llama_state_set_data(llama.ctx, buffer, len(state.data))) != len(state.data):
        raise EngineError("could not restore a cached prompt state")
    llama.input_ids[: len(state.tokens)] = state.tokens
    llama.n_tokens = len(state.tokens)


class LoadedModel:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_batch: int = 512,
        prefill_chunk: int = PREFILL_CHUNK,
        prompt_cache_bytes: int = 0,
    ) -> None:
        self.name = name
        self.path = path
        self.prefill_chunk = min(prefill_chunk, n_batch)
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as error:
            raise EngineError(f"could not load model {name!r} from {path}: {error}") from error
        self._llama = cast(_Llama, llama)
        self.n_ctx = self._llama.n_ctx()
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self.template = ChatTemplate(
            self._llama.metadata.get("tokenizer.chat_template"),
            bos_token=self._token_text(self._llama.token_bos()),
            eos_token=self._token_text(self._llama.token_eos()),
        )
        self.prompt_cache = PromptCache(prompt_cache_bytes)
        self.trims = TrimMemory()  # where long histories were cut: the same place next turn
        self._closed = False

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt tokens for `messages`: the template's text, its special tokens parsed.

        The template writes BOS itself where the model wants one, so none is added here.
        """
        text = self.template.render(messages)
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.prompt_cache.clear()
            self.trims.clear()
            self._llama.close()

    # -- prompt reuse --------------------------------------------------------------------------

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Put the context at the longest known prefix of `tokens`; return its length.

        At least the last prompt token is left to evaluate, so sampling starts from fresh logits.
        """
        llama = self._llama
        wanted = np.asarray(tokens, dtype=np.intc)
        live = common_prefix(llama.input_ids[: llama.n_tokens], wanted)
        if len(self.prompt_cache):
            saved_len, saved = self.prompt_cache.best(wanted)
            if saved is not None and saved_len > live:
                _load_state(llama, saved)
                live = saved_len
        llama.n_tokens = min(live, len(tokens) - 1)  # eval() drops the KV cells past this
        return llama.n_tokens

    def _remember(self) -> None:
        if self.prompt_cache.capacity_bytes > 0 and self._llama.n_tokens > 0:
            self.prompt_cache.put(_save_state(self._llama))

    # -- generation ----------------------------------------------------------------------------

    def fit(self, messages: Sequence[ChatMessage], max_tokens: int | None) -> FittedPrompt:
        """The prompt, trimmed so that it leaves room for the answer in the context window."""
        room = min(max_tokens or self.n_ctx // 4, self.n_ctx // 2)
        return fit_prompt(messages, self.encode, self.n_ctx - room, self.trims)

    def generate(
        self,
        request_id: str,
        messages: Sequence[ChatMessage],
        options: GenerationOptions,
        sampling: Sampling,
        emit: Callable[[Delta], None],
        cancelled: threading.Event,
        progress: RunProgress,
    ) -> RunStats:
        """Stream the answer through `emit`: text deltas, then the final one, also when
        cancelled (finish "cancelled", with the usage of what was evaluated and sampled)."""
        started = time.perf_counter()
        llama = self._llama
        fitted = self.fit(messages, options.max_tokens)
        tokens = fitted.tokens
        if not tokens:
            raise EngineError("the chat template produced an empty prompt")
        try:
            cached = self._reuse_prefix(tokens)
            # The prompt is evaluated in chunks, so that a cancel is seen between them too.
            while llama.n_tokens < len(tokens) - 1 and not cancelled.is_set():
                end = min(llama.n_tokens + self.prefill_chunk, len(tokens) - 1)
                llama.eval(tokens[llama.n_tokens : end])
            prefilled = time.perf_counter()
            finish, completion = self._sample(tokens, options, sampling, emit, cancelled, progress)
        except BaseException:
            llama.n_tokens = 0  # the context's contents are unknown now: reuse none of it
            raise
        usage = Usage(prompt_tokens=len(tokens), completion_tokens=completion)
        metadata: dict[str, Any] = {
            "trimmed_messages": fitted.trimmed_messages,
            "cached_tokens": cached,
        }
        if fitted.truncated_messages:
            metadata["truncated_messages"] = fitted.truncated_messages
        emit(Delta(finish_reason=finish, usage=usage, metadata=metadata))
        self._remember()  # after the final delta: the client need not wait for the copy

        ended = time.perf_counter()
        after_cancel = latency = None
        if progress.tokens_at_cancel is not None and progress.cancelled_at is not None:
            after_cancel = progress.tokens - progress.tokens_at_cancel
            latency = ended - progress.cancelled_at
        return RunStats(
            request_id=request_id,
            model=self.name,
            finish_reason=finish,
            prompt_tokens=len(tokens),
            completion_tokens=completion,
            cached_tokens=cached,
            trimmed_messages=fitted.trimmed_messages,
            prefill_s=prefilled - started,
            total_s=ended - started,
            tokens_after_cancel=after_cancel,
            cancel_latency_s=latency,
        )

    def _sample(
        self,
        tokens: list[int],
        options: GenerationOptions,
        sampling: Sampling,
        emit: Callable[[Delta], None],
        cancelled: threading.Event,
        progress: RunProgress,
    ) -> tuple[FinishReason, int]:
        """Sample the answer token by token; return why it ended and how many tokens it has."""
        llama = self._llama
        limit = self.n_ctx - len(tokens)
        if options.max_tokens is not None:
            limit = min(limit, options.max_tokens)
        if cancelled.is_set():
            return "cancelled", 0
        if limit <= 0:
            return "length", 0
        grammar = json_grammar(options.json_schema)
        llama.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if options.seed is None else options.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(options.stop)
        finish: FinishReason = "length"
        completion = 0
        steps = llama.generate(
            tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p if options.top_p is None else options.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature if options.temperature is None else options.temperature,
            repeat_penalty=sampling.repeat_penalty,
            reset=True,  # reset=True is what makes generate() reuse the evaluated prefix
            grammar=grammar,
        )
        try:
            for token in steps:
                progress.tokens += 1
                if cancelled.is_set():
                    return "cancelled", completion
                if self._is_end_of_generation(token):
                    finish = "stop"
                    break
                completion += 1
                text = stops.feed(decoder.decode(llama.detokenize([token])))
                if text:
                    emit(Delta(text=text))
                if stops.stopped:
                    finish = "stop"
                    break
                if completion >= limit:
                    break
        finally:
            steps.close()
        rest = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
        if rest:
            emit(Delta(text=rest))
        return finish, completion
