"""agents: agent CRUD, and task submit / get / list / cancel."""

from __future__ import annotations

import logging
import uuid

import flask
import functions_framework

from shared_layer.http import ApiRequest, Router, json_response
from shared_layer.schemas.agents import (
    AgentCreate,
    AgentPublic,
    AgentUpdate,
    TaskAccepted,
    TaskCreate,
    TaskListQuery,
    TaskPublic,
)
from shared_layer.schemas.common import Page, PageQuery
from shared_layer.services import agents as agent_service
from shared_layer.services import quotas
from shared_layer.services import tasks as task_service
from shared_layer.sql import transaction

logger = logging.getLogger(__name__)
router = Router("agents")


def _agent_id(req: ApiRequest) -> uuid.UUID:
    return req.uuid_param("agent_id", "agent")


def _task_id(req: ApiRequest) -> uuid.UUID:
    return req.uuid_param("task_id", "task")


@router.route("POST", "/agents", auth=True)
def create_agent(req: ApiRequest) -> tuple[AgentPublic, int]:
    body = req.parse(AgentCreate)
    with transaction() as db:
        quotas.enforce_agent_creation(db, user_id=req.caller)  # the plan's agent count
        agent = agent_service.create_agent(db, owner_id=req.caller, **body.model_dump())
        return AgentPublic.model_validate(agent), 201


@router.route("GET", "/agents", auth=True)
def list_agents(req: ApiRequest) -> Page[AgentPublic]:
    query = req.query(PageQuery)
    with transaction() as db:
        items, total = agent_service.list_agents(
            db, owner_id=req.caller, limit=query.limit, offset=query.offset
        )
        return Page[AgentPublic].of(
            [AgentPublic.model_validate(a) for a in items], total=total, query=query
        )


@router.route("GET", "/agents/{agent_id}", auth=True)
def get_agent(req: ApiRequest) -> AgentPublic:
    agent_id = _agent_id(req)
    with transaction() as db:
        agent = agent_service.get_agent(db, owner_id=req.caller, agent_id=agent_id)
        return AgentPublic.model_validate(agent)


@router.route("PATCH", "/agents/{agent_id}", auth=True)
def update_agent(req: ApiRequest) -> AgentPublic:
    agent_id = _agent_id(req)
    body = req.parse(AgentUpdate)
    with transaction() as db:
        agent = agent_service.update_agent(
            db, owner_id=req.caller, agent_id=agent_id, changes=body.changes()
        )
        return AgentPublic.model_validate(agent)


@router.route("DELETE", "/agents/{agent_id}", auth=True)
def delete_agent(req: ApiRequest) -> None:
    agent_id = _agent_id(req)
    with transaction() as db:
        agent_service.delete_agent(db, owner_id=req.caller, agent_id=agent_id)


@router.route("POST", "/agents/{agent_id}/tasks", auth=True)
def submit_task(req: ApiRequest) -> flask.Response:
    """Store the task `queued` and commit, then publish its id: 202 with the task id.

    The commit comes first so task_runner never receives an id it cannot read. If publishing
    fails, the task stays queued and the failure is logged, but the answer is still 202: the
    task exists, and the lease reaper (metrics_cleanup) republishes queued tasks it finds.
    """
    agent_id = _agent_id(req)
    body = req.parse(TaskCreate)
    with transaction() as db:
        task = task_service.submit_task(
            db, owner_id=req.caller, agent_id=agent_id, input=body.input
        )
        accepted = TaskAccepted.for_task(task)
    _publish(accepted.id)
    response = json_response(accepted, 202)
    response.headers["Location"] = accepted.links.self
    return response


def _publish(task_id: uuid.UUID) -> None:
    from shared_layer.pubsub import publish_task  # only a submission publishes (tenacity, …)

    try:
        publish_task(task_id)
    except Exception:  # the task is stored; a failed publish must not turn into an error reply
        logger.exception(
            "task %s stored but not published; it stays queued for the reaper to republish",
            task_id,
            extra={"task_id": str(task_id)},
        )


@router.route("GET", "/tasks", auth=True)
def list_tasks(req: ApiRequest) -> Page[TaskPublic]:
    query = req.query(TaskListQuery)
    with transaction() as db:
        items, total = task_service.list_tasks(
            db,
            owner_id=req.caller,
            limit=query.limit,
            offset=query.offset,
            status=query.status,
            agent_id=query.agent_id,
        )
        return Page[TaskPublic].of(
            [TaskPublic.from_task(t) for t in items], total=total, query=query
        )


@router.route("GET", "/tasks/{task_id}", auth=True)
def get_task(req: ApiRequest) -> TaskPublic:
    task_id = _task_id(req)
    with transaction() as db:
        task = task_service.get_task(db, owner_id=req.caller, task_id=task_id)
        return TaskPublic.from_task(task, steps=task.steps)


@router.route("POST", "/tasks/{task_id}/cancel", auth=True)
def cancel_task(req: ApiRequest) -> TaskPublic:
    task_id = _task_id(req)
    with transaction() as db:
        task = task_service.cancel_task(db, owner_id=req.caller, task_id=task_id)
        return TaskPublic.from_task(task)


@functions_framework.http
def agents(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
