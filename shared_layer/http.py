"""The HTTP adapter every HTTP function shares: routing, parsing, auth, problem responses.

A function's `main.py` declares its routes on a `Router` and hands each request to it:

    router = Router("agents")

    @router.route("GET", "/agents/{agent_id}", auth=True)
    def get_agent(req: ApiRequest) -> Reply: ...

    @functions_framework.http
    def agents(request: flask.Request) -> flask.Response:
        return router.dispatch(request)

Everything that goes wrong becomes one `application/problem+json` response here: unknown
routes (404), wrong methods (405), bodies over the limit (413), non-JSON (415), malformed or
too deeply nested JSON and invalid fields (400), bad tokens (401), `StratusError`s from
services, and bugs (500, with the trace in the log and never in the response) — and what
functions-framework answers itself (`answer_framework_errors_with_problems`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import flask
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.routing import Map, Rule
from werkzeug.routing.exceptions import RequestRedirect

from shared_layer.config import ConfigError, Settings, get_settings
from shared_layer.errors import (
    PROBLEM_CONTENT_TYPE,
    InvalidInput,
    MethodNotAllowed,
    MissingCredentials,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StratusError,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
    internal_problem,
    problem_for,
)
from shared_layer.logging_config import (
    configure_logging,
    log_api_call,
    log_context,
    log_security_event,
    request_log_fields,
)
from shared_layer.monitoring import api_call_monitor

if TYPE_CHECKING:
    from shared_layer.auth import TokenPayload

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Reply = BaseModel | list[Any] | dict[str, Any] | tuple[Any, int] | flask.Response | None
Handler = Callable[["ApiRequest"], Reply]

_TEMPLATE_PARAM = re.compile(r"\{(\w+)\}")
# How deep pydantic's JSON parser (jiter) reads arrays and objects nested in each other.
JSON_MAX_DEPTH = 200


@dataclass
class ApiRequest:
    """What a handler sees: the flask request, path parameters and the caller, once checked."""

    raw: flask.Request
    params: dict[str, str]
    route: str
    max_body_bytes: int
    user_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    _body: bytes | None = field(default=None, repr=False)

    @property
    def caller(self) -> uuid.UUID:
        if self.user_id is None:  # a route without auth=True asked for the caller: a bug
            raise RuntimeError("route does not authenticate its caller")
        return self.user_id

    @property
    def caller_session(self) -> uuid.UUID:
        if self.session_id is None:
            raise RuntimeError("route does not authenticate its caller")
        return self.session_id

    @property
    def client_ip(self) -> str:
        return client_ip(self.raw)

    def body_bytes(self) -> bytes:
        if self._body is None:
            length = self.raw.content_length
            if length is not None and length > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"the body is {length} bytes; the limit is {self.max_body_bytes}"
                )
            data = self.raw.stream.read(self.max_body_bytes + 1)
            if len(data) > self.max_body_bytes:
                raise PayloadTooLarge(f"the body is over the limit of {self.max_body_bytes} bytes")
            self._body = data
        return self._body

    def json(self) -> Any:
        """The body parsed as JSON; 415 when it is not declared JSON, 400 when it is malformed."""
        mimetype = self.raw.mimetype
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise UnsupportedMediaType(
                f"expected a body of type application/json, got {mimetype or 'none'}"
            )
        data = self.body_bytes()
        if not data.strip():
            raise InvalidInput("the body is empty; expected a JSON object")
        return parse_json(data)

    def parse(self, model: type[M]) -> M:
        """The body validated against `model`; 400 naming each offending field."""
        try:
            return model.model_validate(self.json())
        except ValidationError as exc:
            raise invalid_input_from(exc, where="body") from None

    def query(self, model: type[M]) -> M:
        """The query string validated against `model` as text (pydantic's strings mode: an
        integer parameter is read as the JSON number it spells); 400 naming each parameter."""
        try:
            return model.model_validate_strings(self.raw.args.to_dict())
        except ValidationError as exc:
            raise invalid_input_from(exc, where="query") from None

    def uuid_param(self, name: str, what: str) -> uuid.UUID:
        """A path id; one that is not a UUID names no resource, so it is a 404."""
        value = self.params[name]
        try:
            return uuid.UUID(value)
        except ValueError:
            raise NotFound(f"no {what} with id {value!r}") from None


def _max_body_bytes() -> int:
    """The configured body limit; the default when production refuses the configuration, so
    that `health` can still answer and name the problems (other routes fail where they need
    the settings)."""
    try:
        return get_settings().max_body_bytes
    except ConfigError:
        return int(Settings.model_fields["max_body_bytes"].default)


def parse_json(data: bytes) -> Any:
    """`data` as JSON, or a 400 saying what is wrong with it (webhooks call this on the raw body
    they have just verified).

    Read by pydantic's parser (jiter), not `json.loads`: it stops at `JSON_MAX_DEPTH` levels of
    nesting where `json.loads` recurses until Python's stack gives out, and it refuses what
    JSON does not have and what no text column can hold: `NaN` and `Infinity` (PostgreSQL's
    json refuses them too), invalid UTF-8 and lone surrogate escapes."""
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        if str(exc).startswith("recursion limit exceeded"):
            raise InvalidInput(
                f"the body is nested too deeply: JSON is read up to {JSON_MAX_DEPTH} levels of "
                f"arrays and objects ({exc})"
            ) from None
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


def parse_json_as(model: type[M], data: bytes, *, where: str) -> M:
    """`data` parsed by `parse_json` and validated as `model` (webhooks call this on the raw
    body they have just verified): a 400 saying what is wrong with the JSON, or which fields
    are invalid, as `parse_json` and `invalid_input_from` would. Not `model_validate_json`:
    its parser takes `NaN`, which a body stored as it came must not hold."""
    payload = parse_json(data)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise invalid_input_from(exc, where=where) from None


def invalid_input_from(exc: ValidationError, *, where: str) -> InvalidInput:
    errors = [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(root)",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]
    fields = ", ".join(e["field"] for e in errors)
    return InvalidInput(f"invalid {where}: {fields}", errors=errors)


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> flask.Response:
    response = flask.Response(
        json.dumps(body), status=body["status"], mimetype=PROBLEM_CONTENT_TYPE
    )
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def framework_problem(exc: HTTPException) -> flask.Response:
    """A problem+json for what functions-framework itself refuses before our code runs (a
    body that is not a CloudEvent, a wrong method), instead of its HTML page, which echoes
    the request's headers back."""
    error: StratusError
    if isinstance(exc, WerkzeugMethodNotAllowed):
        allowed = sorted(exc.valid_methods or [])
        error = MethodNotAllowed(f"{flask.request.method} is not allowed here", allowed=allowed)
        return problem_response(problem_for(error), {"Allow": ", ".join(allowed)})
    if exc.code == 404:
        error = NotFound(f"no route {flask.request.path}")
    elif exc.code == 413:
        error = PayloadTooLarge("the body is over the limit")
    else:
        error = InvalidInput(
            "the request is not a CloudEvent: expected binary mode (ce-* headers) or "
            "structured mode (application/cloudevents+json)"
        )
    return problem_response(problem_for(error, instance=flask.request.path))


