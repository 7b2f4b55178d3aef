"""A loopback server answering Secret Manager's v1 REST API as the real client calls it.

`google-cloud-secret-manager` with `transport="rest"` sends (seen on the wire):

    GET /v1/projects/{project}/secrets?$alt=json;enum-encoding=int[&pageToken=...]
    GET /v1/projects/{project}/secrets/{secret}/versions/{version}:access?$alt=json;...

and parses the answers as proto3 JSON: `{"secrets": [...], "nextPageToken": ..., "totalSize":
...}` and `{"name": ..., "payload": {"data": <base64>, "dataCrc32c": "<int64 as string>"}}`.
Errors are Google's JSON error shape, which `google.api_core.exceptions.from_http_response`
turns into `NotFound` and friends. Names in answers carry the project *number*, as Google's do.
The client does not check `dataCrc32c` itself; `corrupt=True` sends a wrong one to prove that
our client does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google_crc32c

from tests.support.loopback import LoopbackHandler, LoopbackHTTPServer, LoopbackServer

_LIST = re.compile(r"^/v1/projects/(?P<project>[^/]+)/secrets$")
_ACCESS = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/secrets/(?P<secret>[^/]+)/versions/(?P<version>[^/:]+):access$"
)
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class _Version:
    data: bytes
    corrupt: bool = False


class _Handler(LoopbackHandler):
    server: LoopbackHTTPServer[FakeSecretManager]

    def _answer(self) -> None:
        self.read_body()
        fake = self.server.fake
        target = urlsplit(self.path)
        fake._record(
            Recorded(self.command, target.path, parse_qs(target.query), dict(self.headers))
        )
        failure = fake._take_failure()
        if failure is not None:
            status, body = _error(failure, f"Simulated failure with status {failure}.")
        else:
            status, body = fake.handle(self.command, self.path)
        self.send_json(status, body, content_type="application/json; charset=UTF-8")

    do_GET = do_POST = do_DELETE = do_PATCH = _answer


@dataclass
class FakeSecretManager(LoopbackServer[Recorded]):
    """The API as data (`handle` answers without a socket); served by `serve_secret_manager`."""

    handler = _Handler

    project: str = "stratus-test"
    project_number: str = "123456789012"
    page_size: int = 2  # small, so that the client's pager has to follow nextPageToken
    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    url: str = ""

    def add_secret(self, name: str, *values: str | bytes, corrupt: bool = False) -> None:
        """A secret with the given versions (1, 2, …); none means a secret with no versions."""
        versions = self.secrets.setdefault(name, [])
        for value in values:
            data = value.encode() if isinstance(value, str) else value
            versions.append(_Version(data, corrupt))

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # -- the API ---------------------------------------------------------------------------

    def handle(self, method: str, target: str) -> tuple[int, dict[str, Any]]:
        path = urlsplit(target).path
        query = parse_qs(urlsplit(target).query)
        if method != "GET":
            return _error(405, f"Method {method} is not served by this fake.")
        if match := _LIST.match(path):
            if not self._known(match["project"]):
                return _error(404, f"Project [{match['project']}] not found.")
            return 200, self._list(query)
        if match := _ACCESS.match(path):
            if not self._known(match["project"]):
                return _error(404, f"Project [{match['project']}] not found.")
            return self._access(match["secret"], match["version"])
        return _error(404, f"Requested entity was not found: {path}.")

    def _known(self, project: str) -> bool:
        return project in (self.project, self.project_number)

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        names = sorted(self.secrets)
        start = int(query.get("pageToken", ["0"])[0] or 0)
        size = int(query.get("pageSize", [str(self.page_size)])[0]) or self.page_size
        page = names[start : start + size]
        body: dict[str, Any] = {
            "secrets": [
                {
                    "name": f"projects/{self.project_number}/secrets/{name}",
                    "replication": {"automatic": {}},
                    "createTime": "2026-01-01T00:00:00Z",
                }
                for name in page
            ],
            "totalSize": len(names),
        }
        if start + size < len(names):
            body["nextPageToken"] = str(start + size)
        return body

    def _access(self, secret: str, version: str) -> tuple[int, dict[str, Any]]:
        secret_path = f"projects/{self.project_number}/secrets/{secret}"
        versions = self.secrets.get(secret)
        if not versions:
            return _error(404, f"Secret [{secret_path}] not found or has no versions.")
        number = len(versions) if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= number <= len(versions):
            return _error(404, f"Secret Version [{secret_path}/versions/{version}] not found.")
        chosen = versions[number - 1]
        crc = google_crc32c.value(chosen.data) ^ (1 if chosen.corrupt else 0)
        return 200, {
            "name": f"{secret_path}/versions/{number}",
            "payload": {
                "data": base64.b64encode(chosen.data).decode(),
                "dataCrc32c": str(crc),  # int64 is a string in proto3 JSON
            },
        }


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    status = _STATUS.get(code, "UNKNOWN")
    return code, {"error": {"code": code, "message": message, "status": status}}


@contextmanager
def serve_secret_manager(fake: FakeSecretManager | None = None) -> Iterator[FakeSecretManager]:
    """Run `fake` on 127.0.0.1 (a free port) for the duration of the block."""
    fake = fake or FakeSecretManager()
    with fake:
        fake.url = fake.base_url
        yield fake
