"""health: component health (no auth), the metrics read-out and the dashboard (admins).

GET /                      component health: 200 `ok`/`degraded`, 503 `down`, same body
GET /metrics               per route and per agent/model statistics (admin bearer token)
GET /dashboard             the charts page (static; its script reads /metrics as an admin)
GET /dashboard/{asset}     the page's script, stylesheet and vendored uPlot
"""

from __future__ import annotations

from pathlib import Path

import flask
import functions_framework

from shared_layer.dashboard import SECURITY_HEADERS, dashboard_asset, dashboard_page
from shared_layer.health import check_health
from shared_layer.http import ApiRequest, Router, json_response

STATIC = Path(__file__).resolve().parent / "static"
router = Router("health", check_config=False)


@router.route("GET", "/")
def report(req: ApiRequest) -> flask.Response:
    result = check_health()
    response = json_response(result, 503 if result.status == "down" else 200)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.route("GET", "/metrics", auth=True)
def metrics(req: ApiRequest) -> flask.Response:
    from shared_layer.database import session_scope
    from shared_layer.metrics_query import performance_report, resolve_window
    from shared_layer.monitoring import flush_metrics
    from shared_layer.schemas.monitoring import MetricsQuery
    from shared_layer.services.admin import require_admin

    with session_scope() as session:
        require_admin(session, user_id=req.caller, action="reading the metrics")
    start, end = resolve_window(req.query(MetricsQuery))
    flush_metrics()  # this instance's waiting rows count too
    with session_scope() as session:
        result = performance_report(session, start=start, end=end)
    response = json_response(result)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.route("GET", "/dashboard")
def dashboard(req: ApiRequest) -> flask.Response:
    page = dashboard_page(STATIC, request_path=req.raw.path)
    response = flask.Response(page, mimetype="text/html")
    response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store"})
    return response


@router.route("GET", "/dashboard/{asset}")
def asset(req: ApiRequest) -> flask.Response:
    content, media_type = dashboard_asset(STATIC, req.params["asset"])
    response = flask.Response(content, mimetype=media_type)
    response.headers.update({**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"})
    return response


@functions_framework.http
def health(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
