"""Parallel decoding: aggregate tokens/s and time to first token with 1, 2, 4 and 8 requests at
once on SmolLM2, Tether (`/v1`, `engine.llamacpp.parallel`) beside `python -m llama_cpp.server`
(one generation at a time), same GGUF, greedy, same thread count, in the same script.

Both servers run in processes of their own with the model loaded once. For each concurrency c
the same load goes to one server then the other, and rounds repeat that, so machine noise hits
both alike. A load is c streamed requests sent together, each with a prompt of its own (a
numbered variant, so no server answers from a cached prompt). Per load:

- aggregate tokens/s: every request's completion tokens over the wall time from sending the
  first to the last one ending;
- per stream: its tokens after the first over the time from its first to its last token, and
  its time to first token (TTFT);
- `share`: the slowest stream's rate over the median solo (c = 1) stream rate.

`ratio` is Tether's aggregate tokens/s at 4 at once over at 1 (the median of rounds). Beside it,
`kernel`: what llama.cpp itself gains from batching on this CPU, with no server at all: the time
of one decode step of n sequences (one token each) against n steps of one, in this process,
before the servers start. No server can batch better than that.

    .venv/bin/python bench/bench_parallel.py [--quick] [--parallel 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MODEL, ROOT, Goal, Outcome, Profile, free_port
from llamacpp_stream import sse_turn
from llamacpp_stream import tokens_per_s as tps

CONCURRENCY = (1, 2, 4, 8)
QUICK_CONCURRENCY = (1, 4)  # what the ratio needs: a quick run stays short
TETHER_MODEL = "SmolLM2-135M-Instruct.Q4_1"
Run = dict[str, float]


def wait_ready(url: str, process: subprocess.Popen[bytes], deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited during start-up")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling another process's readiness, bounded by the deadline
    raise TimeoutError(f"{url} did not come up")


def start_servers(
    threads: int, parallel: int, tmp: str
) -> list[tuple[str, subprocess.Popen[bytes], str]]:
    llama_port, tether_port = free_port(), free_port()
    llama_server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(MODEL), "--n_ctx", "4096",
         "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--port", str(llama_port), "--verbose", "false",
         "--interrupt_requests", "false"],  # its default drops a stream when another comes
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TETHER_")},
        "TETHER_ENGINE__LLAMACPP__N_THREADS": str(threads),
        "TETHER_ENGINE__LLAMACPP__PARALLEL": str(parallel),
        "TETHER_ENGINE__LLAMACPP__MAX_QUEUE": "64",
        "TETHER_LOG_LEVEL": "warning",
    }
    tether = subprocess.Popen(
        [sys.executable, "-m", "tether", "serve", "--config", str(ROOT / "config.yaml"),
         "--engine", "llamacpp", "--port", str(tether_port), "--db", f"{tmp}/bench.db"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return [
        ("tether", tether, f"http://127.0.0.1:{tether_port}"),
        ("llama_cpp.server", llama_server, f"http://127.0.0.1:{llama_port}"),
    ]


def load(url: str, model: str, concurrent: int, max_tokens: int, tag: str) -> dict[str, Any]:
    """`concurrent` requests at once; their figures and the aggregate rate."""

    def one(index: int) -> Run:
        with httpx.Client(timeout=600) as client:
            prompt = f"Story {tag}-{index}: write a long story about a robot who learns to paint."
            return sse_turn(client, url, model, max_tokens, prompt)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        runs = list(pool.map(one, range(concurrent)))
    wall = time.perf_counter() - started
    return {
        "aggregate_tps": sum(run["tokens"] for run in runs) / wall,
        "stream_tps": [tps(run) for run in runs],
        "ttft_ms": [run["ttft"] * 1000 for run in runs],
        "tokens": [run["tokens"] for run in runs],
    }


def kernel(threads: int, repeats: int, levels: tuple[int, ...]) -> dict[int, float]:
    """llama.cpp's throughput at n sequences a step over 1 a step (decode only), for each of
    `levels` (1 among them)."""
    from tether.engines.batch_schedule import Piece
    from tether.engines.llama_native import NativeModel

    model = NativeModel(MODEL, n_ctx=1024, n_seq=max(levels), n_threads=threads)
    try:
        tokens = model.tokenize("Write a long story about a robot who learns to paint.")
        for seq in range(max(levels)):
            model.decode([Piece(seq, tuple(tokens), 0, True)])
        steps: dict[int, list[float]] = {c: [] for c in levels}
        for _ in range(repeats):
            for c in levels:
                started = time.perf_counter()
                for k in range(10):
                    pos = len(tokens) + k
                    model.decode([Piece(seq, (tokens[k],), pos, True) for seq in range(c)])
                steps[c].append((time.perf_counter() - started) / 10)
                for seq in range(c):
                    model.drop(seq, len(tokens))
    finally:
        model.close()
    solo = statistics.median(steps[1])
    return {c: c * solo / statistics.median(times) for c, times in steps.items()}


def summary(loads: list[dict[str, Any]], solo_tps: float) -> dict[str, float]:
    """The median over rounds of a concurrency's figures."""
    return {
        "aggregate_tps": statistics.median(x["aggregate_tps"] for x in loads),
        "min_stream_tps": statistics.median(min(x["stream_tps"]) for x in loads),
        "share": statistics.median(min(x["stream_tps"]) for x in loads) / solo_tps,
        "ttft_median_ms": statistics.median(statistics.median(x["ttft_ms"]) for x in loads),
        "ttft_max_ms": statistics.median(max(x["ttft_ms"]) for x in loads),
        "tokens": statistics.median(sum(x["tokens"]) for x in loads),
    }


