"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder, on a free port.

Debian's `postgresql` package (setup.sh installs it when it runs as root) puts the programs in
/usr/lib/postgresql/<version>/bin. initdb and the server refuse to run as root, so under root
they run as the `postgres` user (`runuser`), in a folder that user owns. The server listens on
127.0.0.1 (trust authentication: it is a throwaway cluster) and on a Unix socket in that folder;
it runs without fsync (a test cluster need not survive power loss). Anything missing is an
error naming what to install, never a skip: CI must not pass without PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support.servers import free_port

SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's programs are missing, or its server would not start."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb, or the folder of an initdb on
    PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: run ./setup.sh as root (it installs Debian's postgresql) "
        "or `apt-get install postgresql`"
    )


@dataclass(frozen=True, slots=True)
class PostgresServer:
    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        name = f"test_{uuid.uuid4().hex}"
        admin = await asyncpg.connect(self.url())
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        return self.url(name)


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SUPERUSER, "--", *command]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(_as_owner(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PostgresUnavailable(f"{what} failed ({done.returncode}): {done.stderr.strip()}")


@contextmanager
def postgres_server(*, durable: bool = False, preload: str = "") -> Iterator[PostgresServer]:
    """A running PostgreSQL server in a fresh cluster, stopped and deleted afterwards; with
    `durable`, fsync and synchronous commit on (as in production: for benchmarks); `preload`:
    shared_preload_libraries (e.g. pg_stat_statements)."""
    bindir = find_bindir()
    folder = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, SUPERUSER, SUPERUSER)
        data = folder / "data"
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            "initdb",
        )
        port = free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if preload:
            options += f" -c shared_preload_libraries={preload}"
        _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "server.log"),
                "-w",
                "start",
            ],
            "pg_ctl start",
        )
        try:
            yield PostgresServer(port, folder)
        finally:
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
