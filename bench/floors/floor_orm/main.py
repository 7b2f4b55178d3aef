"""A floor for bench/coldstart.py --floors: the settings, SQLAlchemy's ORM with the models, and
one ORM query; what any function that reads the database through the ORM pays, before its own
schemas, services and libraries."""

from __future__ import annotations

import flask
import functions_framework
from sqlalchemy import select

from shared_layer.config import get_settings
from shared_layer.database import session_scope
from shared_layer.models import User

get_settings()


@functions_framework.http
def floor_orm(request: flask.Request) -> str:
    with session_scope() as session:
        session.scalar(select(User.id).limit(1))
    return "ok"
