"""A loopback Pub/Sub Publisher service that speaks the real gRPC wire protocol.

The real `google.cloud.pubsub_v1.PublisherClient`, pointed here by `PUBSUB_EMULATOR_HOST`,
publishes to it exactly as it would to Google. It records every `PublishRequest` and answers
with message ids, or with the gRPC error a test asks for (`fail_with`).
"""

from __future__ import annotations

import itertools
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.pubsub_v1.types import PublishRequest, PublishResponse


@dataclass
class ReceivedMessage:
    topic: str
    data: bytes
    attributes: dict[str, str]
    message_id: str


@dataclass
class FakePubSub:
    """Start with `start()` (or as a context manager); `host` is what PUBSUB_EMULATOR_HOST wants."""

    fail_with: grpc.StatusCode | None = None
    fail_details: str = "injected failure"
    messages: list[ReceivedMessage] = field(default_factory=list)
    requests: int = 0
    port: int = 0
    _server: grpc.Server | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000), repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _publish(self, request: PublishRequest, context: grpc.ServicerContext) -> PublishResponse:
        with self._lock:
            self.requests += 1
            if self.fail_with is not None:
                context.abort(self.fail_with, self.fail_details)
            ids = []
            for message in request.messages:
                message_id = str(next(self._ids))
                ids.append(message_id)
                self.messages.append(
                    ReceivedMessage(
                        topic=request.topic,
                        data=bytes(message.data),
                        attributes=dict(message.attributes),
                        message_id=message_id,
                    )
                )
        return PublishResponse(message_ids=ids)

    def start(self) -> FakePubSub:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher",
            {
                "Publish": grpc.unary_unary_rpc_method_handler(
                    self._publish,
                    request_deserializer=PublishRequest.deserialize,
                    response_serializer=PublishResponse.serialize,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> FakePubSub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
