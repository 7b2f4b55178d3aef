"""A floor for bench/coldstart.py --floors: functions-framework and the settings, nothing else.

What every function pays before its own work: pydantic and pydantic-settings, the Settings class
and reading it once (as `Router` does at start).
"""

from __future__ import annotations

import flask
import functions_framework

from shared_layer.config import get_settings

get_settings()


@functions_framework.http
def floor_settings(request: flask.Request) -> str:
    return "ok"