def framework_crash_problem(exc: HTTPException) -> flask.Response:
    """A problem+json 500 in place of functions-framework's `crash_handler`, whose text body is
    `str(e)`: it says nothing of the cause. Flask has logged the exception with its trace
    already (`Flask.log_exception`); the `X-Google-Status: crash` header is kept, as the
    platform logs a crash by it."""
    response = problem_response(internal_problem(instance=flask.request.path))
    response.headers["X-Google-Status"] = "crash"
    return response


def refuse_unreadable_json_bodies() -> flask.Response | None:
    """Before functions-framework reads a CloudEvent: `cloudevents.http.from_http` reads a body
    with `json.loads`, which takes `NaN`, fails on bytes that are not UTF-8 and recurses until
    a deeply nested body exhausts the stack (each a 500). So a body must be what
    `parse_json` reads, else a 400 saying why; only the data of a binary-mode event (its
    attributes in `ce-*` headers) may be opaque, when it is not declared JSON and holds no more
    brackets than `parse_json` nests (`json.loads` is tried on it too)."""
    from cloudevents.sdk.converters import is_binary

    request = flask.request
    if request.routing_exception is not None:  # not served (a 405): nothing will read it
        return None
    data = request.get_data()
    mimetype = request.mimetype
    declared_json = mimetype == "application/json" or mimetype.endswith("+json")
    opaque = is_binary(dict(request.headers)) and not declared_json
    if opaque and data.count(b"[") + data.count(b"{") <= JSON_MAX_DEPTH:
        return None
    try:
        parse_json(data)
    except InvalidInput as exc:
        return problem_response(problem_for(exc, instance=request.path))
    return None


