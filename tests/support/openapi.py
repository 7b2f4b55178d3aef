"""Check real responses against docs/openapi.yaml, so the document cannot drift from the code.

`check_response(...)` finds the operation a request hit (by the function's name and the path
it requested, matching templated paths), then asserts that the status is documented, the
content type is one the spec lists for it, required headers are present, and the JSON body
validates against the schema (JSON Schema 2020-12, which OpenAPI 3.1 schemas are, with
`#/components/...` references resolved in the document). Requests no operation serves must
be the documented 404 / 405 problems. A mismatch raises `AssertionError` saying what and where.

`validated_client("agents", flask_client)` wraps a Flask test client so that every response
it returns has been checked; `validating_client_factory(function_app)` is what
tests/conftest.py's `client` fixture can return once every route is documented.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
SPEC_URI = "urn:stratus:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Operation:
    """One documented operation, found for a request."""

    path: str  # as in the spec: "/agents/agents/{agent_id}"
    method: str  # lower case, as in the spec
    spec: Mapping[str, Any]
    pointer: str  # JSON pointer of the operation in the document


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = yaml.safe_load(handle)
    return spec


@lru_cache(maxsize=1)
def _registry() -> Registry[Any]:
    resource = Resource.from_contents(load_spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _resolve(node: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """Follow a `$ref` to a local object (responses, parameters); its pointer if it was one."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node, None
    assert ref.startswith("#/"), f"only local references are supported, got {ref}"
    target: Any = load_spec()
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target, ref[1:]


def _template_regex(template: str) -> re.Pattern[str]:
    """`/agents/agents/{agent_id}` -> a regex where each parameter is one path segment."""
    parts = _PARAM.split(template)  # literal, name, literal, name, ..., literal
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


@lru_cache(maxsize=1)
def _path_patterns() -> list[tuple[re.Pattern[str], str]]:
    """Spec paths as regexes, literal paths first (OpenAPI: concrete paths win)."""
    paths = sorted(load_spec()["paths"], key=lambda p: (p.count("{"), p))
    return [(_template_regex(p), p) for p in paths]


def spec_path_for(function: str, path: str) -> str | None:
    """The documented path a request to `function` at `path` (function-relative) hits."""
    full = "/" + function + "/" + path.split("?", 1)[0].lstrip("/")
    for pattern, spec_path in _path_patterns():
        if pattern.match(full):
            return spec_path
    return None


def documented_functions() -> set[str]:
    """The functions with HTTP paths in the document (the first segment of each path)."""
    return {p.strip("/").split("/", 1)[0] for p in load_spec()["paths"]}


def find_operation(function: str, method: str, path: str) -> Operation | None:
    spec_path = spec_path_for(function, path)
    if spec_path is None:
        return None
    method = method.lower()
    item = load_spec()["paths"][spec_path]
    if method == "head" and "head" not in item:
        method = "get"  # every GET answers HEAD with the same status and no body
    if method not in item:
        return None
    return Operation(spec_path, method, item[method], f"/paths/{_escape(spec_path)}/{method}")


def schema_errors(pointer: str, value: Any) -> list[ValidationError]:
    """What is wrong with `value` as the schema at `pointer` in the document describes it
    (JSON Schema 2020-12, formats checked), by location; empty if nothing."""
    validator = Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    return sorted(validator.iter_errors(value), key=_location)


def _validate(pointer: str, body: Any, where: str) -> None:
    errors = schema_errors(pointer, body)
    if errors:
        lines = [f"- at {_location(e)}: {e.message}" for e in errors[:10]]
        shown = json.dumps(body)[:1000]
        raise AssertionError(
            f"{where}: the body does not match the spec:\n" + "\n".join(lines) + f"\nbody: {shown}"
        )


def _location(error: ValidationError) -> str:
    return "/" + "/".join(str(p) for p in error.absolute_path)


def _problem_pointer(name: str) -> str:
    return f"/components/responses/{name}/content/{_escape('application/problem+json')}/schema"


