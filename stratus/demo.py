"""`stratus demo`: the whole product in one go against a running stack, over real HTTP.

register → login → create an agent → submit a task → poll until it finishes → print the answer.
Standard library only (urllib), so it runs wherever Python does, against the local stack or a
deployment whose functions sit under one base URL (`<url>/auth/...`, `<url>/agents/...`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_PROMPT = "In one sentence: what does Stratus do?"
FINISHED = frozenset({"succeeded", "failed", "canceled"})  # TaskStatus.is_final


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what the server answered."""


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    timeout: float = 15.0,
) -> tuple[int, Any]:
    """One JSON request; (status, parsed body). Only a connection failure raises."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) URLs only
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DemoError(
            f"cannot reach {url} ({reason}). Is the stack running? Start it with `stratus dev`."
        ) from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _expect(step: str, status: int, body: Any, *wanted: int) -> Any:
    if status not in wanted:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise DemoError(f"{step} failed: HTTP {status}: {detail}")
    return body


def run_demo(
    base_url: str = DEFAULT_URL,
    *,
    prompt: str = DEFAULT_PROMPT,
    timeout: float = 60.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Drive the whole flow once, saying what happens; the finished task. `DemoError` on failure."""
    if not base_url.startswith(("http://", "https://")):
        raise DemoError(f"--url must start with http:// or https://, got {base_url!r}")
    base = base_url.rstrip("/")
    email = f"demo-{uuid.uuid4().hex[:12]}@example.com"
    password = f"demo-{uuid.uuid4().hex[:8]}-42"

    status, body = call("POST", f"{base}/auth/register", {"email": email, "password": password})
    user = _expect("register", status, body, 201)
    say(f"registered   {user['email']} (user {user['id']})")

    status, body = call("POST", f"{base}/auth/login", {"email": email, "password": password})
    token = _expect("login", status, body, 200)["access_token"]
    say(f"logged in    access token expires in {body.get('expires_in')} s")

    agent_body = {"name": "demo agent", "description": "created by `stratus demo`"}
    status, body = call("POST", f"{base}/agents/agents", agent_body, token=token)
    agent = _expect("create agent", status, body, 201)
    say(f"agent        {agent['name']} ({agent['id']})")

    url = f"{base}/agents/agents/{agent['id']}/tasks"
    status, body = call("POST", url, {"input": prompt}, token=token)
    task = _expect("submit task", status, body, 202)
    say(f"task         {task['id']} {task['status']}: {prompt}")

    deadline = time.monotonic() + timeout
    delay = 0.1
    while task["status"] not in FINISHED:
        if time.monotonic() > deadline:
            raise DemoError(
                f"task {task['id']} is still {task['status']} after {timeout:.0f} s; "
                "is task_runner mounted and the queue connected?"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
        status, body = call("GET", f"{base}/agents/tasks/{task['id']}", token=token)
        task = _expect("get task", status, body, 200)

    provider, model = task.get("provider"), task.get("model")
    say(f"finished     {task['status']} (provider {provider}, model {model})")
    if task["status"] != "succeeded":
        raise DemoError(f"task {task['id']} {task['status']}: {task.get('error')}")
    say(f"answer       {task.get('result')}")
    return dict(task)