def answer_framework_errors_with_problems(*, cloud_events: bool = False) -> None:
    """Make every answer functions-framework gives itself a problem: its refusals
    (/favicon.ico, a body that is not a CloudEvent, a wrong method on an event function)
    instead of HTML pages, and its 500 instead of the exception's text; for a CloudEvent
    function (`cloud_events`), also a JSON body its parser would fail on. Called while it loads
    a function's main.py, inside the app context of the app it is building."""
    if not flask.has_app_context():
        return
    app = flask.current_app
    app.register_error_handler(HTTPException, framework_problem)
    app.register_error_handler(500, framework_crash_problem)
    if cloud_events:
        app.before_request(refuse_unreadable_json_bodies)


def json_response(body: Any, status: int = 200) -> flask.Response:
    if isinstance(body, BaseModel):
        text = body.model_dump_json()
    elif isinstance(body, list) and body and isinstance(body[0], BaseModel):
        text = "[" + ",".join(item.model_dump_json() for item in body) + "]"
    else:
        text = json.dumps(body, default=str)
    return flask.Response(text, status=status, mimetype="application/json")


@dataclass
class _Route:
    method: str
    template: str
    handler: Handler
    auth: bool


class Router:
    """Routes of one HTTP function, by OpenAPI-style templates (`/agents/{agent_id}`)."""

    def __init__(self, function: str, *, check_config: bool = True) -> None:
        """`check_config` reads the settings now, so that a configuration production refuses
        stops the instance at start (a failed deploy) instead of failing every request;
        `health` opts out, because its job is to answer and name the problems."""
        self.function = function
        self._routes: dict[tuple[str, str], _Route] = {}
        self._map = Map(strict_slashes=False, merge_slashes=False)
        # Bound once: match() takes each request's path (and picks up routes added later).
        self._adapter = self._map.bind("stratus")
        configure_logging()
        answer_framework_errors_with_problems()
        if check_config:
            get_settings()

    @property
    def routes(self) -> list[tuple[str, str]]:
        """(method, template) pairs, for the OpenAPI conformance test."""
        return sorted(self._routes)

    def route(
        self, method: str, template: str, *, auth: bool = False
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            method_ = method.upper()
            self._routes[(method_, template)] = _Route(method_, template, handler, auth)
            rule = _TEMPLATE_PARAM.sub(r"<\1>", template)
            self._map.add(Rule(rule, endpoint=(method_, template), methods=[method_]))
            return handler

        return register

    def dispatch(self, request: flask.Request) -> flask.Response:
        """Answer one request; every request is logged and recorded as an API-call metric (by
        route template) once, here, so no function monitors its routes by hand."""
        fields = request_log_fields(request.headers)
        started = time.perf_counter()
        with (
            log_context(function=self.function, **fields),
            api_call_monitor(
                self.function, request.method, execution_id=fields["execution_id"]
            ) as call,
        ):
            api_request: ApiRequest | None = None
            try:
                route, params = self._match(request)
                call.route = route.template
                api_request = ApiRequest(
                    raw=request,
                    params=params,
                    route=route.template,
                    max_body_bytes=_max_body_bytes(),
                )
                if route.auth:
                    token = authenticate(request)
                    api_request.user_id = call.user_id = token.user_id
                    api_request.session_id = token.session_id
                response = _to_response(route.handler(api_request))
            except StratusError as exc:
                response = self._problem(exc, request)
            except ConfigError as exc:
                logger.error("configuration refused: %s", exc)
                unavailable = UpstreamError("the service is not configured; see the health report")
                response = problem_response(problem_for(unavailable, instance=request.path))
            except Exception:
                logger.exception("unhandled error in %s %s", request.method, request.path)
                response = problem_response(internal_problem(instance=request.path))
            duration_ms = (time.perf_counter() - started) * 1000
            user = api_request.user_id if api_request else None
            log_api_call(
                api_request.route if api_request else request.path,
                request.method,
                response.status_code,
                duration_ms,
                user,
            )
            call.status_code = response.status_code
            return response

    def _match(self, request: flask.Request) -> tuple[_Route, dict[str, str]]:
        method = request.method.upper()
        try:
            endpoint, params = self._adapter.match(request.path or "/", method=method)
        except RequestRedirect:
            raise NotFound(f"no route {request.path}") from None
        except HTTPException as exc:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                raise MethodNotAllowed(
                    f"{method} is not allowed on {request.path}", allowed=allowed
                ) from None
            raise NotFound(
                f"no route {method} {request.path} in the {self.function} function"
            ) from None
        return self._routes[endpoint], {str(k): str(v) for k, v in params.items()}

    def _problem(self, exc: StratusError, request: flask.Request) -> flask.Response:
        headers: dict[str, str] = {}
        if isinstance(exc, MissingCredentials):  # RFC 6750 §3.1: no error code without a token
            headers["WWW-Authenticate"] = 'Bearer realm="stratus"'
        elif isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="stratus", error="invalid_token"'
            log_security_event("auth_failed", path=request.path, reason=exc.detail)
        if isinstance(exc, MethodNotAllowed):
            headers["Allow"] = ", ".join(exc.allowed)
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc.detail)
        return problem_response(problem_for(exc, instance=request.path), headers)