def check_response(
    function: str,
    method: str,
    path: str,
    status: int,
    content_type: str | None,
    body: bytes | str | Any,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Assert that this response is one the document describes for this request."""
    method = method.upper()
    where = f"{method} /{function}{path if path.startswith('/') else '/' + path} -> {status}"
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    spec_path = spec_path_for(function, path)
    operation = find_operation(function, method, path)
    if operation is None:
        # Not a documented operation: it must be the generic 404 or 405 problem.
        expected, name = (404, "NotFound") if spec_path is None else (405, "MethodNotAllowed")
        assert status == expected, (
            f"{where}: no operation documents this request, so the answer must be {expected}"
        )
        pointer = f"/components/responses/{name}"
        response: Mapping[str, Any] = load_spec()["components"]["responses"][name]
    else:
        responses = operation.spec["responses"]
        key = next(
            (k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None
        )
        assert key is not None, (
            f"{where}: status {status} is not documented for {operation.method.upper()} "
            f"{operation.path} (documented: {', '.join(sorted(responses))})"
        )
        response, ref = _resolve(responses[key])
        pointer = ref or f"{operation.pointer}/responses/{_escape(key)}"
    _check_headers(response, headers, where)
    content = response.get("content") or {}
    raw = body if isinstance(body, bytes | str) else None
    if method == "HEAD":
        assert not raw, f"{where}: a HEAD response has a body"
        return
    if not content:
        assert not raw, f"{where}: the spec documents no body, but one came: {raw!r:.200}"
        return
    assert mimetype in content, (
        f"{where}: content type {mimetype or '(none)'} is not documented "
        f"(documented: {', '.join(content)})"
    )
    schema_pointer = f"{pointer}/content/{_escape(mimetype)}/schema"
    if raw is not None and not (mimetype == "application/json" or mimetype.endswith("+json")):
        # A text body (the dashboard's HTML, script, stylesheet): validated as a string.
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        assert text, f"{where}: an empty {mimetype} body"
        _validate(schema_pointer, text, where)
        return
    if raw is not None:
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise AssertionError(f"{where}: the body is not JSON: {raw!r:.200}") from exc
    else:
        parsed = body
    _validate(schema_pointer, parsed, where)


def _check_headers(
    response: Mapping[str, Any], headers: Mapping[str, str] | None, where: str
) -> None:
    if headers is None:
        return
    present = {k.lower() for k in headers}
    for name, header in (response.get("headers") or {}).items():
        header, _ = _resolve(header)
        if header.get("required"):
            assert name.lower() in present, f"{where}: the required header {name} is missing"


def check_test_response(function: str, response: TestResponse) -> TestResponse:
    """`check_response` for a Werkzeug test response (it knows its request)."""
    request = response.request
    check_response(
        function,
        request.method,
        request.path,
        response.status_code,
        response.headers.get("Content-Type"),
        response.get_data(),
        headers=dict(response.headers),
    )
    return response


class ValidatedClient:
    """A Flask test client whose every response is checked against the document.

    `seen` lists (documented path or None, method, status) of each response, so a scenario
    can assert that it exercised every operation.
    """

    def __init__(self, function: str, client: FlaskClient) -> None:
        self.function = function
        self.client = client
        self.seen: list[tuple[str | None, str, int]] = []

    def _checked(self, response: TestResponse) -> TestResponse:
        check_test_response(self.function, response)
        request = response.request
        path = spec_path_for(self.function, request.path)
        self.seen.append((path, request.method, response.status_code))
        return response

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.open(*args, **kwargs))

    def get(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.get(*args, **kwargs))

    def post(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.post(*args, **kwargs))

    def put(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.put(*args, **kwargs))

    def patch(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.patch(*args, **kwargs))

    def delete(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.delete(*args, **kwargs))

    def head(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.head(*args, **kwargs))

    def options(self, *args: Any, **kwargs: Any) -> TestResponse:
        return self._checked(self.client.options(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def validated_client(function: str, client: FlaskClient) -> ValidatedClient:
    return ValidatedClient(function, client)


def validating_client_factory(
    function_app: Callable[[str], Any],
) -> Callable[[str], FlaskClient | ValidatedClient]:
    """What tests/conftest.py's `client` fixture returns once every route is documented:

        @pytest.fixture
        def client() -> Callable[[str], FlaskClient | ValidatedClient]:
            from tests.support.openapi import validating_client_factory
            return validating_client_factory(function_app)

    Functions the document has no HTTP paths for (task_runner's CloudEvents) pass unchecked;
    tests/test_openapi.py asserts that every function with a router is documented.
    """
    documented = documented_functions()

    def make(name: str) -> FlaskClient | ValidatedClient:
        client = function_app(name).test_client()
        return ValidatedClient(name, client) if name in documented else client

    return make
