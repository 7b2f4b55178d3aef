"""Pieces every body and query shares: the strict base models and the value types whose
documented schema (docs/openapi.yaml) is exactly what they check.

Strings are taken as typed (no trimming: a limit or pattern counts what was sent) and none
may hold NUL (U+0000), which no PostgreSQL text can; integers are JSON Schema's (a number
with a zero fraction, `207.0`, is one; a string or a boolean is not); datetimes are read in
UTC, and one that has no date in UTC (`0001-01-01T00:00:00+14:00`) is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError, from_json

from shared_layer.utils import holds_nul, locate, not_finite

T = TypeVar("T")


def _refuse_nul(value: Any) -> Any:
    where = locate(value, holds_nul)
    if where is not None:
        at = f" (at {where})" if where else ""
        raise PydanticCustomError(
            "string_nul", "must not contain NUL (U+0000) characters{at}", {"at": at}
        )
    return value


def _refuse_not_finite(value: Any) -> Any:
    where = locate(value, not_finite)
    if where is not None:
        at = f" (at {where})" if where else ""
        raise PydanticCustomError(
            "finite_number",
            "must hold finite numbers only: NaN and numbers past a double's range cannot be "
            "stored as JSON{at}",
            {"at": at},
        )
    return value


def _json_integer(value: Any, info: ValidationInfo) -> Any:
    """A JSON number with a zero fraction as the int it is; a query parameter (text) read as
    the JSON number it spells first. Anything else is left to `StrictInt` to refuse."""
    mode: str = info.mode  # "string" under model_validate_strings, which the stubs omit
    if mode == "string" and isinstance(value, str):
        try:
            value = from_json(value, allow_inf_nan=False)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_utc_range", "has no date in UTC: it falls outside the years 1 to 9999"
        ) from None


# A string that holds no NUL, for the text of models that are not `StrictInput` (webhooks').
Text = Annotated[str, AfterValidator(_refuse_nul)]
# Any JSON value a JSON column can store: no NaN, no infinity.
StorableJson = Annotated[Any, AfterValidator(_refuse_not_finite)]
# A datetime with a time zone, read in UTC.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
# JSON Schema's integer, in a body or a query.
Integer = Annotated[StrictInt, BeforeValidator(_json_integer)]
# The latest Unix time a timestamp we read may name: the start of the year 3000.
MAX_UNIX_SECONDS = 32_503_680_000
UnixSeconds = Annotated[Integer, Field(ge=0, le=MAX_UNIX_SECONDS)]


class StrictInput(BaseModel):
    """What a caller sends: unknown fields are errors (a typo is not silently ignored), strings
    are kept as typed, no string anywhere in a field (nested in lists and dicts too) holds NUL,
    and floats are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return _refuse_nul(value)


class StrictBody(StrictInput):
    """A request body (`ApiRequest.parse`)."""


class StrictQuery(StrictInput):
    """A query string's parameters, read from text (`ApiRequest.query`)."""


class PageQuery(StrictQuery):
    limit: Integer = Field(20, ge=1, le=100)
    offset: Integer = Field(0, ge=0, le=1_000_000)


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    has_more: bool

    @classmethod
    def of(cls, items: list[T], *, total: int, query: PageQuery) -> Page[T]:
        """A page of `items` for `query`, with `has_more` derived rather than passed around."""
        return cls(
            items=items,
            total=total,
            limit=query.limit,
            offset=query.offset,
            has_more=query.offset + len(items) < total,
        )
