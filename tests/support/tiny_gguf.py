"""Build a tiny GGUF model for tests: a real tokenizer and chat template on random weights.

The model copies every `tokenizer.*` field (vocabulary, merges, special token ids, chat template)
of a real GGUF and adds a 2-layer, 64-wide llama with seeded random weights: about 7 MB, loads
in a tenth of a second and generates over a thousand tokens a second on 2 cores. Its answers are
nonsense, but every step llama.cpp takes on it is the real one, so tests exercise the real
template, tokenizer, sampler, KV cache and cancellation without a real model's cost.

Reading the source tokenizer takes seconds, so `ensure_tiny_gguf` keeps the result in a cache
folder under a name derived from the source file's path, size and modification time.

    python -m tests.support.tiny_gguf OUT.gguf --from dist/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

BUILDER_VERSION = 1  # bump when the output changes, so cached files are rebuilt
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_FF = 128
N_CTX_TRAIN = 8192


def _copy_tokenizer(reader: GGUFReader, writer: GGUFWriter) -> int:
    """Copy every `tokenizer.*` field; return the vocabulary size."""
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(name, value, main_type, sub_type)
        if name == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    if n_vocab == 0:
        raise ValueError("the source GGUF has no tokenizer.ggml.tokens")
    return n_vocab


def build_tiny_gguf(source: Path, out: Path, *, seed: int = 0) -> Path:
    """Write the tiny model to `out` (atomically) using `source`'s tokenizer and template."""
    reader = GGUFReader(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=out.name, suffix=".part", dir=out.parent)
    os.close(fd)
    try:
        writer = GGUFWriter(partial, arch="llama")
        writer.add_name("tether-tiny-test-model")
        n_vocab = _copy_tokenizer(reader, writer)
        writer.add_context_length(N_CTX_TRAIN)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYER)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD)
        writer.add_rope_dimension_count(N_EMBD // N_HEAD)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_file_type(1)  # mostly F16

        rng = np.random.default_rng(seed)

        def weight(*shape: int) -> np.ndarray[tuple[int, ...], np.dtype[np.float16]]:
            return (rng.standard_normal(shape) * 0.3).astype(np.float16)

        ones = np.ones(N_EMBD, dtype=np.float32)
        # numpy shapes are (rows, cols): llama.cpp's ne reversed. The output layer is tied.
        writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD))
        writer.add_tensor("output_norm.weight", ones)
        for layer in range(N_LAYER):
            prefix = f"blk.{layer}."
            writer.add_tensor(prefix + "attn_norm.weight", ones)
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                writer.add_tensor(f"{prefix}{name}.weight", weight(N_EMBD, N_EMBD))
            writer.add_tensor(prefix + "ffn_norm.weight", ones)
            writer.add_tensor(prefix + "ffn_gate.weight", weight(N_FF, N_EMBD))
            writer.add_tensor(prefix + "ffn_up.weight", weight(N_FF, N_EMBD))
            writer.add_tensor(prefix + "ffn_down.weight", weight(N_EMBD, N_FF))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return out


def cache_key(source: Path) -> str:
    stat = source.stat()
    identity = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{BUILDER_VERSION}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def ensure_tiny_gguf(cache_dir: Path, source: Path) -> Path:
    """The tiny model built from `source`, from `cache_dir` if it is there already.

    Safe to call from several processes at once: each builds into a temporary file and renames.
    """
    out = Path(cache_dir) / f"tiny-{cache_key(Path(source))}.gguf"
    if out.is_file():
        return out
    return build_tiny_gguf(Path(source), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the tiny .gguf")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=Path("dist/SmolLM2-135M-Instruct.Q4_1.gguf"),
        help="the GGUF whose tokenizer and chat template to copy",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    out = build_tiny_gguf(args.source, args.out, seed=args.seed)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
