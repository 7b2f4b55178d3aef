"""A loopback server that speaks the OpenAI REST API, for the real `openai` client to call.

It answers `POST /v1/chat/completions` and `POST /v1/embeddings` with the JSON shapes OpenAI
returns, derived deterministically from the request (the chat answer is
`echo: <last user message>`), records every request, and can be told to fail the next N calls
with a status (429, 500, 400, ...) or to answer slowly. Errors carry OpenAI's error body.
`answer_next` sends exact bytes instead (bodies that are not JSON, wrong shapes, odd headers);
`connections` counts the TCP connections clients opened, and `drop_connections` closes each
after its answer without saying so, as a server does with an idle keep-alive connection.

    with FakeOpenAIServer() as server:
        settings_env(LLM_PROVIDER="openai", OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="k")
        server.fail_next(500, times=2)

Standalone (the cold-start benchmark uses it): `python -m tests.support.fake_openai --port 8081`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import math
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.loopback import (
    LoopbackHandler,
    LoopbackHTTPServer,
    LoopbackServer,
    RecordedRequest,
)

EMBEDDING_DIMENSIONS = 16

_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


def _tokens(text: str) -> int:
    """A stand-in token count: words, at least one per non-empty text."""
    return max(1, len(text.split())) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def chat_answer(messages: list[dict[str, Any]]) -> str:
    """The reply the fake gives: `echo: ` and the last user message."""
    users = [_content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    return "echo: " + (users[-1] if users else "")


def chat_tokens(messages: list[dict[str, Any]]) -> int:
    """The total tokens the fake reports for a chat completion of `messages`."""
    prompt = sum(_tokens(_content_text(m.get("content"))) for m in messages)
    return prompt + _tokens(chat_answer(messages))


def fake_embedding(text: str) -> list[float]:
    """A unit vector derived from the text's SHA-256 (same text, same vector)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


class _Headers(dict[str, str]):
    """Recorded headers, looked up in any case (clients spell header names differently)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class _Handler(LoopbackHandler):
    server: LoopbackHTTPServer[FakeOpenAIServer]

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake.connections += 1

    def do_GET(self) -> None:
        self.server.fake._record(RecordedRequest("GET", self.path, self._headers(), {}))
        if self.path.rstrip("/") == "/v1/models":
            models = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
            ]
            self._send(200, {"object": "list", "data": models})
        else:
            self._error(404, f"Unknown route GET {self.path}")

    def do_POST(self) -> None:
        try:
            body = json.loads(self.read_body() or b"{}")
        except ValueError:
            self._error(400, "We could not parse the JSON body of your request.")
            return
        fake = self.server.fake
        fake._record(RecordedRequest("POST", self.path, self._headers(), body))
        if fake.delay_seconds:
            time.sleep(fake.delay_seconds)
        if fake.drop_connections:
            self.close_connection = True  # after this answer, with no `Connection: close`
        with fake._lock:
            canned = fake._canned.pop(0) if fake._canned else None
        if canned is not None:
            self._send_raw(*canned)
            return
        status = fake._take_failure()
        if status is not None:
            self._error(status, f"Simulated failure with status {status}.")
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/chat/completions":
            self._send(200, self._chat(body))
        elif path == "/v1/embeddings":
            self._send(200, self._embeddings(body))
        else:
            self._error(404, f"Unknown route POST {self.path}")

    def _headers(self) -> dict[str, str]:
        return _Headers({name.lower(): value for name, value in self.headers.items()})

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        answer = chat_answer(messages)
        prompt = sum(_tokens(_content_text(m.get("content"))) for m in messages)
        completion = _tokens(answer)
        fake = self.server.fake
        return {
            "id": f"chatcmpl-fake{fake._next_id()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "gpt-4o-mini"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(i) for i in inputs or []]
        data = []
        for index, text in enumerate(texts):
            vector = fake_embedding(text)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":  # the client's default: float32 LE
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "text-embedding-3-small"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _error(self, status: int, message: str) -> None:
        kind, code = _ERROR_TYPES.get(status, ("server_error", None))
        headers = {"retry-after-ms": "10"} if status == 429 else {}
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        self._send(status, body, headers)

    def _send_raw(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        request_id = f"req_fake{self.server.fake._next_id()}"
        self.send_json(status, body, {"x-request-id": request_id, **(headers or {})})


@dataclass
class FakeOpenAIServer(LoopbackServer[RecordedRequest]):
    """The fake, on a free loopback port (or `port`) while the `with` block runs; `fail_next`
    makes the next POSTs fail with an OpenAI error body."""

    handler = _Handler
    url_suffix = "/v1"

    delay_seconds: float = 0.0
    drop_connections: bool = False
    connections: int = 0
    _counter: int = 0
    _canned: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/v1/chat/completions")]

    def answer_next(
        self,
        status: int,
        body: bytes | dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next POST with exactly this (a dict is sent as JSON), before failures."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        with self._lock:
            self._canned.append((status, body, headers or {}))

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = FakeOpenAIServer(host=args.host, port=args.port).start()
    logging.basicConfig(level="INFO")
    logging.getLogger(__name__).info("fake OpenAI API at %s", server.base_url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
