"""What an agent does with a request: the `simple` and `enhanced` agent systems.

`simple` makes one model call (system prompt, then the request). `enhanced` makes two: a short
plan, then the answer written from that plan, both with the agent's recent conversation as
memory. Each model call becomes a `StepRecord` that the task stores. This module knows nothing
of the database or of transactions: a runner calls it between its claim and its write.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared_layer.agent_config import AgentRunConfig
from shared_layer.openai_config import ChatResult, create_chat_completion

__all__ = ["PLAN_INSTRUCTION", "AgentRun", "StepRecord", "run_agent"]

Message = dict[str, str]

PREVIEW_CHARS = 200
PLAN_INSTRUCTION = (
    "Before answering, write a short numbered plan (at most five steps) for answering the "
    "user's request. Reply with the plan only."
)


@dataclass(frozen=True)
class StepRecord:
    """One thing the agent did, as a task stores it."""

    kind: str
    content: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0


@dataclass(frozen=True)
class AgentRun:
    answer: ChatResult
    steps: list[StepRecord]


def run_agent(
    *,
    config: AgentRunConfig,
    request: str,
    memory: Sequence[Message] = (),
    user_id: uuid.UUID | None = None,
    before_call: Callable[[int], None] | None = None,
    steps: list[StepRecord] | None = None,
) -> AgentRun:
    """Answer `request` as the configured system does; model errors propagate unchanged
    (`UpstreamError` is retryable, `LLMRequestError` is not).

    `before_call(tokens_used_so_far)` runs before each model call and may raise to stop the
    run there (the task runner checks the plan's quota with it). `steps`, when given, receives
    each model call's step as soon as the call returns (the run's steps are that list): a
    caller whose run failed at a later call still knows what the earlier ones spent.
    """
    steps = [] if steps is None else steps
    prompt = config.system_prompt
    user: Message = {"role": "user", "content": request}

    def call_model(purpose: str, messages: list[Message]) -> ChatResult:
        if before_call is not None:
            before_call(sum(s.prompt_tokens + s.completion_tokens for s in steps))
        result = _call(config, messages, user_id)
        steps.append(_step(purpose, messages, result))
        return result

    if config.system == "simple":
        answer = call_model("answer", [{"role": "system", "content": prompt}, user])
        return AgentRun(answer, steps)
    history = list(memory)
    plan_messages = [
        {"role": "system", "content": f"{prompt}\n\n{PLAN_INSTRUCTION}"},
        *history,
        user,
    ]
    plan = call_model("plan", plan_messages)
    answer_messages = [
        {"role": "system", "content": f"{prompt}\n\nYour plan:\n{plan.content}"},
        *history,
        user,
    ]
    answer = call_model("answer", answer_messages)
    return AgentRun(answer, steps)


def _call(config: AgentRunConfig, messages: list[Message], user_id: uuid.UUID | None) -> ChatResult:
    return create_chat_completion(
        messages=messages,
        model=config.model,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        user_id=user_id,
        timeout=config.timeout_seconds,
    )


def _step(purpose: str, messages: list[Message], result: ChatResult) -> StepRecord:
    """An `llm_call` step: what was sent (summarised) and what came back."""
    summary = [
        {
            "role": m["role"],
            "chars": len(m["content"]),
            "preview": clip(m["content"], PREVIEW_CHARS),
        }
        for m in messages
    ]
    return StepRecord(
        kind="llm_call",
        content={
            "purpose": purpose,
            "messages": summary,
            "answer": result.content,
            "provider": result.provider,
            "model": result.model,
            "finish_reason": result.finish_reason,
        },
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        duration_ms=round(result.duration_ms, 3),
    )


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
