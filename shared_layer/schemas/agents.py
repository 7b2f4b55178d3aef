"""Bodies of the agents function: agents, tasks and the 202 a task submission answers.

An agent setting left out (or null) means "use the environment default" (see
`shared_layer.agent_config`); on PATCH, a field left out is unchanged and an explicit null
resets it to that default. Numbers are strict: `"0.5"` is not a temperature. The settings'
limits are not here: they are the runtime's (`AgentRunConfig`), which the service applies to
the agent it would store, stored values and defaults included (services/agents.py).

The public views read records (`shared_layer.services.tasks`) or ORM rows alike, through the
attributes they need (`TaskView`); nothing here imports the models or SQLAlchemy.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from shared_layer.agent_config import AgentSystemName
from shared_layer.config import get_settings
from shared_layer.schemas.common import Integer, PageQuery, StrictBody

AgentName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
# The settings as JSON must give them; their limits are AgentRunConfig's (see above).
ModelId = str
Temperature = StrictFloat | StrictInt
MaxTokens = Integer
TimeoutSeconds = Integer
SystemPrompt = str
Description = Annotated[str, Field(max_length=2000)]

# The settings an agent may override; the services accept exactly these as changes.
AGENT_SETTINGS = (
    "description",
    "system",
    "model",
    "system_prompt",
    "temperature",
    "max_tokens",
    "timeout_seconds",
)


class AgentCreate(StrictBody):
    name: AgentName
    description: Description | None = None
    system: AgentSystemName | None = None
    model: ModelId | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    timeout_seconds: TimeoutSeconds | None = None


class AgentUpdate(StrictBody):
    """A PATCH: only the fields present change; null resets a setting to the default."""

    name: AgentName | None = None
    description: Description | None = None
    system: AgentSystemName | None = None
    model: ModelId | None = None
    system_prompt: SystemPrompt | None = None
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    timeout_seconds: TimeoutSeconds | None = None

    @model_validator(mode="after")
    def _name_not_null(self) -> AgentUpdate:
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be null; an agent always has a name")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the request named, with their new values (None = reset)."""
        return self.model_dump(exclude_unset=True)


class AgentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    system: AgentSystemName | None
    model: str | None
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    timeout_seconds: int | None
    created_at: datetime
    updated_at: datetime


class TaskCreate(StrictBody):
    input: str = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _within_limit(cls, value: str) -> str:
        limit = get_settings().task_max_input_chars
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters; the limit is {limit}")
        return value


TaskStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TaskStepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    position: int
    kind: str
    content: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    duration_ms: float
    created_at: datetime


class TaskView(Protocol):
    """What the public views read of a task (a `TaskRecord`, or the ORM's `Task`)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def agent_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> str: ...
    @property
    def input(self) -> str: ...
    @property
    def result(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...


class TaskPublic(BaseModel):
    id: uuid.UUID
    agent_id: uuid.UUID
    status: TaskStatusName
    input: str
    result: str | None
    error: str | None
    provider: str | None
    model: str | None
    usage: Usage
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[TaskStepPublic] | None = None

    @classmethod
    def from_task(cls, task: TaskView, *, steps: Sequence[object] | None = None) -> TaskPublic:
        """The public view; `steps` only where the caller loaded them (GET /tasks/{id})."""
        return cls(
            id=task.id,
            agent_id=task.agent_id,
            status=task.status,  # one of TaskStatusName: the CHECK constraint holds it
            input=task.input,
            result=task.result,
            error=task.error,
            provider=task.provider,
            model=task.model,
            usage=Usage(
                prompt_tokens=task.prompt_tokens,
                completion_tokens=task.completion_tokens,
                total_tokens=task.total_tokens,
            ),
            attempts=task.attempts,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            steps=None if steps is None else [TaskStepPublic.model_validate(s) for s in steps],
        )


class TaskLinks(BaseModel):
    self: str
    cancel: str
    agent: str


class TaskAccepted(BaseModel):
    """The 202 body: the task is stored and queued; poll `links.self` for its outcome."""

    id: uuid.UUID
    agent_id: uuid.UUID
    status: Literal["queued"] = "queued"
    links: TaskLinks

    @classmethod
    def for_task(cls, task: TaskView) -> TaskAccepted:
        return cls(
            id=task.id,
            agent_id=task.agent_id,
            links=TaskLinks(
                self=f"/tasks/{task.id}",
                cancel=f"/tasks/{task.id}/cancel",
                agent=f"/agents/{task.agent_id}",
            ),
        )


class TaskListQuery(PageQuery):
    """`GET /tasks` query: paging plus optional filters; unknown parameters are errors."""

    status: TaskStatusName | None = None
    agent_id: uuid.UUID | None = None
