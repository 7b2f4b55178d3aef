"""health: component health (database, migrations, config, LLM mode); no auth.

200 when the platform can serve (`ok` or `degraded`), 503 when it cannot (`down`), with the
same body either way so that an uptime check and a person read the same thing.
"""

from __future__ import annotations

import flask
import functions_framework

from shared_layer.health import check_health
from shared_layer.http import ApiRequest, Router, json_response

router = Router("health", check_config=False)


@router.route("GET", "/")
def report(req: ApiRequest) -> flask.Response:
    result = check_health()
    response = json_response(result, 503 if result.status == "down" else 200)
    response.headers["Cache-Control"] = "no-store"
    return response


@functions_framework.http
def health(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
