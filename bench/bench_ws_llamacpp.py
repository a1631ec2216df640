"""SmolLM2 through `/ws/chat` against raw llama-cpp-python, same model, prompt and sampling.

The peer is llama-cpp-python used directly (`Llama.create_chat_completion(stream=True)`, greedy)
in a process of its own, with the model loaded once. Tether is a real `tether serve --engine
llamacpp` process, asked over a WebSocket with the same system prompt, user message, max_tokens
and temperature 0; each turn in a fresh session so both read the same prompt from scratch.
Rounds alternate (peer, tether, peer, ...) so that machine noise hits both alike, and the median
is reported with the ratio tether / peer:

- decode tokens/s: completion tokens after the first, over the time from first to last token
  (measured by the client, on the socket, for tether);
- time to first token: from sending the request to the first text.

    .venv/bin/python bench/bench_ws_llamacpp.py [--rounds 5] [--max-tokens 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "dist" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are Tether, a helpful assistant running locally."
PROMPT = "Write a long story about a robot who learns to paint."

# The peer: reads a line per round, answers with one JSON line of measurements.
PEER = r"""
import json, sys, time
import llama_cpp
model, threads, max_tokens, system, prompt = sys.argv[1:6]
threads, max_tokens = int(threads), int(max_tokens)
llm = llama_cpp.Llama(model, n_ctx=4096, n_threads=threads, verbose=False)
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter(); first = last = None; tokens = 0
    stream = llm.create_chat_completion(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        stream=True, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0,
    )
    for chunk in stream:
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    print(json.dumps({"ttft": first - start, "tokens": tokens, "decode": last - first}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, process: subprocess.Popen[bytes], deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("tether serve exited during start-up")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)  # polling another process's readiness, bounded by the deadline
    raise TimeoutError("tether serve did not come up")


async def tether_turn(ws_url: str, max_tokens: int) -> dict[str, float]:
    async with connect(ws_url) as ws:
        frame = {
            "type": "chat",
            "request_id": "bench",
            "text": PROMPT,
            "options": {"max_tokens": max_tokens, "temperature": 0.0, "tools": False},
        }
        start = time.perf_counter()
        await ws.send(json.dumps(frame))
        first = last = None
        while True:
            reply: dict[str, Any] = json.loads(await ws.recv())
            if reply["status"] == "chunk":
                now = time.perf_counter()
                first = first or now
                last = now
            elif reply["status"] == "complete":
                usage = reply["chunk"]["metadata"]["usage"]
                assert first is not None
                assert last is not None
                return {
                    "ttft": first - start,
                    "tokens": usage["completion_tokens"],
                    "decode": last - first,
                    "server_tps": reply["chunk"]["metadata"]["timings"]["tokens_per_s"],
                }
            elif reply["status"] == "error":
                raise RuntimeError(reply["error"])


def tps(run: dict[str, float]) -> float:
    return (run["tokens"] - 1) / run["decode"] if run["decode"] > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
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

    port = free_port()
    env = {
        **os.environ,
        "TETHER_ENGINE__LLAMACPP__N_THREADS": str(args.threads),
        "TETHER_LOG_LEVEL": "warning",
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [sys.executable, "-m", "tether", "serve", "--config", str(ROOT / "config.yaml"),
             "--engine", "llamacpp", "--port", str(port), "--db", f"{tmp}/bench.db"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_healthy(f"http://127.0.0.1:{port}", server)
            ws_url = f"ws://127.0.0.1:{port}/ws/chat"
            asyncio.run(tether_turn(ws_url, 8))  # load the model, warm up
            peer_runs, tether_runs = [], []
            for round_ in range(1, args.rounds + 1):
                peer.stdin.write("go\n")
                peer.stdin.flush()
                peer_runs.append(json.loads(peer.stdout.readline()))
                tether_runs.append(asyncio.run(tether_turn(ws_url, args.max_tokens)))
                raw, ours = peer_runs[-1], tether_runs[-1]
                print(
                    f"round {round_}: raw {tps(raw):6.1f} tok/s ({raw['tokens']} tok), "
                    f"/ws/chat {tps(ours):6.1f} tok/s ({ours['tokens']} tok; "
                    f"server says {ours['server_tps']})"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
            peer.stdin.close()
            peer.wait(timeout=30)

    raw_tps = statistics.median(tps(r) for r in peer_runs)
    ws_tps = statistics.median(tps(r) for r in tether_runs)
    raw_ttft = statistics.median(r["ttft"] for r in peer_runs) * 1000
    ws_ttft = statistics.median(r["ttft"] for r in tether_runs) * 1000
    print(f"threads {args.threads}, max_tokens {args.max_tokens}, {args.rounds} rounds (median)")
    print(f"decode tokens/s   raw llama-cpp-python {raw_tps:6.1f}   /ws/chat {ws_tps:6.1f}   "
          f"ratio {ws_tps / raw_tps:.3f}")  # fmt: skip
    print(f"first token (ms)  raw llama-cpp-python {raw_ttft:6.1f}   /ws/chat {ws_ttft:6.1f}   "
          f"ratio {ws_ttft / raw_ttft:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