def run(
    quick: bool, *, parallel: int = 8, threads: int | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """Measure both servers; `quick`: one round of 32 tokens at 1 and 4 at once (else three
    of 128 at 1, 2, 4 and 8)."""
    if not MODEL.is_file():
        raise FileNotFoundError(f"{MODEL} is missing: run ./setup.sh")
    threads = threads or os.cpu_count() or 1
    rounds, max_tokens = (1, max_tokens or 32) if quick else (3, max_tokens or 128)
    levels = QUICK_CONCURRENCY if quick else CONCURRENCY
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {}
    gains = kernel(threads, 2 if quick else 6, levels)
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(threads, parallel, tmp)
        try:
            models = {}
            for name, process, url in servers:
                wait_ready(url, process)
                models[name] = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
                load(url, models[name], 1, 8, "warm")
                raw[name] = {c: [] for c in levels}
            for round_ in range(rounds):
                for c in levels:
                    for name, _, url in servers:
                        raw[name][c].append(load(url, models[name], c, max_tokens, f"{round_}{c}"))
        finally:
            for _, process, _ in servers:
                process.terminate()
                process.wait(timeout=30)
    result: dict[str, Any] = {"parallel": parallel, "threads": threads, "max_tokens": max_tokens}
    result["rounds"] = rounds
    result["kernel"] = gains
    for name, by_c in raw.items():
        solo = statistics.median(statistics.median(x["stream_tps"]) for x in by_c[1])
        result[name] = {c: summary(loads, solo) for c, loads in by_c.items()}
    ours = result["tether"]
    result["ratio"] = ours[4]["aggregate_tps"] / ours[1]["aggregate_tps"]
    result["share_at_4"] = ours[4]["share"]
    peer = result["llama_cpp.server"]
    result["peer_ratio"] = peer[4]["aggregate_tps"] / peer[1]["aggregate_tps"]
    return result


def parallel_decoding(profile: Profile) -> Outcome:
    """`bench/run.py`'s entry: `run` at the profile's length and threads, as an `Outcome`."""
    result = run(profile.quick, threads=profile.threads)
    figures: dict[str, float | int | str] = {
        "peer_ratio": round(result["peer_ratio"], 3),
        "kernel_gain_at_4": round(result["kernel"][4], 3),
        "threads": result["threads"],
        "max_tokens": result["max_tokens"],
    }
    for name in ("tether", "llama_cpp.server"):
        for c, row in result[name].items():
            figures[f"{name}_{c}_aggregate_tps"] = round(row["aggregate_tps"], 1)
            figures[f"{name}_{c}_ttft_median_ms"] = round(row["ttft_median_ms"], 1)
    return Outcome(
        ratio=result["ratio"],
        summary=(
            f"aggregate tok/s at 4 at once / at 1 (llama_cpp.server {result['peer_ratio']:.2f}; "
            f"llama.cpp's own batching gain here {result['kernel'][4]:.2f})"
        ),
        figures=figures,
        goals=(
            Goal("aggregate at 4 / at 1", result["ratio"], ">=", 2.5),
            Goal("slowest stream at 4 / solo", result["share_at_4"], ">=", 0.5),
        ),
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        f"threads {result['threads']}, tether parallel {result['parallel']}, max_tokens "
        f"{result['max_tokens']}, {result['rounds']} round(s), median",
        f"{'server':<18}{'at once':>8}{'agg tok/s':>11}{'min stream':>12}{'share':>7}"
        f"{'TTFT med ms':>13}{'TTFT max ms':>13}",
    ]
    for name in ("tether", "llama_cpp.server"):
        for c, row in result[name].items():
            lines.append(
                f"{name:<18}{c:>8}{row['aggregate_tps']:>11.1f}{row['min_stream_tps']:>12.1f}"
                f"{row['share']:>7.2f}{row['ttft_median_ms']:>13.0f}{row['ttft_max_ms']:>13.0f}"
            )
    lines.append(
        f"ratio (tether aggregate at 4 / at 1): {result['ratio']:.2f}   "
        f"slowest stream at 4 / solo: {result['share_at_4']:.2f}   "
        f"llama_cpp.server at 4 / at 1: {result['peer_ratio']:.2f}"
    )
    gains = "   ".join(f"{c}: {gain:.2f}x" for c, gain in result["kernel"].items())
    lines.append(f"llama.cpp's own batching gain on this CPU (decode steps, no server): {gains}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args()
    options = {"parallel": args.parallel, "threads": args.threads, "max_tokens": args.max_tokens}
    print(table(run(args.quick, **options)))


if __name__ == "__main__":
    main()
