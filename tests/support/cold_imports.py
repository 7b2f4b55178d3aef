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
from dataclasses import dataclass
from pathlib import Path

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
        modules = self.at_load if at_load else self.after_first
        wanted = tuple(packages)
        return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in wanted))


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
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "SECRET_MANAGER", "MONITORING_"))
    }
    spec = {
        "function": function,
        "source": str(FUNCTIONS / function / "main.py"),
        "method": method,
        "path": path,
        "headers": dict(headers or {}),
        "body": body,
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "MONITORING_FLUSH_SECONDS": "60", **env, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return ColdImports(
        status=result["status"],
        body=result["body"],
        at_load=frozenset(result["at_load"]),
        after_first=frozenset(result["after_first"]),
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
