"""The ctypes side of one loaded GGUF model: llama-cpp-python's public low-level API only.

`NativeModel` owns a llama.cpp model, one context whose KV cache holds `n_seq` sequences of
`n_ctx` tokens each (one stream per sequence, `kv_unified` off), and one batch. It tokenizes,
turns tokens into text, decodes a step's `Piece`s, samples with a sequence's sampler chain,
drops a sequence's KV cells past a position, and saves or restores a sequence's state. It is not
thread-safe: only the model's decode thread calls it (`llama_model.py`).

Failures raise `EngineError`: a file that does not load, a decode llama.cpp refuses, a grammar
it refuses, a saved state it cannot restore.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import llama_cpp
import structlog

from tether.engines.base import EngineError
from tether.engines.batch_schedule import Piece
from tether.engines.grammars import Grammar

log = structlog.get_logger(__name__)

N_BATCH = 512
# llama.cpp's flash attention: "auto" lets llama.cpp choose (on, on this CPU build).
FlashAttention = Literal["auto", "on", "off"]
_FLASH_ATTN_TYPES = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
PENALTY_LAST_N = 64
GGML_LOG_LEVEL_ERROR = 4


def _log_errors_only(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    """llama.cpp's log: its errors to ours, its chatter (every load, every graph) dropped."""
    if level == GGML_LOG_LEVEL_ERROR and text:
        log.warning("llama_cpp.error", message=text.decode("utf-8", "replace").rstrip())


# Kept here so the callback outlives every call llama.cpp makes to it.
_LOG_CALLBACK = llama_cpp.llama_log_callback(_log_errors_only)


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """One sequence's sampling: temperature 0 is greedy (the argmax, whatever else is set)."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None  # None: a random seed
    grammar: Grammar | None = None


class NativeModel:
    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_seq: int,
        n_threads: int,
        flash_attn: FlashAttention = "off",
        n_batch: int = N_BATCH,
    ) -> None:
        llama_cpp.llama_log_set(_LOG_CALLBACK, None)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise EngineError(f"could not load a GGUF model from {path}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_seq_max = n_seq
        params.kv_unified = False  # each sequence its own n_ctx of KV cache
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = _FLASH_ATTN_TYPES[flash_attn]
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise EngineError(f"could not make a llama.cpp context for {path} ({n_seq} x {n_ctx})")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)

    # -- vocabulary ----------------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        size = int(llama_cpp.llama_model_meta_val_str(self._model, key.encode(), None, 0))
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, size + 1)
        return buffer.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        """Tokens of `text`, special tokens parsed, no BOS added (templates write their own)."""
        data = text.encode("utf-8")
        room = len(data) + 8
        for _ in range(2):
            tokens = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, room, False, True)
            if n >= 0:
                return list(tokens[:n])
            room = -n
        raise EngineError("could not tokenize the prompt")

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (maybe part of a UTF-8 character)."""
        size = 32
        for _ in range(2):
            buffer = ctypes.create_string_buffer(size)
            n = int(llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, special))
            if n >= 0:
                return buffer.raw[:n]
            size = -n
        raise EngineError(f"token {token} has no text")

    def token_text(self, token: int) -> str:
        return "" if token < 0 else self.piece(token, special=True).decode("utf-8", "replace")

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self._vocab))

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- sequences -----------------------------------------------------------------------------

    def decode(self, pieces: Sequence[Piece]) -> list[int]:
        """Evaluate one step; return, for each piece that wants logits, its batch index."""
        batch = self._batch
        n = 0
        outputs: list[int] = []
        for piece in pieces:
            last = len(piece.tokens) - 1
            for k, token in enumerate(piece.tokens):
                batch.token[n] = token
                batch.pos[n] = piece.pos + k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = piece.seq_id
                batch.logits[n] = piece.logits and k == last
                n += 1
            if piece.logits:
                outputs.append(n - 1)
        if n > self.n_batch:
            raise EngineError(f"a step of {n} tokens is over the batch size {self.n_batch}")
        batch.n_tokens = n
        status = int(llama_cpp.llama_decode(self._ctx, batch))
        if status != 0:
            raise EngineError(f"llama_decode failed (status {status})")
        return outputs

    def drop(self, seq_id: int, start: int) -> None:
        """Drop the sequence's KV cells from position `start` on (0: all of it)."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, seq_id, start, -1):
            raise EngineError(f"could not drop sequence {seq_id} from position {start}")

    def save(self, seq_id: int) -> bytes:
        size = int(llama_cpp.llama_state_seq_get_size(self._ctx, seq_id))
        buffer = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, seq_id))
        return ctypes.string_at(buffer, written)

    def restore(self, seq_id: int, data: bytes) -> None:
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if int(llama_cpp.llama_state_seq_set_data(self._ctx, buffer, len(data), seq_id)) == 0:
            raise EngineError("could not restore a cached prompt state")

    # -- sampling ------------------------------------------------------------------------------

    def sampler(self, spec: SamplerSpec, history: Sequence[int]) -> Sampler:
        """A sampler chain for one sequence; `history`: the prompt, for the repeat penalty."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        sampler = Sampler(chain, self._ctx)
        try:
            if spec.repeat_penalty != 1.0:
                penalties = llama_cpp.llama_sampler_init_penalties(
                    PENALTY_LAST_N, spec.repeat_penalty, 0.0, 0.0
                )
                for token in history[-PENALTY_LAST_N:]:
                    llama_cpp.llama_sampler_accept(penalties, token)
                sampler.add(penalties)
            if spec.grammar is not None:
                grammar = llama_cpp.llama_sampler_init_grammar(
                    self._vocab, spec.grammar.text.encode(), spec.grammar.root.encode()
                )
                if not grammar:
                    raise EngineError("llama.cpp refused the grammar of the answer's schema")
                sampler.add(grammar)
            if spec.temperature <= 0:
                sampler.add(llama_cpp.llama_sampler_init_greedy())
            else:
                seed = llama_cpp.LLAMA_DEFAULT_SEED if spec.seed is None else spec.seed
                sampler.add(llama_cpp.llama_sampler_init_top_k(spec.top_k))
                sampler.add(llama_cpp.llama_sampler_init_top_p(spec.top_p, 1))
                sampler.add(llama_cpp.llama_sampler_init_min_p(spec.min_p, 1))
                sampler.add(llama_cpp.llama_sampler_init_temp(spec.temperature))
                sampler.add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            sampler.free()
            raise
        return sampler


class Sampler:
    """A llama.cpp sampler chain (it owns the samplers added to it)."""

    def __init__(self, chain: Any, ctx: Any) -> None:
        self._chain = chain
        self._ctx = ctx

    def add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, output: int) -> int:
        """The next token from the logits at batch index `output` (accepted by the chain)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, self._ctx, output))

    def free(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
