"""`detector_scaling`: `StreamDetector.feed` time per character on a long stream against a short
one, in this process. The detector must be linear: a character costs the same at any depth of
the answer (goal: long / short per-character time ≤ 1.2).

The stream is model-like text with the markup the detector watches for (a `<think>` block, a
`<tool_call>` a quarter of its length in the middle, text around), fed in token-sized pieces.
"""

from __future__ import annotations

import time

from harness import Goal, Outcome, Profile, median

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


def per_char(pieces: list[str]) -> float:
    """Seconds per character to feed every piece to a fresh detector and finish it."""
    chars = sum(map(len, pieces))
    started = time.perf_counter()
    detector = ToolCallDetector()
    for piece in pieces:
        detector.feed(piece)
    detector.flush()
    return (time.perf_counter() - started) / chars


def detector_scaling(profile: Profile) -> Outcome:
    rounds = profile.pick(5, 15)
    short, long_ = stream(SHORT_CHARS), stream(LONG_CHARS)
    repeats = LONG_CHARS // SHORT_CHARS  # as many characters fed on each side
    short_runs, long_runs = [], []
    for _ in range(rounds):
        short_runs.append(median([per_char(short) for _ in range(repeats)]))
        long_runs.append(per_char(long_))
    short_ns, long_ns = median(short_runs) * 1e9, median(long_runs) * 1e9
    ratio = long_ns / short_ns
    return Outcome(
        ratio,
        f"ns per character fed, {LONG_CHARS:,}-char stream / {SHORT_CHARS:,}-char stream",
        {"short_ns_per_char": round(short_ns, 1), "long_ns_per_char": round(long_ns, 1),
         "short_chars": SHORT_CHARS, "long_chars": LONG_CHARS},
        (Goal("per-char time long / short", ratio, "<=", 1.2),),
    )  # fmt: skip
