"""The plumbing every loopback fake of an HTTP API shares, so that each fake holds only its API.

A fake is a `LoopbackServer` dataclass naming its request handler (a `LoopbackHandler`): it
serves on a free loopback port on a daemon thread while a `with` block runs, records requests
under a lock, and can be told to fail the next N calls with a status (`fail_next`), which the
handler asks for with `_take_failure()` and answers in its API's error shape.

    @dataclass
    class FakeThing(LoopbackServer[RecordedRequest]):
        handler = _Handler           # reaches the fake as `self.server.fake`
        url_suffix = "/v1"           # base_url is http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Self, TypeVar

FakeT = TypeVar("FakeT")
RequestT = TypeVar("RequestT")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Failure:
    status: int
    remaining: int


class LoopbackHTTPServer(ThreadingHTTPServer, Generic[FakeT]):
    daemon_threads = True  # keep-alive connections must not hold up shutdown
    fake: FakeT


class LoopbackHandler(BaseHTTPRequestHandler):
    """Keep-alive (as the real clients expect), quiet (tests read the fake's records)."""

    server: LoopbackHTTPServer[Any]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(
        self,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str = "application/json",
    ) -> None:
        """`body` as JSON (None: an empty body without a Content-Type), then `headers`."""
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


@dataclass(kw_only=True)
class LoopbackServer(Generic[RequestT]):
    """A fake on a free loopback port (or `port`) while the `with` block runs."""

    handler: ClassVar[type[LoopbackHandler]]
    url_suffix: ClassVar[str] = ""

    host: str = "127.0.0.1"
    port: int = 0
    requests: list[RequestT] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _httpd: LoopbackHTTPServer[Any] | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        return f"http://{self.host}:{self._httpd.server_address[1]}{self.url_suffix}"

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next `times` calls with `status` and the API's error body."""
        with self._lock:
            self._failures.append(_Failure(status, times))

    def start(self) -> Self:
        httpd: LoopbackHTTPServer[Self] = LoopbackHTTPServer((self.host, self.port), self.handler)
        httpd.fake = self
        self._httpd = httpd
        threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=type(self).__name__,
            daemon=True,
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, request: RequestT) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_failure(self) -> int | None:
        with self._lock:
            while self._failures and self._failures[0].remaining <= 0:
                self._failures.pop(0)
            if not self._failures:
                return None
            self._failures[0].remaining -= 1
            return self._failures[0].status
