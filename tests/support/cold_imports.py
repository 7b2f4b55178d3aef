"""What a function imports to start and to answer its first request, in a fresh interpreter.

A cold start pays for every module imported before the first answer, so the functions import
heavy libraries only where a request needs them. These probes load a function the way
functions-framework does (`create_app`), send it one request, and report the modules loaded
at each point; the tests name what must not be among them. Nothing is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import FUNCTIONS, ROOT

_PROBE = """
import json, sys
import functions_framework
spec = json.loads(sys.argv[1])
app = functions_framework.create_app(target=spec["function"], source=spec["source"])
at_load = sorted(sys.modules)
response = app.test_client().open(
    spec["path"], method=spec["method"], headers=spec["headers"], data=spec["body"].encode()
)
print(json.dumps({
    "status": response.status_code,
    "body": response.get_data(as_text=True)[:2000],
    "at_load": at_load,
    "after_first": sorted(sys.modules),
}))
"""


@dataclass(frozen=True)
class ColdImports:
    status: int
    body: str
    at_load: frozenset[str]
    after_first: frozenset[str]

    def loaded(self, packages: Iterable[str], *, at_load: bool = False) -> list[str]:
        """The modules of `packages` (each a module and its submodules) that were imported by
        the end of the first request (or, with `at_load`, once the function was loaded)."""
        return _of_packages(self.at_load if at_load else self.after_first, packages)


def first_request_imports(
    function: str,
    *,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    body: str = "",
    env: Mapping[str, str],
    cwd: Path,
) -> ColdImports:
    """Load `function` in a new interpreter and send it one request.

    The environment is this test's (its settings) with `env` laid over it, minus anything that
    would reach a real service, and with the production batching of API-call metrics: the first
    request queues its metric row, as on a real instance, rather than writing it at once.
    """
    spec = {
        "function": function,
        "source": str(FUNCTIONS / function / "main.py"),
        "method": method,
        "path": path,
        "headers": dict(headers or {}),
        "body": body,
    }
    result = _run_fresh(_PROBE, spec, env=env, cwd=cwd)
    return ColdImports(
        status=result["status"],
        body=result["body"],
        at_load=frozenset(result["at_load"]),
        after_first=frozenset(result["after_first"]),
    )


def _of_packages(modules: Iterable[str], packages: Iterable[str]) -> list[str]:
    wanted = tuple(packages)
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in wanted))


def _run_fresh(script: str, spec: Mapping[str, Any], *, env: Mapping[str, str], cwd: Path) -> Any:
    """Run `script` in a new interpreter with `spec` as its argument; its last line, as JSON.

    The environment is this test's (its settings) with `env` laid over it, minus anything that
    would reach a real service, and with the production batching of API-call metrics."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "SECRET_MANAGER", "MONITORING_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "MONITORING_FLUSH_SECONDS": "60", **env, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# What serving through plain SQL (shared_layer/sql.py) never imports.
ORM = ("sqlalchemy", "shared_layer.models", "shared_layer.database", "shared_layer.idempotency")

# One request after another; "{name}" in a path, a header or a top-level string of the JSON
# body is a value an earlier answer gave
# (each step's "save" maps a name to a field of its JSON answer). Then the batched API-call
# metrics are written, as the idle timer or the exit would.
_SERVE_IN_TURN = """
import json, sys
import functions_framework
spec = json.loads(sys.argv[1])
app = functions_framework.create_app(target=spec["function"], source=spec["source"])
client, saved, answers = app.test_client(), {}, []
for step in spec["steps"]:
    fill = lambda value: value.format(**saved) if isinstance(value, str) else value
    headers = {k: fill(v) for k, v in step["headers"].items()}
    body = step["json"]
    if isinstance(body, dict):
        body = {k: fill(v) for k, v in body.items()}
    response = client.open(fill(step["path"]), method=step["method"], headers=headers, json=body)
    answer = response.get_json(silent=True)
    answers.append([response.status_code, answer])
    for name, key in step["save"].items():
        saved[name] = (answer or {}).get(key)
from shared_layer.monitoring import flush_metrics
flushed = flush_metrics()
print(json.dumps({"answers": answers, "flushed": flushed, "modules": sorted(sys.modules)}))
"""


@dataclass(frozen=True)
class Step:
    """One request of `serve_in_turn`: `{name}` in `path`, header values and the JSON body's
    top-level strings is filled from what earlier steps saved; `save` maps a name to a field
    of this step's JSON answer."""

    method: str
    path: str
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    save: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedInTurn:
    answers: list[tuple[int, Any]]  # status and JSON body of each step
    flushed: int  # API-call metric rows written at the end
    modules: frozenset[str]

    def loaded(self, packages: Iterable[str]) -> list[str]:
        """The modules of `packages` (each a module and its submodules) that were imported."""
        return _of_packages(self.modules, packages)


def serve_in_turn(
    function: str, steps: Iterable[Step], *, env: Mapping[str, str], cwd: Path
) -> ServedInTurn:
    """Load `function` in a new interpreter, serve `steps` in order, write the metrics."""
    spec = {
        "function": function,
        "source": str(FUNCTIONS / function / "main.py"),
        "steps": [
            {
                "method": s.method,
                "path": s.path,
                "json": s.json,
                "headers": dict(s.headers),
                "save": dict(s.save),
            }
            for s in steps
        ],
    }
    result = _run_fresh(_SERVE_IN_TURN, spec, env=env, cwd=cwd)
    return ServedInTurn(
        answers=[(status, answer) for status, answer in result["answers"]],
        flushed=result["flushed"],
        modules=frozenset(result["modules"]),
    )


def migrated_sqlite(directory: Path) -> str:
    """The URL of a new SQLite file in `directory`, migrated to head."""
    from shared_layer.database import build_engine
    from shared_layer.migrate import upgrade

    url = f"sqlite:///{directory / 'cold.db'}"
    engine = build_engine(url)
    upgrade(engine)
    engine.dispose()
    return url
