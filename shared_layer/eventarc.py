"""Task messages, and the CloudEvents that Eventarc delivers for them.

A task message is a Pub/Sub message whose data is `{"task_id": "<uuid>"}` (JSON, UTF-8) and
whose attributes carry `task_id` too. Eventarc wraps each Pub/Sub message in a CloudEvent of
type `google.cloud.pubsub.topic.v1.messagePublished`; its data is the push body:
`{"message": {"data": <base64>, "messageId": ..., "publishTime": ..., "attributes": {...}},
"subscription": ...}`. The local push emulation builds exactly that (binary content mode, as
Eventarc sends it), and `task_runner` accepts it in binary or structured mode.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import from_json

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


def task_message(task_id: uuid.UUID) -> tuple[bytes, dict[str, str]]:
    """The data and attributes to publish for a task."""
    return json.dumps({"task_id": str(task_id)}).encode(), {"task_id": str(task_id)}


def push_body(
    *,
    data: bytes,
    attributes: dict[str, str],
    message_id: str,
    subscription: str,
    publish_time: datetime | None = None,
) -> dict[str, Any]:
    published = (publish_time or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": published,
            "publish_time": published,
            "attributes": attributes,
        },
        "subscription": subscription,
    }


def binary_cloudevent(
    *,
    data: bytes,
    attributes: dict[str, str],
    message_id: str,
    project: str,
    topic: str,
    subscription: str,
    publish_time: datetime | None = None,
) -> tuple[dict[str, str], bytes]:
    """HTTP headers and body of the binary-mode CloudEvent Eventarc sends for one message."""
    published = publish_time or datetime.now(UTC)
    body = push_body(
        data=data,
        attributes=attributes,
        message_id=message_id,
        subscription=subscription,
        publish_time=published,
    )
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": message_id,
        "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}",
        "ce-type": PUBSUB_EVENT_TYPE,
        "ce-time": published.isoformat().replace("+00:00", "Z"),
    }
    return headers, json.dumps(body).encode()


def structured_cloudevent(
    *,
    data: bytes,
    attributes: dict[str, str],
    message_id: str,
    project: str,
    topic: str,
    subscription: str,
) -> tuple[dict[str, str], bytes]:
    """The same event in structured content mode (`application/cloudevents+json`)."""
    headers, body = binary_cloudevent(
        data=data,
        attributes=attributes,
        message_id=message_id,
        project=project,
        topic=topic,
        subscription=subscription,
    )
    envelope = {
        "specversion": "1.0",
        "id": headers["ce-id"],
        "source": headers["ce-source"],
        "type": headers["ce-type"],
        "time": headers["ce-time"],
        "datacontenttype": "application/json",
        "data": json.loads(body),
    }
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(envelope).encode()


@dataclass(frozen=True)
class TaskDelivery:
    task_id: uuid.UUID
    message_id: str
    publish_time: datetime | None


class NotATaskMessage(ValueError):
    """The event is not one of ours: acknowledge it (log it), never retry it."""


def parse_task_event(event_type: str | None, data: Any) -> TaskDelivery:
    """The task a CloudEvent's data names; `NotATaskMessage` saying why when it names none."""
    if event_type != PUBSUB_EVENT_TYPE:
        raise NotATaskMessage(f"unexpected event type {event_type!r}")
    if isinstance(data, bytes | str):
        try:  # depth-limited, unlike json.loads, whose recursion a deep body exhausts
            data = from_json(data, allow_inf_nan=False)
        except ValueError as exc:
            raise NotATaskMessage("event data is not JSON") from exc
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict):
        raise NotATaskMessage("event data has no Pub/Sub message")
    message_id = str(message.get("messageId") or message.get("message_id") or "")
    try:
        payload = from_json(
            base64.b64decode(message.get("data") or "", validate=True), allow_inf_nan=False
        )
        task_id = uuid.UUID(str(payload["task_id"]))
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise NotATaskMessage(f"message {message_id or '?'} does not name a task") from exc
    published = message.get("publishTime") or message.get("publish_time")
    publish_time = None
    if isinstance(published, str):
        try:
            publish_time = datetime.fromisoformat(published.replace("Z", "+00:00"))
        except ValueError:
            publish_time = None
    return TaskDelivery(task_id=task_id, message_id=message_id, publish_time=publish_time)
