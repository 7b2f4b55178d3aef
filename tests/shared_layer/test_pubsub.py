"""The task publisher: the local push emulation and Google Cloud Pub/Sub (via a gRPC fake)."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from shared_layer.errors import UpstreamError
from shared_layer.eventarc import PUBSUB_EVENT_TYPE, parse_task_event
from shared_layer.pubsub import (
    GcpPublisher,
    LocalPushPublisher,
    get_publisher,
    publish_task,
    set_local_push_target,
)
from tests.conftest import ROOT
from tests.support.fake_pubsub import FakePubSub


class Recorder:
    """An in-process push target: records each delivery, answers from a script (then 204)."""

    def __init__(self, answers: list[int | Exception] | None = None) -> None:
        self.answers = list(answers or [])
        self.calls: list[tuple[dict[str, str], bytes, float]] = []

    def __call__(self, headers: dict[str, str], body: bytes) -> int:
        self.calls.append((headers, body, time.monotonic()))
        answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def push_target() -> Iterator[Callable[..., Recorder]]:
    def register(answers: list[int | Exception] | None = None) -> Recorder:
        recorder = Recorder(answers)
        set_local_push_target(recorder)
        return recorder

    yield register
    set_local_push_target(None)


def local_publisher() -> LocalPushPublisher:
    publisher = get_publisher()
    assert isinstance(publisher, LocalPushPublisher)
    publisher.backoff_initial = 0.0  # redeliveries without waiting, unless a test wants backoff
    return publisher


def test_local_publish_pushes_the_binary_cloudevent_eventarc_sends(push_target, settings_env):
    settings_env(GOOGLE_CLOUD_PROJECT="proj-1", TASKS_TOPIC="tasks-t")
    recorder = push_target()
    task_id = uuid.uuid4()

    message_id = publish_task(task_id)

    assert len(recorder.calls) == 1
    headers, body, _ = recorder.calls[0]
    assert (
        headers["ce-type"] == PUBSUB_EVENT_TYPE == "google.cloud.pubsub.topic.v1.messagePublished"
    )
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == message_id
    assert headers["ce-source"] == "//pubsub.googleapis.com/projects/proj-1/topics/tasks-t"
    assert headers["Content-Type"] == "application/json"
    assert headers["ce-time"].endswith("Z")
    push = json.loads(body)
    assert push["subscription"] == "stratus-tasks-task-runner"
    assert push["message"]["messageId"] == message_id
    assert push["message"]["attributes"] == {"task_id": str(task_id)}
    assert json.loads(base64.b64decode(push["message"]["data"])) == {"task_id": str(task_id)}
    assert parse_task_event(headers["ce-type"], body).task_id == task_id


def test_local_publish_without_target_or_endpoint_keeps_the_message_in_the_outbox(caplog):
    caplog.set_level(logging.INFO, logger="shared_layer.pubsub")
    task_id = uuid.uuid4()

    message_id = publish_task(task_id)

    outbox = local_publisher().outbox
    assert [m.message_id for m in outbox] == [message_id]
    assert outbox[0].attributes == {"task_id": str(task_id)}
    assert outbox[0].headers["ce-id"] == message_id
    assert any("outbox" in r.getMessage() and message_id in r.getMessage() for r in caplog.records)


def test_deliver_outbox_pushes_kept_messages_once_a_target_is_registered(push_target):
    first, second = publish_task(uuid.uuid4()), publish_task(uuid.uuid4())
    recorder = push_target()

    assert local_publisher().deliver_outbox() == 2

    assert [h["ce-id"] for h, _, _ in recorder.calls] == [first, second]
    assert local_publisher().outbox == []


def test_message_ids_are_unique_strings():
    ids = [publish_task(uuid.uuid4()) for _ in range(200)]
    assert all(isinstance(i, str) and i.isdigit() for i in ids)
    assert len(set(ids)) == 200


def test_non_2xx_answers_are_redelivered_with_the_same_event_until_acknowledged(push_target):
    recorder = push_target([500, 503, 204])
    publisher = local_publisher()

    message_id = publish_task(uuid.uuid4())

    assert len(recorder.calls) == 3
    assert {h["ce-id"] for h, _, _ in recorder.calls} == {message_id}
    assert len({body for _, body, _ in recorder.calls}) == 1
    assert publisher.dead_letters == []


def test_a_target_that_raises_is_redelivered_like_a_500(push_target):
    recorder = push_target([RuntimeError("boom"), 200])
    local_publisher()
    publish_task(uuid.uuid4())
    assert len(recorder.calls) == 2


def test_a_message_never_acknowledged_gets_max_attempts_plus_two_deliveries(
    push_target, settings_env, caplog
):
    settings_env(TASK_MAX_ATTEMPTS="2")
    recorder = push_target([500] * 50)
    publisher = local_publisher()

    message_id = publish_task(uuid.uuid4())

    assert len(recorder.calls) == 4
    assert [m.message_id for m in publisher.dead_letters] == [message_id]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(message_id in r.getMessage() and "dead-lettered" in r.getMessage() for r in errors)


def test_redeliveries_back_off_exponentially(push_target):
    recorder = push_target([500, 500, 500, 204])
    local_publisher().backoff_initial = 0.02

    publish_task(uuid.uuid4())

    times = [t for _, _, t in recorder.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # tenacity's wait_exponential: initial * 2**n; sleeps never end early, so these are floors.
    assert gaps[0] >= 0.02
    assert gaps[1] >= 0.04
    assert gaps[2] >= 0.08


def test_thread_mode_returns_before_delivery_and_flush_waits_for_it(push_target, settings_env):
    settings_env(LOCAL_PUSH_MODE="thread")
    release = threading.Event()
    delivered: list[str] = []

    def slow_target(headers: dict[str, str], body: bytes) -> int:
        release.wait(5)
        delivered.append(headers["ce-id"])
        return 204

    set_local_push_target(slow_target)
    publisher = local_publisher()

    message_id = publish_task(uuid.uuid4())

    assert delivered == []  # publish did not wait for the subscriber
    assert publisher.flush(timeout=0.05) is False
    release.set()
    assert publisher.flush(timeout=5) is True
    assert delivered == [message_id]


class _PushEndpoint(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    answers: list[int] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = type(self).answers.pop(0) if type(self).answers else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def push_endpoint() -> Iterator[tuple[str, type[_PushEndpoint]]]:
    handler = type("Endpoint", (_PushEndpoint,), {"received": [], "answers": [500]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    server.shutdown()
    server.server_close()


def test_local_push_endpoint_receives_the_event_over_http_and_retries_a_500(
    push_endpoint, settings_env
):
    url, endpoint = push_endpoint
    settings_env(LOCAL_PUSH_ENDPOINT=url)
    local_publisher()
    task_id = uuid.uuid4()

    message_id = publish_task(task_id)

    assert len(endpoint.received) == 2  # the first answer was a 500
    headers, body = endpoint.received[-1]
    assert headers["ce-id"] == message_id
    assert headers["ce-type"] == PUBSUB_EVENT_TYPE
    assert parse_task_event(headers["ce-type"], body).task_id == task_id


# Google Cloud Pub/Sub, through the real client library and a gRPC server on loopback.


@pytest.fixture
def fake_pubsub(settings_env) -> Iterator[FakePubSub]:
    with FakePubSub() as fake:
        settings_env(
            PUBSUB_MODE="gcp", GOOGLE_CLOUD_PROJECT="proj-9", PUBSUB_EMULATOR_HOST=fake.host
        )
        yield fake


def test_gcp_publish_sends_the_task_message_to_the_topic(fake_pubsub):
    task_id = uuid.uuid4()

    message_id = publish_task(task_id)

    assert isinstance(get_publisher(), GcpPublisher)
    [message] = fake_pubsub.messages
    assert message.message_id == message_id
    assert message.topic == "projects/proj-9/topics/stratus-tasks"
    assert json.loads(message.data) == {"task_id": str(task_id)}
    assert message.attributes == {"task_id": str(task_id)}


def test_gcp_error_answer_becomes_upstream_error(fake_pubsub):
    fake_pubsub.fail_with = grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(UpstreamError, match="PermissionDenied") as caught:
        publish_task(uuid.uuid4())

    from google.api_core.exceptions import PermissionDenied

    assert isinstance(caught.value.__cause__, PermissionDenied)
    assert fake_pubsub.messages == []


def test_gcp_unreachable_server_becomes_upstream_error_within_the_timeout(fake_pubsub):
    publisher = get_publisher()
    assert isinstance(publisher, GcpPublisher)
    publisher.timeout = 1.0
    fake_pubsub.stop()

    started = time.monotonic()
    with pytest.raises(UpstreamError, match="stratus-tasks"):
        publish_task(uuid.uuid4())
    assert time.monotonic() - started < 10  # bounded, not the library's 600 s default


def test_gcp_mode_without_a_project_is_an_upstream_error_naming_the_variable(settings_env):
    settings_env(PUBSUB_MODE="gcp")
    with pytest.raises(UpstreamError, match="GOOGLE_CLOUD_PROJECT"):
        publish_task(uuid.uuid4())


def test_reset_publisher_rebuilds_it_from_changed_settings(settings_env):
    assert isinstance(get_publisher(), LocalPushPublisher)
    settings_env(PUBSUB_MODE="gcp", GOOGLE_CLOUD_PROJECT="p")
    assert isinstance(get_publisher(), GcpPublisher)


def test_the_agents_function_does_not_import_the_pubsub_client_until_it_publishes():
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('agents_main', 'functions/agents/main.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "from shared_layer.pubsub import get_publisher\n"
        "get_publisher()\n"
        "heavy = [m for m in sys.modules if m.startswith(('google.cloud.pubsub', 'grpc'))]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PUBSUB_MODE": "gcp", "GOOGLE_CLOUD_PROJECT": "p"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
