"""`tether serve` lifts the open-file limit so the connection cap can be reached."""

from __future__ import annotations

import resource
import subprocess
import sys

from tests.support.timeouts import scaled

PROBE = """
import resource
from tether.serving.config import raise_open_file_limit
print(*raise_open_file_limit(2000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_soft_limit_is_raised_towards_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        preexec_fn=low_soft_limit,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=True,
    )
    limit, needed, soft = map(int, result.stdout.split())
    assert needed == 2064
    expected = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    assert limit == soft == max(256, expected)
