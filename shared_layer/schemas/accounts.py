"""Bodies of the auth function. Nothing is trimmed behind the caller's back: a password's spaces
are part of it (it is normalised to NFKC before hashing); an email address is read as
email-validator reads one (surrounding spaces are no part of an address) and stored lower-cased.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
)

from shared_layer.password_policy import password_problems
from shared_layer.schemas.common import StrictBody

Password = Annotated[str, Field(min_length=1, max_length=72)]
# An EmailStr field is built with email-validator, whose import compiles large regular
# expressions (~14 ms): the bodies with one are built on first use, so a function that imports
# this module for `TokenPair` or `UserPublic` (agents, through services.accounts) never pays it.
_EMAIL_BODY = ConfigDict(defer_build=True)


class UserCreate(StrictBody):
    model_config = _EMAIL_BODY

    email: EmailStr = Field(max_length=320)
    full_name: str | None = Field(None, max_length=200)
    password: Password  # checked last, against the email and name above

    @field_validator("password")
    @classmethod
    def _strong_password(cls, value: str, info: ValidationInfo) -> str:
        problems = password_problems(
            value, user_inputs=[info.data.get("email"), info.data.get("full_name")]
        )
        if problems:
            raise ValueError("password " + "; ".join(problems))
        return value


class LoginRequest(StrictBody):
    """Any text is an address here: one that could not be registered is simply unknown, and
    answers as an unknown one does (401), so the answer never tells the two apart."""

    email: str = Field(min_length=1, max_length=320)
    password: Password


class RefreshRequest(StrictBody):
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
