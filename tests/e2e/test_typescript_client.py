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


WEB_CLIENT = PACKAGE.parents[1] / "src" / "tether" / "web" / "client"


@pytest.mark.skipif(shutil.which("npm") is None, reason="node/npm is not installed")
def test_the_web_uis_copy_of_the_client_is_a_fresh_build(tmp_path: Path) -> None:
    """The browser UI serves `src/tether/web/client/` (committed, so a wheel needs no node): it
    must be what `tsc` builds from `clients/typescript/src` now, not an older build."""
    if not (PACKAGE / "node_modules").is_dir():
        pytest.skip("clients/typescript has no node_modules: run ./setup.sh")
    tsc = PACKAGE / "node_modules" / ".bin" / "tsc"
    done = subprocess.run(
        [str(tsc), "-p", "tsconfig.json", "--outDir", str(tmp_path)],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=scaled(300),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = {p.name: p.read_text() for p in tmp_path.glob("*.js") if p.name != "ai.js"}
    copied = {p.name: p.read_text() for p in WEB_CLIENT.glob("*.js")}
    assert built, "tsc built nothing"
    stale = sorted(
        name for name in built.keys() | copied.keys() if built.get(name) != copied.get(name)
    )
    assert not stale, (
        f"src/tether/web/client/ differs from a fresh build in {stale}: "
        "run `npm run build:web` in clients/typescript and commit the result"
    )
