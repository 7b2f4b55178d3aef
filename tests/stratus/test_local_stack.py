"""The local stack as a developer runs it: `stratus dev` in its own process, real HTTP to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stratus.demo import DemoError, call, run_demo

START_TIMEOUT = 20.0


@dataclass
class Stack:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp: Path) -> dict[str, str]:
    """Only what the stack needs: no OPENAI_* or .env from the developer's shell leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'stack.db'}",
        LLM_PROVIDER="offline",
        BCRYPT_ROUNDS="4",
        JWT_SECRET="local-stack-test-" + "y" * 32,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    port = _free_port()
    log = tmp / "stack.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stratus.cli", "dev", "--port", str(port)],
            cwd=tmp,
            env=_env(tmp),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"`stratus dev` exited with {process.returncode}:\n{log.read_text()}")
            try:
                status, _ = call("GET", f"{url}/health/", timeout=2)
                if status == 200:
                    break
            except DemoError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the stack did not answer in {START_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Stack(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_demo_runs_a_task_end_to_end_and_prints_the_offline_answer(stack: Stack) -> None:
    said: list[str] = []
    task = run_demo(stack.url, prompt="What is Stratus?", timeout=20, say=said.append)
    assert task["status"] == "succeeded"
    assert task["provider"] == "offline"
    answer = next(line for line in said if line.startswith("answer"))
    assert "offline" in answer.lower(), said


def test_demo_command_exits_zero_and_prints_the_answer(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stratus.cli", "demo", "--url", stack.url, "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "registered" in result.stdout
    assert "succeeded" in result.stdout
    assert "offline" in result.stdout.split("answer", 1)[1].lower()


def test_demo_against_no_stack_fails_with_a_hint_to_start_it() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "stratus.cli", "demo", "--url", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "stratus dev" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_top_level_path_is_a_problem_404_listing_the_functions(stack: Stack) -> None:
    status, body = call("GET", f"{stack.url}/nope/anything")
    assert status == 404
    assert body["status"] == 404
    assert body["type"].endswith("/not-found")
    assert {"auth", "agents", "task_runner", "health"} <= set(body["functions"])
    assert "/auth" in body["detail"]


def test_each_function_sees_its_own_sub_path(stack: Stack) -> None:
    """`/auth/me` reaches the auth function as `/me`: it asks for a token, not a route."""
    status, body = call("GET", f"{stack.url}/auth/me")
    assert status == 401
    assert body["type"].endswith("/unauthorized")
    status, body = call("GET", f"{stack.url}/auth/no-such-route")
    assert status == 404
    assert "auth function" in body["detail"]


def test_root_lists_every_function(stack: Stack) -> None:
    status, body = call("GET", f"{stack.url}/")
    assert status == 200
    assert set(body["functions"]) >= {"auth", "agents", "task_runner", "health"}


def test_local_defaults_fill_only_what_neither_the_environment_nor_dotenv_sets(
    tmp_path: Path,
) -> None:
    from stratus.local_stack import apply_local_defaults

    dotenv = tmp_path / ".env"
    dotenv.write_text("PUBSUB_MODE=gcp\n")
    env = {"DATABASE_URL": "postgresql+pg8000://u@127.0.0.1/x"}
    applied = apply_local_defaults(env, state_dir=tmp_path / "state", dotenv=dotenv)
    assert env["DATABASE_URL"] == "postgresql+pg8000://u@127.0.0.1/x"
    assert "PUBSUB_MODE" not in env
    assert set(applied) == {"STRATUS_ENV", "LOCAL_PUSH_MODE", "JWT_SECRET"}
    assert len(env["JWT_SECRET"]) >= 32


def test_local_signing_key_is_kept_across_restarts_and_private(tmp_path: Path) -> None:
    from stratus.local_stack import apply_local_defaults

    first: dict[str, str] = {}
    second: dict[str, str] = {}
    apply_local_defaults(first, state_dir=tmp_path, dotenv=tmp_path / "absent.env")
    apply_local_defaults(second, state_dir=tmp_path, dotenv=tmp_path / "absent.env")
    assert first["JWT_SECRET"] == second["JWT_SECRET"]
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0
    assert first["DATABASE_URL"] == f"sqlite:///{tmp_path / 'stratus.db'}"
