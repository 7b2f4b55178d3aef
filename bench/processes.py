"""What the benchmark scripts share for the servers they start: a free loopback port, and
stopping a process group they started (gunicorn's master and worker together)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess


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
