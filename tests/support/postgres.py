"""A PostgreSQL server for the tests: the configured one, or a throwaway one we start."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

DEFAULT_URL = "postgresql+pg8000://postgres@127.0.0.1:5432/test"


class PostgresUnavailable(RuntimeError):
    pass


def _answers(url: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


def _binaries() -> str | None:
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return os.path.dirname(shutil.which("initdb") or "")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _throwaway(bindir: str) -> Iterator[str]:
    """initdb + pg_ctl in a temporary directory; as root, run as the `postgres` user."""
    datadir = tempfile.mkdtemp(prefix="stratus-pg-")
    port = _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            raise PostgresUnavailable("running as root and no runuser to drop privileges")
        shutil.chown(datadir, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*prefix, *args], check=True, capture_output=True, timeout=120
    )
    try:
        run(f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(
            f"{bindir}/pg_ctl",
            "-D",
            datadir,
            "-w",
            "-l",
            f"{datadir}/log",
            "-o",
            f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(datadir, ignore_errors=True)
        raise PostgresUnavailable(f"could not start a throwaway PostgreSQL: {exc}") from exc
    try:
        yield f"postgresql+pg8000://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(Exception):
            run(f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop")
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def provide_postgres() -> Iterator[str]:
    url = os.environ.get("STRATUS_TEST_POSTGRES_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    bindir = _binaries()
    if not bindir:
        raise PostgresUnavailable(
            f"nothing answers at {url} and no PostgreSQL binaries are installed"
        )
    with _throwaway(bindir) as started:
        deadline = time.monotonic() + 30
        while not _answers(started):
            if time.monotonic() > deadline:
                raise PostgresUnavailable("the throwaway PostgreSQL did not answer in 30 s")
            time.sleep(0.2)
        yield started
