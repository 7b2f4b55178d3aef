"""Publishing task ids: Google Cloud Pub/Sub in the cloud, a push emulation locally.

    publish_task(task_id) -> message id      what the agents function calls after its commit
    get_publisher() / reset_publisher()      the process's publisher, built from settings
    set_local_push_target(target)            where local mode delivers in-process

`PUBSUB_MODE=gcp`: a `google.cloud.pubsub_v1.PublisherClient`, imported and created on the
first publish (the agents function's cold start does not pay for gRPC). It honours
`PUBSUB_EMULATOR_HOST`. Failures become `UpstreamError`.

`PUBSUB_MODE=local`: `LocalPushPublisher` builds the binary-mode CloudEvent Eventarc would
send (`shared_layer.eventarc`) and delivers it to the registered in-process target (the local
stack registers task_runner's app), else by HTTP POST to `LOCAL_PUSH_ENDPOINT`, else keeps it
in `outbox`. Like a push subscription, it redelivers a non-2xx answer with exponential backoff,
up to `TASK_MAX_ATTEMPTS + 2` deliveries, then sets the message aside in `dead_letters`.
`LOCAL_PUSH_MODE=sync` delivers before `publish` returns (tests); `thread` delivers from
worker threads (the local stack), so a slow task never holds up the HTTP response.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared_layer.config import get_settings
from shared_layer.errors import UpstreamError
from shared_layer.eventarc import binary_cloudevent, task_message

__all__ = [
    "GcpPublisher",
    "LocalMessage",
    "LocalPushPublisher",
    "PushTarget",
    "TaskPublisher",
    "get_publisher",
    "publish_task",
    "reset_publisher",
    "set_local_push_target",
]

logger = logging.getLogger(__name__)

PushTarget = Callable[[dict[str, str], bytes], int]
"""Takes the CloudEvent's HTTP headers and body; returns the HTTP status it answered."""

DEFAULT_PUBLISH_TIMEOUT_SECONDS = 10.0
LOCAL_HTTP_TIMEOUT_SECONDS = 600.0


class TaskPublisher(Protocol):
    def publish(self, data: bytes, attributes: dict[str, str]) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LocalMessage:
    """One published message and the exact HTTP request that delivers it."""

    message_id: str
    data: bytes
    attributes: dict[str, str]
    headers: dict[str, str]
    body: bytes


class _Rejected(Exception):
    """The push endpoint did not acknowledge: redeliver."""

    def __init__(self, status: int) -> None:
        super().__init__(f"push endpoint answered {status}")
        self.status = status


_target_lock = threading.Lock()
_local_target: PushTarget | None = None
# Pub/Sub message ids are decimal strings; a counter seeded from the clock is unique here.
_message_ids = itertools.count(time.time_ns() // 1000)


def set_local_push_target(target: PushTarget | None) -> None:
    """Deliver local-mode messages to `target` in-process (None: HTTP endpoint or outbox).

    The registration outlives `reset_publisher()`: it belongs to the process (the local stack,
    a test fixture), not to one settings snapshot. Whoever registers a target unregisters it.
    """
    global _local_target
    with _target_lock:
        _local_target = target


def _current_target() -> PushTarget | None:
    with _target_lock:
        return _local_target


def _http_push(url: str, headers: dict[str, str], body: bytes) -> int:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"LOCAL_PUSH_ENDPOINT must be an http(s) URL, got {url!r}")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=LOCAL_HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError as exc:  # refused, reset, timed out: Pub/Sub would retry, so do we
        logger.warning("push to %s failed: %s", url, exc)
        return 0


