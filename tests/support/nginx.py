"""A real nginx in front of test servers: deploy/'s own config, rendered and run by
`deploy/run.sh nginx` in a temporary prefix (unprivileged: as `nobody` under root).

Debian's `nginx` package (setup.sh installs it when it runs as root) is needed; without it this is
an error naming what to install, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.servers import LoopbackUrls, free_port
from tests.support.timeouts import scaled

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "deploy" / "run.sh"


class NginxUnavailable(RuntimeError):
    """nginx is missing, or it would not start."""


@dataclass
class Nginx(LoopbackUrls):
    process: subprocess.Popen[bytes]
    port: int
    prefix: Path

    def log(self) -> str:
        parts = [self.prefix / "run.log", self.prefix / "error.log"]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())


def find_nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise NginxUnavailable(
            "nginx is not installed: run ./setup.sh as root (it installs Debian's nginx) "
            "or `apt-get install nginx`"
        )
    return found


@contextmanager
def nginx_in_front(ports: Sequence[int]) -> Iterator[Nginx]:
    """nginx on a free loopback port, round robin over the servers on 127.0.0.1:`ports`;
    stopped (and its prefix deleted) afterwards. Ready once a request through it is answered
    by one of them."""
    find_nginx()
    # (mkdtemp, not a pytest folder: under root the prefix goes to `nobody`, who must reach it)
    prefix = Path(tempfile.mkdtemp(prefix="tether-nginx-"))
    port = free_port()
    env = {
        **os.environ,
        "LISTEN": f"127.0.0.1:{port}",
        "REPLICAS": " ".join(f"127.0.0.1:{port}" for port in ports),
    }
    try:
        with (prefix / "run.log").open("wb") as out:
            process = subprocess.Popen(
                [str(RUN_SH), "nginx", str(prefix)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        nginx = Nginx(process, port, prefix)
        try:
            _wait_until_up(nginx)
            yield nginx
        finally:
            process.terminate()  # nginx's fast shutdown
            try:
                process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def _wait_until_up(nginx: Nginx) -> None:
    deadline = time.monotonic() + scaled(20)
    while True:
        if nginx.process.poll() is not None:
            raise NginxUnavailable(f"nginx exited with {nginx.process.returncode}:\n{nginx.log()}")
        try:
            if httpx.get(f"{nginx.http_url}/health", timeout=1).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nginx did not come up:\n{nginx.log()}")
        time.sleep(0.05)  # polling readiness of another process; bounded by the deadline
