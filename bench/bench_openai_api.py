"""SmolLM2 streamed through `/v1/chat/completions` against raw llama-cpp-python and against
`python -m llama_cpp.server`, same GGUF, prompt, sampling (greedy) and thread count.

Three peers, each in a process of its own with the model loaded once:

- raw: llama-cpp-python used directly (`Llama.create_chat_completion(stream=True)`);
- llama_cpp.server: its OpenAI-compatible server, asked over HTTP with the same body as Tether;
- tether: a real `tether serve --engine llamacpp`, asked over HTTP (SSE) like the other server.

Each round runs the three once, in an order that rotates from round to round (so none always
goes first, after the client's idle time, or last); one full-length warm-up round is not counted.
The ratios reported are the medians of each round's own ratios (tether / raw, tether /
llama_cpp.server), which a load that comes and goes on a shared machine moves far less than the
ratio of the medians (also printed):

- decode tokens/s: completion tokens after the first over the time from first to last token,
  measured by the client (tokens: the usage chunk where the server sends one, else the chunks);
- time to first token: from sending the request to the first text.

    .venv/bin/python bench/bench_openai_api.py [--rounds 9] [--max-tokens 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ws_llamacpp import MODEL, PEER, PROMPT, ROOT, SYSTEM, free_port

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


def sse_turn(client: httpx.Client, url: str, model: str, max_tokens: int) -> Run:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "repeat_penalty": 1.0,  # llama_cpp.server's own field (its default is 1.1); Tether's is 1.0
    }
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage: dict[str, Any] | None = None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": first - start, "tokens": tokens, "decode": last - first}


def tps(run: Run) -> float:
    return (run["tokens"] - 1) / run["decode"] if run["decode"] > 0 else 0.0


def start_servers(
    threads: int, tmp: str
) -> tuple[subprocess.Popen[bytes], str, subprocess.Popen[bytes], str]:
    llama_port, tether_port = free_port(), free_port()
    llama_server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(MODEL), "--n_ctx", "4096",
         "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--port", str(llama_port), "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        **os.environ,
        "TETHER_ENGINE__LLAMACPP__N_THREADS": str(threads),
        "TETHER_LOG_LEVEL": "warning",
    }
    tether = subprocess.Popen(
        [sys.executable, "-m", "tether", "serve", "--config", str(ROOT / "config.yaml"),
         "--engine", "llamacpp", "--port", str(tether_port), "--db", f"{tmp}/bench.db"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return llama_server, f"http://127.0.0.1:{llama_port}", tether, f"http://127.0.0.1:{tether_port}"


def paired(runs: list[Run], peer: list[Run]) -> float:
    """The median of the rounds' own decode ratios runs / peer."""
    ratios = [tps(ours) / tps(theirs) for ours, theirs in zip(runs, peer, strict=True)]
    return statistics.median(ratios)


def report(name: str, runs: list[Run], raw: list[Run], server: list[Run]) -> None:
    ours = statistics.median(tps(r) for r in runs)
    raw_tps = statistics.median(tps(r) for r in raw)
    server_tps = statistics.median(tps(r) for r in server)
    print(
        f"decode tokens/s   raw {raw_tps:6.1f}   llama_cpp.server {server_tps:6.1f}   "
        f"{name} {ours:6.1f}   ratio of medians vs raw {ours / raw_tps:.3f}   "
        f"vs llama_cpp.server {ours / server_tps:.3f}"
    )
    print(
        f"decode, median of per-round ratios: vs raw {paired(runs, raw):.3f}   "
        f"vs llama_cpp.server {paired(runs, server):.3f}"
    )
    ttft = statistics.median(r["ttft"] for r in runs) * 1000
    raw_ttft = statistics.median(r["ttft"] for r in raw) * 1000
    server_ttft = statistics.median(r["ttft"] for r in server) * 1000
    print(
        f"first token (ms)  raw {raw_ttft:6.1f}   llama_cpp.server {server_ttft:6.1f}   "
        f"{name} {ttft:6.1f}   ratio vs raw {ttft / raw_ttft:.3f}   "
        f"vs llama_cpp.server {ttft / server_ttft:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if not MODEL.is_file():
        sys.exit(f"{MODEL} is missing: run ./setup.sh")

    peer = subprocess.Popen(
        [sys.executable, "-c", PEER, str(MODEL), str(args.threads), str(args.max_tokens),
         SYSTEM, PROMPT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert peer.stdin is not None
    assert peer.stdout is not None
    assert peer.stdout.readline().strip() == "ready"
    raw_runs: list[Run] = []
    server_runs: list[Run] = []
    tether_runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        llama_server, llama_url, tether, tether_url = start_servers(args.threads, tmp)
        try:
            wait_ready(llama_url, llama_server)
            wait_ready(tether_url, tether)
            with httpx.Client(timeout=600) as client:
                model = "SmolLM2-135M-Instruct.Q4_1"
                llama_model = client.get(f"{llama_url}/v1/models").json()["data"][0]["id"]

                def raw() -> Run:
                    assert peer.stdin is not None
                    assert peer.stdout is not None
                    peer.stdin.write("go\n")
                    peer.stdin.flush()
                    run: Run = json.loads(peer.stdout.readline())
                    return run

                n = args.max_tokens
                peers = [
                    (raw_runs, raw),
                    (server_runs, lambda: sse_turn(client, llama_url, llama_model, n)),
                    (tether_runs, lambda: sse_turn(client, tether_url, model, n)),
                ]
                for _, turn in peers:  # warm up all three at full length, not counted
                    turn()
                for round_ in range(1, args.rounds + 1):
                    shift = round_ % len(peers)
                    for runs, turn in peers[shift:] + peers[:shift]:
                        runs.append(turn())
                    print(
                        f"round {round_}: raw {tps(raw_runs[-1]):6.1f} tok/s "
                        f"({raw_runs[-1]['tokens']:.0f} tok), llama_cpp.server "
                        f"{tps(server_runs[-1]):6.1f} ({server_runs[-1]['tokens']:.0f} tok), "
                        f"tether /v1 {tps(tether_runs[-1]):6.1f} "
                        f"({tether_runs[-1]['tokens']:.0f} tok)",
                        flush=True,
                    )
        finally:
            for process in (llama_server, tether):
                process.terminate()
                process.wait(timeout=30)
            peer.stdin.close()
            peer.wait(timeout=30)
    print(f"threads {args.threads}, max_tokens {args.max_tokens}, {args.rounds} rounds (rotating)")
    report("tether /v1", tether_runs, raw_runs, server_runs)


if __name__ == "__main__":
    main()
