"""Raw llama-cpp-python, the peer of the model benchmarks, in a process of its own.

The model is loaded once (`n_ctx` 4096, the threads given); then each line read is a JSON request
`{"messages": [...], "max_tokens": N}`, answered with one JSON line of measurements: `ttft`
(seconds from the call to the first text), `tokens` (text chunks: one per token), `decode`
(seconds from the first text to the last) and the answer's `text`. Greedy, repeat penalty 1.0,
`seed` fixed: what Tether's llamacpp engine is configured to do.

    .venv/bin/python bench/peer_llamacpp.py MODEL THREADS SEED
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import llama_cpp


def main() -> None:
    model, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm = llama_cpp.Llama(
        model, n_ctx=4096, n_threads=threads, n_threads_batch=threads, seed=seed, verbose=False
    )
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        first = last = 0.0
        tokens, text = 0, []
        stream: Any = llm.create_chat_completion(
            messages=request["messages"],
            stream=True,
            max_tokens=request["max_tokens"],
            temperature=0.0,
            repeat_penalty=1.0,
            seed=seed,
        )
        for chunk in stream:
            content = chunk["choices"][0]["delta"].get("content")
            if content:
                last = time.perf_counter()
                first = first or last
                tokens += 1
                text.append(content)
        result = {"ttft": first - start, "tokens": tokens, "decode": last - first}
        print(json.dumps({**result, "text": "".join(text)}), flush=True)


if __name__ == "__main__":
    main()