class LocalPushPublisher:
    """Pub/Sub + Eventarc push, emulated in-process (see the module docstring)."""

    def __init__(
        self,
        *,
        project: str,
        topic: str,
        subscription: str,
        mode: Literal["sync", "thread"],
        endpoint: str | None,
        max_deliveries: int,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        workers: int = 4,
    ) -> None:
        self.project = project
        self.topic = topic
        self.subscription = subscription
        self.mode = mode
        self.endpoint = endpoint
        self.max_deliveries = max_deliveries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.outbox: list[LocalMessage] = []
        self.dead_letters: list[LocalMessage] = []
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[bool]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        message_id = str(next(_message_ids))
        headers, body = binary_cloudevent(
            data=data,
            attributes=dict(attributes),
            message_id=message_id,
            project=self.project,
            topic=self.topic,
            subscription=self.subscription,
        )
        message = LocalMessage(message_id, data, dict(attributes), headers, body)
        if _current_target() is None and not self.endpoint:
            with self._lock:
                self.outbox.append(message)
            logger.info(
                "no push target or LOCAL_PUSH_ENDPOINT: message %s kept in the outbox", message_id
            )
        elif self.mode == "sync":
            self.deliver(message)
        else:
            self._submit(message)
        return message_id

    def deliver(self, message: LocalMessage) -> bool:
        """Push `message` until it is acknowledged or out of deliveries; True if acknowledged."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_deliveries),
            wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception_type(_Rejected),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._push_once(message, attempt.retry_state.attempt_number)
        except _Rejected as exc:
            logger.error(
                "message %s not acknowledged after %d deliveries (last answer %d); dead-lettered",
                message.message_id,
                self.max_deliveries,
                exc.status,
            )
            with self._lock:
                self.dead_letters.append(message)
            return False
        return True

    def deliver_outbox(self) -> int:
        """Deliver, synchronously, what was kept for lack of a target; the number acknowledged."""
        with self._lock:
            messages, self.outbox = self.outbox, []
        return sum(self.deliver(message) for message in messages)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for background deliveries; True when none is left pending."""
        with self._lock:
            pending = set(self._pending)
        _done, not_done = wait_futures(pending, timeout=timeout)
        return not not_done

    def close(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _push_once(self, message: LocalMessage, delivery: int) -> None:
        target = _current_target()
        if target is not None:
            try:
                status = int(target(dict(message.headers), message.body))
            except Exception:  # the in-process subscriber crashed: to Pub/Sub that is a 500
                logger.exception("push target raised on message %s", message.message_id)
                status = 500
        elif self.endpoint:
            status = _http_push(self.endpoint, dict(message.headers), message.body)
        else:
            raise _Rejected(0)
        if not 200 <= status < 300:
            logger.warning(
                "delivery %d of message %s answered %d; will redeliver if attempts remain",
                delivery,
                message.message_id,
                status,
            )
            raise _Rejected(status)

    def _submit(self, message: LocalMessage) -> None:
        with self._lock:
            if self._closed:
                raise UpstreamError("the local publisher is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix="stratus-push"
                )
            future = self._executor.submit(self.deliver, message)
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)


class GcpPublisher:
    """Google Cloud Pub/Sub; the client library is imported on the first publish."""

    def __init__(
        self, *, project: str | None, topic: str, timeout: float = DEFAULT_PUBLISH_TIMEOUT_SECONDS
    ) -> None:
        self.project = project
        self.topic = topic
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud.pubsub_v1 import PublisherClient

                self._client = PublisherClient()
            return self._client

    def _retry(self) -> Any:
        """The library's transient-error retry, but bounded by our timeout (its default: 600 s)."""
        from google.api_core import exceptions as core
        from google.api_core.retry import Retry, if_exception_type

        transient = if_exception_type(
            core.Aborted,
            core.Cancelled,
            core.DeadlineExceeded,
            core.InternalServerError,
            core.ResourceExhausted,
            core.ServiceUnavailable,
            core.Unknown,
        )
        return Retry(
            initial=0.1, maximum=2.0, multiplier=2.0, predicate=transient, timeout=self.timeout
        )

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        if not self.project:
            raise UpstreamError(
                "GOOGLE_CLOUD_PROJECT is not set, so no Pub/Sub topic to publish to"
            )
        try:
            client = self._get_client()
            topic_path = client.topic_path(self.project, self.topic)
            future = client.publish(
                topic_path, data, retry=self._retry(), timeout=self.timeout, **attributes
            )
            return str(future.result(timeout=self.timeout + 5))
        except Exception as exc:  # the vendor's errors stop here
            raise UpstreamError(
                f"publishing to Pub/Sub topic {self.topic!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.stop()
                client.transport.close()
            except Exception:  # closing is best effort
                logger.debug("closing the Pub/Sub client failed", exc_info=True)


_publisher_lock = threading.Lock()
_publisher: TaskPublisher | None = None


def _build_publisher() -> TaskPublisher:
    settings = get_settings()
    if settings.pubsub_mode == "gcp":
        return GcpPublisher(project=settings.gcp_project_id, topic=settings.tasks_topic)
    return LocalPushPublisher(
        project=settings.gcp_project_id or "local",
        topic=settings.tasks_topic,
        subscription=settings.pubsub_subscription,
        mode=settings.local_push_mode,
        endpoint=settings.local_push_endpoint,
        max_deliveries=settings.task_max_attempts + 2,
    )


def get_publisher() -> TaskPublisher:
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = _build_publisher()
        return _publisher


def reset_publisher() -> None:
    """Close and forget the publisher (tests, and after the settings change)."""
    global _publisher
    with _publisher_lock:
        publisher, _publisher = _publisher, None
    if publisher is not None:
        publisher.close()


def publish_task(task_id: uuid.UUID) -> str:
    """Publish a task's id for task_runner; the message id. `UpstreamError` if it failed."""
    data, attributes = task_message(task_id)
    message_id = get_publisher().publish(data, attributes)
    logger.info(
        "published task %s as message %s", task_id, message_id, extra={"task_id": str(task_id)}
    )
    return message_id
