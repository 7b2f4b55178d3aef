"""Log lines held and written together: when they go out, in what order, and that none is
lost at exit or written twice across a fork."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared_layer.log_output import HeldLinesHandler

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldLinesHandler]:
    """A handler on a logger of its own, holding lines for 0.3 s."""
    monkeypatch.setenv("LOG_FLUSH_SECONDS", "0.3")
    held = HeldLinesHandler()
    held.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("stratus.test.held")
    logger.addHandler(held)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield held
    logger.removeHandler(held)
    held.flush()


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_info_lines_are_held_then_written_together_once_the_time_is_up(handler, capsys):
    log = logging.getLogger("stratus.test.held")
    log.info("one")
    log.info("two")

    assert lines(capsys) == []
    assert handler.held() == 2
    deadline = time.monotonic() + 5
    while handler.held() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lines(capsys) == ["INFO one", "INFO two"]


def test_a_warning_goes_out_at_once_after_the_lines_held_before_it(handler, capsys):
    log = logging.getLogger("stratus.test.held")
    log.info("before")
    log.warning("trouble")

    assert lines(capsys) == ["INFO before", "WARNING trouble"]
    assert handler.held() == 0


def test_64_kib_held_are_written_without_waiting(handler, capsys):
    log = logging.getLogger("stratus.test.held")
    for i in range(70):
        log.info("x" * 1000 + str(i))

    written = lines(capsys)
    assert 60 <= len(written) < 70  # the first 64 KiB went out; the rest wait
    assert written == [f"INFO {'x' * 1000}{i}" for i in range(len(written))]


def test_zero_seconds_writes_each_line_as_it_is_logged(handler, capsys, monkeypatch):
    monkeypatch.setenv("LOG_FLUSH_SECONDS", "0")
    logging.getLogger("stratus.test.held").info("now")

    assert lines(capsys) == ["INFO now"]


def test_a_value_that_is_not_seconds_holds_for_the_default_rather_than_failing(
    handler, capsys, monkeypatch
):
    monkeypatch.setenv("LOG_FLUSH_SECONDS", "soon")
    logging.getLogger("stratus.test.held").info("held")

    assert lines(capsys) == []
    handler.flush()
    assert lines(capsys) == ["INFO held"]


def _run(code: str) -> list[str]:
    """`code` in a new process that configured logging as a function does; its stdout lines."""
    script = "from shared_layer.logging_config import configure_logging\nconfigure_logging()\n"
    result = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LOG_FLUSH_SECONDS": "60"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line)["message"] for line in result.stdout.splitlines()]


def test_lines_still_held_when_the_process_exits_are_written():
    assert _run("import logging; logging.getLogger('x').info('last words')") == ["last words"]


def test_a_fork_writes_held_lines_once_and_the_child_holds_its_own():
    code = """
        import logging, os
        log = logging.getLogger("x")
        log.info("before the fork")
        pid = os.fork()
        if pid == 0:
            log.info("in the child")
            logging.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        log.info("in the parent")
    """

    written = _run(code)

    assert sorted(written) == ["before the fork", "in the child", "in the parent"]
    assert written[0] == "before the fork"
