"""health's metrics read-out (administrators only) and the dashboard's files, over the real
function, with metrics recorded by real requests and a real task run."""

from __future__ import annotations

import uuid

import pytest

from shared_layer.dashboard import CONTENT_SECURITY_POLICY
from tests.conftest import function_app, table_counts
from tests.support.problems import assert_problem


def _traffic(client, user_token, push_to_task_runner) -> tuple[str, str]:
    """Requests through the agents function (one 404) and one task run; the agent's id."""
    _, bearer = user_token()
    me = {"Authorization": bearer}
    agents = client("agents")
    agent_id = agents.post("/agents", json={"name": "metrics-agent"}, headers=me).json["id"]
    for _ in range(3):
        assert agents.get(f"/agents/{agent_id}", headers=me).status_code == 200
    assert agents.get(f"/agents/{uuid.uuid4()}", headers=me).status_code == 404
    accepted = agents.post(f"/agents/{agent_id}/tasks", json={"input": "Say hi"}, headers=me)
    assert accepted.status_code == 202
    assert push_to_task_runner == [200]
    return agent_id, bearer


def test_an_administrator_reads_route_and_task_statistics_of_real_traffic(
    db, client, user_token, admin_token, push_to_task_runner
):
    agent_id, _ = _traffic(client, user_token, push_to_task_runner)
    _, admin = admin_token()
    r = client("health").get("/metrics?window=1h", headers={"Authorization": admin})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json
    routes = {(x["function"], x["method"], x["route"]): x for x in body["routes"]}
    get_agent = routes[("agents", "GET", "/agents/{agent_id}")]
    assert (get_agent["count"], get_agent["client_errors"], get_agent["server_errors"]) == (4, 1, 0)
    assert get_agent["p50_ms"] > 0
    assert get_agent["p50_ms"] <= get_agent["p95_ms"] <= get_agent["p99_ms"]
    assert routes[("agents", "POST", "/agents/{agent_id}/tasks")]["count"] == 1
    [tasks] = body["tasks"]
    assert (tasks["agent_id"], tasks["agent_name"]) == (agent_id, "metrics-agent")
    assert (tasks["count"], tasks["succeeded"], tasks["success_rate"]) == (1, 1, 1.0)
    assert tasks["total_tokens"] > 0
    assert body["totals"]["tasks_succeeded"] == 1
    assert body["bucket_seconds"] == 60
    assert sum(p["requests"] for p in body["series"]) == body["totals"]["requests"]


def test_explicit_start_and_end_are_accepted(db, client, admin_token):
    _, admin = admin_token()
    r = client("health").get(
        "/metrics?start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00%2B00:00",
        headers={"Authorization": admin},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["start"].startswith("2026-01-01T00:00:00")
    assert r.json["bucket_seconds"] == 900


def test_a_user_who_is_not_an_administrator_is_forbidden_and_it_is_logged(
    db, client, user_token, json_logs
):
    _, bearer = user_token()
    r = client("health").get("/metrics", headers={"Authorization": bearer})
    assert r.status_code == 403
    assert r.mimetype == "application/problem+json"
    assert "administrators only" in r.json["detail"]
    events = [
        e
        for e in json_logs
        if e["logging.googleapis.com/labels"].get("security_event") == "admin_access_denied"
    ]
    assert len(events) == 1


def test_a_revoked_administrator_is_forbidden(db, client, admin_token):
    from shared_layer.database import session_scope
    from shared_layer.services.admin import set_admin

    _, admin = admin_token(email="ops@example.com")
    with session_scope() as session:
        set_admin(session, email="ops@example.com", admin=False)
    assert client("health").get("/metrics", headers={"Authorization": admin}).status_code == 403


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Token abc"}],
    ids=["none", "garbage", "scheme"],
)
def test_no_or_bad_token_is_401(db, client, headers):
    r = client("health").get("/metrics", headers=headers)
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("window=2h", "window"),
        ("window=24h&start=2026-01-01T00:00:00Z", "(root)"),
        ("end=2026-01-01T00:00:00Z", "(root)"),
        ("start=yesterday", "start"),
        ("start=2026-01-01T00:00:00", "start"),  # no time zone
        ("colour=red", "colour"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_field(db, client, admin_token, query, field):
    _, admin = admin_token()
    before = table_counts(db)
    r = client("health").get(f"/metrics?{query}", headers={"Authorization": admin})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    assert field in [e["field"] for e in r.json["errors"]]
    assert table_counts(db) == before


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("start=2025-01-01T00:00:00Z&end=2025-06-01T00:00:00Z", "longer than 31 days"),
        ("start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z", "after start"),
        ("start=2026-01-01T00:00:00Z&end=2999-01-01T00:00:00Z", None),
    ],
    ids=["huge", "reversed", "future"],
)
def test_huge_reversed_or_future_ranges_are_400(db, client, admin_token, query, words):
    _, admin = admin_token()
    r = client("health").get(f"/metrics?{query}", headers={"Authorization": admin})
    assert r.status_code == 400
    if words:
        assert words in r.json["detail"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start=0001-01-01T00:00:00%2B14:00", "start"),
        ("start=9999-12-31T23:00:00Z&end=9999-12-31T23:59:59-14:00", "end"),
    ],
    ids=["start-before-year-1", "end-after-year-9999"],
)
def test_a_moment_that_is_not_a_date_in_utc_is_a_400_naming_it(
    db, client, admin_token, query, field
):
    """`astimezone(UTC)` of these overflowed: a 500."""
    _, admin = admin_token()
    before = table_counts(db)

    r = client("health").get(f"/metrics?{query}", headers={"Authorization": admin})

    assert_problem(r, 400, "UTC", fields={field})
    assert table_counts(db) == before


