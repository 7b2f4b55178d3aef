"""The shared input types: strings as typed and free of NUL however deeply nested, JSON
Schema's integers in bodies and queries alike."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared_layer.schemas.common import Integer, PageQuery, StrictBody, StrictQuery
from shared_layer.utils import holds_nul, locate, not_finite


class Nested(StrictBody):
    note: str | None = None
    tags: list[str] = []
    labels: dict[str, list[str]] = {}
    count: Integer = 0


class Search(StrictQuery):
    q: str = ""
    page: Integer = 1


@pytest.mark.parametrize(
    ("body", "field", "where"),
    [
        ({"note": "a\x00"}, "note", ""),
        ({"tags": ["ok", "b\x00d"]}, "tags", " (at 1)"),
        ({"labels": {"k": ["ok", "\x00"]}}, "labels", " (at k.1)"),
        ({"labels": {"k\x00": []}}, "labels", " (at k\x00)"),
    ],
    ids=["string", "in-a-list", "in-a-dict-value", "in-a-dict-key"],
)
def test_a_nul_anywhere_in_a_field_is_refused_naming_the_field_and_where(body, field, where):
    with pytest.raises(ValidationError) as refused:
        Nested.model_validate(body)

    [error] = refused.value.errors()
    assert error["loc"] == (field,)
    assert error["type"] == "string_nul"
    assert error["msg"] == f"must not contain NUL (U+0000) characters{where}"


def test_a_nul_in_a_query_parameter_is_refused_too():
    with pytest.raises(ValidationError) as refused:
        Search.model_validate_strings({"q": "x\x00"})
    assert refused.value.errors()[0]["loc"] == ("q",)


def test_strings_are_kept_as_typed():
    assert Nested.model_validate({"note": "  spaced  ", "tags": [" a "]}).note == "  spaced  "


def test_locate_names_the_first_place_or_none():
    assert locate({"a": [1, {"b": "ok"}], "c": ("x", "y\x00")}, holds_nul) == "c.1"
    assert locate({"a": {"b\x00": 1}}, holds_nul) == "a.b\x00"
    assert locate("\x00", holds_nul) == ""
    assert locate(["clean", {"k": None}, 3.5], holds_nul) is None
    assert locate({"n": [1, 2.5, float("inf")]}, not_finite) == "n.2"
    assert locate({"n": [1, 2.5, "inf"]}, not_finite) is None


@pytest.mark.parametrize(
    ("value", "expected"), [(207, 207), (207.0, 207), (-3.0, -3), (2e2, 200), (0, 0)]
)
def test_an_integer_is_a_number_with_no_fraction(value, expected):
    assert Nested.model_validate({"count": value}).count == expected


@pytest.mark.parametrize("value", [207.5, "207", True, False, None, float("inf"), [1], {}])
def test_an_integer_is_not_a_fraction_a_string_a_boolean_or_anything_else(value):
    with pytest.raises(ValidationError) as refused:
        Nested.model_validate({"count": value})
    assert refused.value.errors()[0]["loc"] == ("count",)


@pytest.mark.parametrize(("text", "expected"), [("3", 3), ("3.0", 3), ("3e0", 3), ("-0", 0)])
def test_an_integer_query_parameter_is_the_json_number_it_spells(text, expected):
    assert Search.model_validate_strings({"page": text}).page == expected


@pytest.mark.parametrize("text", ["true", "3.5", "1_0", "03", "0x3", "", "three", "1e400"])
def test_an_integer_query_parameter_that_is_no_whole_json_number_is_refused(text: Any):
    with pytest.raises(ValidationError):
        Search.model_validate_strings({"page": text})


def test_page_query_uses_the_shared_integer():
    assert PageQuery.model_validate_strings({"limit": "5.0", "offset": "0"}).limit == 5
    assert PageQuery.model_json_schema()["properties"]["limit"]["type"] == "integer"
