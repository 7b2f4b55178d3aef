"""auth: register (with a welcome email), login (token issuance), refresh, logout, me."""

from __future__ import annotations

import logging

import flask
import functions_framework

from shared_layer.auth import hash_password
from shared_layer.http import ApiRequest, Router
from shared_layer.schemas.accounts import (
    LoginRequest,
    RefreshRequest,
    TokenPair,
    UserCreate,
    UserPublic,
)
from shared_layer.services import accounts
from shared_layer.services.users import UserRecord
from shared_layer.sql import transaction

logger = logging.getLogger(__name__)
router = Router("auth")


def _public(user: UserRecord) -> UserPublic:
    return UserPublic.model_validate(user)


@router.route("POST", "/register")
def register(req: ApiRequest) -> tuple[UserPublic, int]:
    body = req.parse(UserCreate)
    password_hash = hash_password(body.password)  # before the transaction: bcrypt holds no lock
    with transaction() as db:
        user = accounts.register_user(
            db, email=body.email, password_hash=password_hash, full_name=body.full_name
        )
    created = _public(user)
    _send_welcome(created)
    return created, 201


def _send_welcome(user: UserPublic) -> None:
    """After the commit: the account exists whether or not the email can leave."""
    from shared_layer.services.email import EmailRequest, send_email  # only registration sends

    try:
        send_email(EmailRequest(user.email, "welcome", {}, user.id))
    except Exception:
        logger.exception("the welcome email to user %s could not be sent", user.id)


@router.route("POST", "/login")
def login(req: ApiRequest) -> TokenPair:
    body = req.parse(LoginRequest)
    ip = req.client_ip
    user = accounts.authenticate_user(  # throttled; its own transaction
        email=body.email, password=body.password, client_ip=ip
    )
    with transaction() as db:
        return accounts.start_session(
            db, user=user, user_agent=req.raw.headers.get("User-Agent"), ip_address=ip
        )


@router.route("POST", "/refresh")
def refresh(req: ApiRequest) -> TokenPair:
    body = req.parse(RefreshRequest)
    return accounts.rotate_refresh_token(refresh_token=body.refresh_token)  # owns its transaction


@router.route("POST", "/logout", auth=True)
def logout(req: ApiRequest) -> None:
    accounts.logout(user_id=req.caller, session_id=req.caller_session)


@router.route("GET", "/me", auth=True)
def me(req: ApiRequest) -> UserPublic:
    with transaction() as db:
        return _public(accounts.get_active_user(db, user_id=req.caller))


@functions_framework.http
def auth(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
