"""Bodies of the auth function."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field

from shared_layer.schemas.common import StrictBody
from shared_layer.utils import password_problems


def _strong_password(value: str) -> str:
    problems = password_problems(value)
    if problems:
        raise ValueError("password " + "; ".join(problems))
    return value


Password = Annotated[str, Field(min_length=1, max_length=72), AfterValidator(_strong_password)]
# An EmailStr field is built with email-validator, whose import compiles large regular
# expressions (~14 ms): the bodies with one are built on first use, so a function that imports
# this module for `TokenPair` or `UserPublic` (agents, through services.accounts) never pays it.
_EMAIL_BODY = ConfigDict(defer_build=True, str_strip_whitespace=True)


class UserCreate(StrictBody):
    model_config = _EMAIL_BODY

    email: EmailStr = Field(max_length=320)
    password: Password
    full_name: str | None = Field(None, max_length=200)


class LoginRequest(StrictBody):
    model_config = _EMAIL_BODY

    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=72)


class RefreshRequest(StrictBody):
    model_config = ConfigDict(str_strip_whitespace=True)

    refresh_token: str = Field(min_length=1, max_length=200)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type
    expires_in: int


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    email_verified: bool
    created_at: datetime
