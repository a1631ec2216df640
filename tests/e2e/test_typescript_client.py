"""The TypeScript client's own tests (`npm test` in clients/typescript): tether-client against a
real `tether serve` on the echo engine, and the browser UI in headless Chromium. Run from here so
`./test.sh` covers them; skipped only where node is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.timeouts import scaled

pytestmark = pytest.mark.e2e

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


@pytest.mark.skipif(shutil.which("npm") is None, reason="node/npm is not installed")
def test_the_typescript_client_suite_passes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    env["TETHER_PYTHON"] = sys.executable
    if "TETHER_TEST_TIMEOUT_SCALE" in os.environ:
        env["TETHER_TEST_TIMEOUT_SCALE"] = os.environ["TETHER_TEST_TIMEOUT_SCALE"]
    if not (PACKAGE / "node_modules").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=PACKAGE,
            check=True,
            timeout=scaled(300),
        )
    done = subprocess.run(
        ["npm", "test"],
        cwd=PACKAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(600),
        check=False,
    )
    summary = [line for line in done.stdout.splitlines() if line.startswith("# ")]
    assert done.returncode == 0, f"npm test failed:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    assert "# fail 0" in summary, summary
