"""What the benchmark scripts share for the servers they start: a free loopback port, a
throwaway database, and stopping a process group they started (gunicorn's master and worker
together)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group `process` leads (started with `start_new_session=True`), then
    SIGKILL it if it is still there after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def throwaway_database(
    kind: str, admin_url: str, workdir: Path, name: str
) -> tuple[str, Callable[[], None]]:
    """A new empty database (PostgreSQL through `admin_url`, or a SQLite file in `workdir`) and
    how to drop it."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{name}.db'}", lambda: None
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    db_name = f"stratus_bench_{name}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + "/" + db_name, drop
