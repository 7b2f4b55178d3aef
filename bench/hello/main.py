"""The baseline for bench/coldstart.py: a bare functions-framework function, nothing imported."""

from __future__ import annotations

import flask
import functions_framework


@functions_framework.http
def hello(request: flask.Request) -> str:
    return "hello"
