"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) loads it from the
health function served over real HTTP on loopback, with metrics recorded by real requests and
a real task run, and draws the charts. The screenshot is kept in test-artifacts/.

Without Chromium the test is skipped, saying how to install it, except under CI=true (where
.ci/run installs it), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from tests.conftest import ROOT, function_app

ARTIFACTS = ROOT / "test-artifacts"
CHARTS = ("chart-requests", "chart-latency", "chart-errors", "chart-tasks")
REQUESTS_BLUE = (0x2F, 0x6F, 0xDF)  # dashboard.js: the requests/min stroke
P50_GREEN = (0x2E, 0x9D, 0x5B)  # p50 and tasks succeeded
P99_RED = (0xD3, 0x41, 0x2F)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "Chromium is not installed (Debian: apt-get update && apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; .ci/run installs it under CI=true")
    pytest.skip(message)


@pytest.fixture
def health_url(db: Any) -> Iterator[str]:
    """The health function over real HTTP, mounted under /health as in the local stack."""
    missing = Response("no such function", status=404)
    app = DispatcherMiddleware(missing, {"/health": function_app("health")})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health"
    finally:
        server.shutdown()
        thread.join(5)


def _browse(
    chromium: str, url: str, profile: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--window-size=1280,1600",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


class _Elements(HTMLParser):
    """Attributes by element id, the <body>'s, and each id'd element's text and canvases."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, dict[str, str]] = {}
        self.text: dict[str, str] = {}
        self.canvases: dict[str, int] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        key = values.get("id") or (tag if tag == "body" else None)
        if key:
            self.attrs[key] = values
            self.text.setdefault(key, "")
        if tag == "canvas":
            for _, owner in self._open:
                if owner in CHARTS:
                    self.canvases[owner] = self.canvases.get(owner, 0) + 1
        if tag not in ("meta", "link", "input", "br", "img", "col"):
            self._open.append((tag, key))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self._open:
            if key:
                self.text[key] += data


def _count(image: Any, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return sum(
        n
        for n, rgb in colours
        if all(abs(a - b) <= tolerance for a, b in zip(rgb, colour, strict=True))
    )


def _wait_for_a_minute_with_room(room_seconds: float = 20.0) -> None:
    """Sleep into the next minute when this one has less than `room_seconds` left, so that the
    traffic and the dashboard's own requests all fall in one 1-minute interval."""
    left = 60.0 - time.time() % 60.0
    if left < room_seconds:
        time.sleep(left + 0.05)


def test_dashboard_draws_its_charts_from_recorded_metrics_in_headless_chromium(
    backend, chromium, health_url, client, user_token, admin_token, push_to_task_runner, tmp_path
):
    from PIL import Image

    # Real traffic, recorded by the Router and the task runner, all in one minute.
    _wait_for_a_minute_with_room()
    _, bearer = user_token()
    me = {"Authorization": bearer}
    agents = client("agents")
    agent_id = agents.post("/agents", json={"name": "browser-agent"}, headers=me).json["id"]
    for _ in range(12):
        assert agents.get(f"/agents/{agent_id}", headers=me).status_code == 200
    assert agents.get(f"/agents/{uuid.uuid4()}", headers=me).status_code == 404
    assert (
        agents.post(f"/agents/{agent_id}/tasks", json={"input": "Hi"}, headers=me).status_code
        == 202
    )
    assert push_to_task_runner == [200]
    _, admin = admin_token()
    token = admin.removeprefix("Bearer ")
    url = f"{health_url}/dashboard?window=1h#token={token}"

    dom = _browse(chromium, url, tmp_path / "profile-dom", "--dump-dom").stdout
    page = _Elements()
    page.feed(dom)
    assert page.attrs["body"]["data-state"] == "ready", page.text.get("status")
    assert "1-minute intervals" in page.text["status"]
    for chart in CHARTS:
        assert page.canvases.get(chart) == 1, chart  # uPlot drew a canvas
        assert int(page.attrs[chart]["data-points"]) in (60, 61), chart
    values = {chart: int(page.attrs[chart]["data-values"]) for chart in CHARTS}
    assert values["chart-requests"] >= 1
    assert values["chart-latency"] == 3  # p50, p95 and p99 of the one busy minute
    assert values["chart-errors"] == 0  # a 404 is not a server error
    assert values["chart-tasks"] == 1  # one run, succeeded
    assert int(page.text["total-tasks"]) == 1
    assert re.search(r"agents\s*GET\s*/agents/\{agent_id\}\s*13\s*0\s*1", page.text["routes"])
    assert "browser-agent" in page.text["tasks"]
    assert token not in dom  # the token left the address bar; it is in session storage only

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"dashboard-{backend}.png"
    shot.unlink(missing_ok=True)
    _browse(chromium, url, tmp_path / "profile-shot", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        assert _count(image, REQUESTS_BLUE) > 200  # the request-rate line and its fill edge
        assert _count(image, P50_GREEN) > 20  # p50 and succeeded-task markers
        assert _count(image, P99_RED) > 10


def test_dashboard_without_a_token_asks_for_one_and_draws_nothing(chromium, health_url, tmp_path):
    dom = _browse(chromium, f"{health_url}/dashboard", tmp_path / "profile", "--dump-dom").stdout
    page = _Elements()
    page.feed(dom)
    assert page.attrs["body"]["data-state"] == "signed-out"
    assert "hidden" not in page.attrs["sign-in"]
    assert not page.canvases


def test_dashboard_with_a_non_admin_token_shows_the_refusal(
    chromium, health_url, user_token, tmp_path
):
    _, bearer = user_token()
    url = f"{health_url}/dashboard#token={bearer.removeprefix('Bearer ')}"
    dom = _browse(chromium, url, tmp_path / "profile", "--dump-dom").stdout
    page = _Elements()
    page.feed(dom)
    assert page.attrs["body"]["data-state"] == "error"
    assert "administrators only" in page.text["status"]
    assert not page.canvases
