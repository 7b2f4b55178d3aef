"""metrics_cleanup: the scheduled run that deletes expired metrics and reaps task leases.

Cloud Scheduler POSTs here with an OIDC ID token for its service account; an administrator's
access token works too (e.g. to run it by hand). Locally, `stratus cleanup` and the local
stack's timer run the same `run_cleanup()`. See shared_layer/maintenance.py.
"""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared_layer.http import ApiRequest, Router, bearer_token
from shared_layer.maintenance import run_cleanup
from shared_layer.scheduler_auth import authorize_operator
from shared_layer.schemas.common import StrictBody
from shared_layer.schemas.monitoring import CleanupReport

logger = logging.getLogger(__name__)
router = Router("metrics_cleanup")


class CleanupRequest(StrictBody):
    """No options: a body, if any, is an empty JSON object."""


@router.route("POST", "/")
def cleanup(req: ApiRequest) -> CleanupReport:
    caller = authorize_operator(bearer_token(req.raw), action="running the cleanup")
    if req.body_bytes().strip():
        req.parse(CleanupRequest)
    logger.info("cleanup started by %s", caller, extra={"caller": caller})
    return run_cleanup()


@functions_framework.http
def metrics_cleanup(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
