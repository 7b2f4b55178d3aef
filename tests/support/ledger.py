"""Usage put straight into the ledger, as submissions and runs would have left it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared_layer.database import session_scope
from shared_layer.models import UsageEntry


def spend(
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    *,
    tokens: int = 0,
    at: datetime | None = None,
) -> None:
    """One task submitted and, when `tokens`, that many tokens spent on it, at `at` (now)."""
    at = at or datetime.now(UTC)
    task_id = uuid.uuid4()
    common = {"user_id": user_id, "agent_id": agent_id, "task_id": task_id, "created_at": at}
    with session_scope() as session:
        session.add(UsageEntry(kind="task", tasks=1, **common))
        if tokens:
            session.add(UsageEntry(kind="model", prompt_tokens=tokens, model="m", **common))
