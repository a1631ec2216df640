"""`detector_scaling`: `StreamDetector.feed` time per character on a long stream against a short
one, in this process. The detector must be linear: a character costs the same at any depth of
the answer (goal: long / short per-character time ≤ 1.2).

The stream is model-like text with the markup the detector watches for (a `<think>` block, a
`<tool_call>` a quarter of its length in the middle, text around), fed in token-sized pieces.
"""

from __future__ import annotations

import time

from harness import Goal, Outcome, Profile

from tether.detector import ToolCallDetector

SHORT_CHARS = 2_000
LONG_CHARS = 200_000
PIECE = 4  # characters per feed, about a token's


def stream(chars: int) -> list[str]:
    """`chars` characters of answer, thoughts and one tool call, in PIECE-character pieces."""
    prose = "The robot dipped its brush, and <b>the colour</b> ran {like} water. "
    # A call a quarter of the stream long: the detector holds a call's text until it closes.
    argument = ("brush stroke " * (chars // 52 + 1))[: chars // 4]
    call = f'<tool_call>{{"name": "paint", "arguments": {{"strokes": "{argument}"}}}}</tool_call>'
    body = "<think>" + prose * 3 + "</think>"
    while len(body) < chars // 2:
        body += prose
    body += call
    while len(body) < chars:
        body += prose
    body = body[:chars]
    return [body[i : i + PIECE] for i in range(0, len(body), PIECE)]


def per_char(streams: list[list[str]]) -> float:
    """Seconds per character to feed each stream to a fresh detector and flush it."""
    chars = sum(len(piece) for pieces in streams for piece in pieces)
    started = time.perf_counter()
    for pieces in streams:
        detector = ToolCallDetector()
        for piece in pieces:
            detector.feed(piece)
        detector.flush()
    return (time.perf_counter() - started) / chars


def detector_scaling(profile: Profile) -> Outcome:
    rounds = profile.pick(7, 21)
    # As many characters on each side (100 short streams, one long), rounds interleaved; the
    # fastest round of each, the one least disturbed by the rest of the machine.
    shorts = [stream(SHORT_CHARS)] * (LONG_CHARS // SHORT_CHARS)
    longs = [stream(LONG_CHARS)]
    short_runs, long_runs = [], []
    for _ in range(rounds):
        short_runs.append(per_char(shorts))
        long_runs.append(per_char(longs))
    short_ns, long_ns = min(short_runs) * 1e9, min(long_runs) * 1e9
    ratio = long_ns / short_ns
    return Outcome(
        ratio,
        f"ns per character fed, {LONG_CHARS:,}-char stream / {SHORT_CHARS:,}-char streams",
        {"short_ns_per_char": round(short_ns, 1), "long_ns_per_char": round(long_ns, 1),
         "short_chars": SHORT_CHARS, "long_chars": LONG_CHARS},
        (Goal("per-char time long / short", ratio, "<=", 1.2),),
    )  # fmt: skip