def _to_response(reply: Reply) -> flask.Response:
    if isinstance(reply, flask.Response):
        return reply
    if reply is None:
        return flask.Response(status=204)
    if isinstance(reply, tuple):
        body, status = reply
        return json_response(body, status)
    return json_response(reply)


def bearer_token(request: flask.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header:
        raise MissingCredentials("missing Authorization header; expected 'Bearer <access token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header; expected 'Bearer <access token>'")
    return token.strip()


def authenticate(request: flask.Request) -> TokenPayload:
    """The caller's checked access token: signed, unexpired, and its session still open and its
    user active (`shared_layer.services.sessions.check_session`)."""
    from shared_layer.auth import verify_token
    from shared_layer.services.sessions import check_session

    token = verify_token(bearer_token(request))
    assert token.session_id is not None, "verify_token requires a session on access tokens"
    check_session(user_id=token.user_id, session_id=token.session_id)
    return token


def client_ip(request: flask.Request) -> str:
    """The caller's IP address. Behind `TRUSTED_PROXY_HOPS` proxies that each append the address
    they received from to X-Forwarded-For (Cloud Run's front end is one), it is the entry the
    outermost of them appended; entries to its left were written by the client and are never
    trusted. Without such proxies (locally), or when the header is short, the socket's peer."""
    hops = get_settings().trusted_proxy_hops
    if hops:
        forwarded = [
            entry.strip()
            for value in request.headers.getlist("X-Forwarded-For")
            for entry in value.split(",")
            if entry.strip()
        ]
        if len(forwarded) >= hops:
            try:
                return str(ipaddress.ip_address(forwarded[-hops]))
            except ValueError:
                pass
    return request.remote_addr or "unknown"
