"""A throwaway PostgreSQL database for tests (see `postgres_for_tests`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from taskfabric.errors import StoreError
from taskfabric.processes import free_port

__all__ = ["POSTGRES_URL_ENV", "postgres_for_tests"]

POSTGRES_URL_ENV = "TASKFABRIC_TEST_POSTGRES_URL"
_PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextlib.contextmanager
def postgres_for_tests(directory: Path | None = None) -> Iterator[str]:
    """A PostgreSQL database URL for the duration (see the module docstring)."""
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield configured
        return
    problems: list[str] = []
    for server in (
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        "postgresql+psycopg://root@127.0.0.1:5432/postgres",
    ):
        try:
            with _throwaway_database(server) as url:
                yield url
            return
        except _Unavailable as exc:
            problems.append(str(exc))
    with contextlib.ExitStack() as stack:
        folder = directory or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskfabric-pg-")))
        try:
            cluster = stack.enter_context(_private_cluster(folder))
        except _Unavailable as exc:
            problems.append(str(exc))
            raise StoreError(
                "no PostgreSQL for the tests: " + "; ".join(problems) + f". Set {POSTGRES_URL_ENV}, run a server "
                "on 127.0.0.1:5432 with trust auth, or install postgresql (apt-get install -y postgresql)."
            ) from None
        with _throwaway_database(cluster) as url:
            yield url


class _Unavailable(Exception):
    pass


@contextlib.contextmanager
def _throwaway_database(server_url: str) -> Iterator[str]:
    import psycopg

    parts = urllib.parse.urlsplit(server_url)
    dsn = urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    name = f"tf_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise _Unavailable(f"{parts.hostname}:{parts.port}: {str(exc).strip().splitlines()[0]}") from None
    try:
        yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _private_cluster(directory: Path) -> Iterator[str]:
    """initdb + pg_ctl in `directory` (as the `postgres` user when we are root: initdb refuses root)."""
    if not (_PG_BIN / "initdb").exists():
        raise _Unavailable(f"no {_PG_BIN / 'initdb'}")
    data = directory / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise _Unavailable("running as root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "postgres")
    port = free_port()
    run = [*as_user, str(_PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _Unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [
        *as_user,
        str(_PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(directory / "pg.log"),
        "-w",
        "start",
    ]
    done = subprocess.run(start, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _Unavailable(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(_PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