def test_the_earliest_day_in_utc_can_be_asked_for(db, client, admin_token):
    _, admin = admin_token()
    query = "start=0001-01-01T00:00:00-10:00&end=0001-01-02T00:00:00Z"

    r = client("health").get(f"/metrics?{query}", headers={"Authorization": admin})

    assert r.status_code == 200, r.get_data(as_text=True)
    assert (r.json["start"], r.json["totals"]["requests"]) == ("0001-01-01T10:00:00Z", 0)


def test_a_non_administrator_learns_nothing_about_the_query(db, client, user_token):
    _, bearer = user_token()
    r = client("health").get("/metrics?window=bogus", headers={"Authorization": bearer})
    assert r.status_code == 403  # authorization first, then validation


# -- the dashboard's files -----------------------------------------------------------------


def test_dashboard_page_is_html_with_a_strict_policy_and_relative_links(client):
    r = client("health").get("/dashboard")
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    page = r.get_data(as_text=True)
    assert 'src="dashboard/uPlot.iife.min.js"' in page
    assert 'data-metrics-url="metrics"' in page
    assert "http://" not in page  # nothing from a CDN
    assert "https://" not in page
    assert "<script>" not in page  # no inline script for the policy to allow
    # The router also answers `/dashboard/` (the document lists paths without a final slash).
    with_slash = function_app("health").test_client().get("/dashboard/").get_data(as_text=True)
    assert 'src="uPlot.iife.min.js"' in with_slash
    assert 'data-metrics-url="../metrics"' in with_slash


@pytest.mark.parametrize(
    ("asset", "media_type", "marker"),
    [
        ("dashboard.js", "text/javascript", "new uPlot("),
        ("dashboard.css", "text/css", ".charts"),
        ("uPlot.iife.min.js", "text/javascript", "uPlot (v1.6.32)"),
        ("uPlot.min.css", "text/css", ".uplot"),
    ],
)
def test_dashboard_assets_are_served_with_their_media_type(client, asset, media_type, marker):
    r = client("health").get(f"/dashboard/{asset}")
    assert r.status_code == 200
    assert r.mimetype == media_type
    assert marker in r.get_data(as_text=True)


@pytest.mark.parametrize("name", ["secrets.txt", "..%2Fmain.py", "vendor%2FuPlot.LICENSE"])
def test_anything_else_under_the_dashboard_is_a_404(client, name):
    r = client("health").get(f"/dashboard/{name}")
    assert r.status_code == 404
    assert r.mimetype == "application/problem+json"
