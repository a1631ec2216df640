"""Run Tether's benchmarks, each against its peer in the same run, and print a table.

    .venv/bin/python bench/run.py                    # every benchmark, full length
    .venv/bin/python bench/run.py --quick            # every benchmark, shortened (under 50 s)
    .venv/bin/python bench/run.py --only turn_overhead,history_load --json

Each benchmark starts the processes it measures (loopback only), runs Tether and its peer in
interleaved rounds, and reports a headline ratio, its raw figures and its goals, met or missed.
`--json` prints one JSON object on the last line: benchmark name -> {"ratio", "summary", "met",
"goals", "figures"}. A benchmark that fails reports {"error": ...} and the run exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from bench_parallel import parallel_decoding
from detector_scaling import detector_scaling
from echo_ws import stream_overhead, turn_overhead
from fairness import bench_fairness
from harness import MODEL, Benchmark, Outcome, Profile
from history_load import history_load
from idle_sockets import idle_sockets_rss
from llamacpp_stream import llamacpp_stream, multiturn_ttft
from replicas import replica_scaling

BENCHMARKS = (
    Benchmark("stream_overhead", "a 5,000-word answer to one client vs bare websockets",
              stream_overhead),
    Benchmark("turn_overhead", "8-word turns at 1 and 50 clients vs bare websockets",
              turn_overhead),
    Benchmark("llamacpp_stream", "SmolLM2 over /ws/chat and /v1 vs raw llama-cpp-python and "
              "llama_cpp.server", llamacpp_stream, needs_model=True),
    Benchmark("multiturn_ttft", "SmolLM2 first token, turn 20 vs turn 1 of one session",
              multiturn_ttft, needs_model=True),
    Benchmark("history_load", "a turn at the end of a 10k-message session vs a new session's",
              history_load),
    Benchmark("detector_scaling", "detector.feed per character, long vs short streams",
              detector_scaling),
    Benchmark("idle_sockets_rss", "RSS added by 1,000 idle sockets, tether vs bare websockets",
              idle_sockets_rss),
    Benchmark("parallel_decoding", "SmolLM2 at 1, 2, 4, 8 requests at once, Tether at parallel 8 "
              "beside llama_cpp.server", parallel_decoding, needs_model=True),
    Benchmark("bench_fairness", "a short turn beside ten floods vs alone (issue 14)",
              bench_fairness),
    Benchmark("replica_scaling", "turns/s on PostgreSQL: two replicas through nginx vs one "
              "direct", replica_scaling),
)  # fmt: skip


def chosen(only: str | None) -> list[Benchmark]:
    if not only:
        return list(BENCHMARKS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    known = {b.name: b for b in BENCHMARKS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[name] for name in names]


def table(results: dict[str, Outcome | str]) -> str:
    rows = [("benchmark", "ratio", "goals", "what the ratio is")]
    for name, result in results.items():
        if isinstance(result, str):
            rows.append((name, "-", "ERROR", result))
            continue
        goals = (
            "met"
            if result.met
            else "missed: " + ", ".join(g.label for g in result.goals if not g.met)
        )
        rows.append((name, f"{result.ratio:.3f}", goals, result.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{row[0]:{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:{widths[2]}}  {row[3]}"
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run_one(bench: Benchmark, profile: Profile) -> Outcome | str:
    """The benchmark's outcome, or why it has none."""
    if bench.needs_model and not MODEL.is_file():
        return f"{MODEL} is missing: run ./setup.sh"
    started = time.perf_counter()
    print(f"{bench.name}: {bench.what} ...", file=sys.stderr, flush=True)
    try:
        outcome = bench.run(profile)
    except Exception as exc:
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"
    for goal in outcome.goals:
        print(f"  {goal.describe()}", file=sys.stderr)
    print(f"  ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shortened runs (under 50 s in all)")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these benchmarks")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp threads, the same for Tether and its peers")  # fmt: skip
    args = parser.parse_args()
    profile = Profile(quick=args.quick, threads=args.threads)
    results: dict[str, Outcome | str] = {}
    began = time.perf_counter()
    try:
        for bench in chosen(args.only):
            results[bench.name] = run_one(bench, profile)
    finally:
        profile.shared.close()
    mode = "quick" if args.quick else "full"
    print(f"\n{table(results)}\n\n({mode} run, {time.perf_counter() - began:.0f} s)")
    if args.json:
        print(json.dumps({
            name: result.as_json() if isinstance(result, Outcome) else {"error": result}
            for name, result in results.items()
        }))  # fmt: skip
    return 1 if any(isinstance(r, str) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
