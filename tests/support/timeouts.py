"""Test deadlines, scaled by TETHER_TEST_TIMEOUT_SCALE on slow or loaded machines.

Deadlines only bound how long a test may wait for something that should happen; no test sleeps
to let something happen.
"""

from __future__ import annotations

import os


def scaled(seconds: float) -> float:
    return seconds * float(os.environ.get("TETHER_TEST_TIMEOUT_SCALE", "1"))
