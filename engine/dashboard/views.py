"""The pages that read: the workflow list with counts per state, one workflow, and the JSON
the pages poll to stay live.

Everything is read through ``engine.Client`` (``list`` and ``describe``), as an app would.
The counts come from one listing of up to ``COUNT_LIMIT`` workflows, which also gives the
filtered rows and the names to filter by; past that the counts say they are a floor.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.client import Client
from engine.dashboard import history
from engine.dashboard.pages import STATES, dashboard_of, error_page, render, workflow_url
from engine.describe import WorkflowDescription, WorkflowInfo
from engine.errors import CorruptedRecordError
from engine.state import WorkflowState

COUNT_LIMIT = 10_000  # workflows counted per request; the store has no count of its own
DEFAULT_ROWS = 100
MAX_ROWS = 1_000

FLASHES = {
    "message": "Message sent. It is kept until the workflow receives it.",
    "wake": "Woken: the workflow is due now and the next worker to look will run it.",
    "cancel": "Cancelled: the workflow will not run again.",
    "recover": "Recovered: failed steps get fresh attempts and a run is scheduled.",
}


class BadQuery(ValueError):
    """Raised when a query parameter cannot be used; the page says which and why."""


@dataclass(frozen=True)
class Overview:
    """What the list shows: counts per state (for the ``name`` filter), every registered name,
    and the rows that pass both filters. ``complete`` is False when ``COUNT_LIMIT`` was hit."""

    counts: dict[str, int]
    total: int
    names: list[str]
    rows: list[WorkflowInfo]
    complete: bool


async def overview(client: Client, state: str | None, name: str | None, limit: int) -> Overview:
    everything = await client.list(limit=COUNT_LIMIT)
    complete = len(everything) < COUNT_LIMIT
    named = [info for info in everything if name is None or info.name == name]
    tally = Counter(info.state.value for info in named)
    if complete:
        rows = [info for info in named if state is None or info.state == state][:limit]
    else:  # the store filters what one listing could not hold
        rows = await client.list(state=state, name=name, limit=limit)
    return Overview(
        {each: tally.get(each, 0) for each in STATES},
        len(named),
        sorted({info.name for info in everything if info.name}),
        rows,
        complete,
    )


def filters(request: Request) -> tuple[str | None, str | None, int]:
    """``state``, ``name`` and ``limit`` from the query string (empty means no filter)."""
    query = request.query_params
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise BadQuery(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
    name = query.get("name") or None
    raw = query.get("limit") or str(DEFAULT_ROWS)
    try:
        limit = int(raw)
    except ValueError:
        raise BadQuery(f"limit must be a whole number, got {raw!r}") from None
    if not 1 <= limit <= MAX_ROWS:
        raise BadQuery(f"limit must be between 1 and {MAX_ROWS}, got {limit}")
    return state, name, limit


async def list_page(request: Request) -> Response:
    try:
        state, name, limit = filters(request)
    except BadQuery as exc:
        return error_page(request, 400, "Bad filter", str(exc))
    found = await overview(dashboard_of(request).client, state, name, limit)
    context = {"overview": found, "state": state, "name": name, "limit": limit}
    return render(request, "list.html", context)


async def list_json(request: Request) -> Response:
    try:
        state, name, limit = filters(request)
    except BadQuery as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    found = await overview(dashboard_of(request).client, state, name, limit)
    return JSONResponse(
        {
            "counts": found.counts,
            "total": found.total,
            "complete": found.complete,
            "workflows": [_row(info) for info in found.rows],
        }
    )


async def workflow_page(request: Request) -> Response:
    workflow_id: str = request.path_params["workflow_id"]
    found = await _describe(request, workflow_id)
    if isinstance(found, Response):
        return found
    desc, indexed = found
    root = history.tree(desc.history)
    context = {
        "desc": desc,
        "indexed": indexed,
        "tree": root,
        "timeline": history.timeline(root),
        "omitted": max(len(desc.history) - history.MAX_ENTRIES, 0),
        "waits": waits(desc),
        "flash": FLASHES.get(request.query_params.get("done", "")),
        "token": dashboard_of(request).token,
    }
    return render(request, "workflow.html", context)


async def workflow_json(request: Request) -> Response:
    workflow_id: str = request.path_params["workflow_id"]
    try:
        desc, _ = await described(dashboard_of(request).client, workflow_id)
    except KeyError:
        return JSONResponse({"error": f"no workflow {workflow_id!r} in this store"}, 404)
    return JSONResponse(
        {
            **_row(desc),
            "waiting_for_messages": desc.waiting_for_messages,
            "history_size": len(desc.history),
        }
    )


def waits(desc: WorkflowDescription) -> list[tuple[str, float | None]]:
    """What the workflow waits for, in words, each with the time it is due when it has one;
    empty when it waits for nothing."""
    state = desc.state.value
    if state == "pending":
        return [("a worker to run it: it is due", desc.wake_at)]
    if state == "running":
        return [("nothing: a run holds it now", None)]
    if state == "rolling_back":
        return [("its rollback handlers to run", desc.wake_at)]
    if state != "sleeping":
        return []
    found: list[tuple[str, float | None]] = []
    names = desc.waiting_for_messages or []
    if "*" in names:
        found.append(("a message of any name", None))
    elif names:
        found.append(("a message named " + " or ".join(repr(name) for name in names), None))
    if desc.wake_at is not None:
        found.append(("its alarm (a sleep, a retry or a deadline)", desc.wake_at))
    if not found:
        found.append(("a wake-up: nothing is scheduled", None))
    return found


async def described(client: Client, workflow_id: str) -> tuple[WorkflowDescription, str | None]:
    """The workflow's description with the state its own record holds, and the state the
    store's index lists when that differs (None when it agrees).

    The index lags behind ``recover``, which writes only the workflow's record: it lists a
    recovered workflow as ``failed`` until a worker claims it. ``running`` is known only to
    the index (a live lease), so it stands.
    """
    desc = await client.describe(workflow_id)
    if desc.state == WorkflowState.RUNNING:
        return desc, None
    recorded = await client.handle(workflow_id).get_state()
    if recorded == desc.state:
        return desc, None
    return replace(desc, state=recorded), desc.state.value


async def _describe(
    request: Request, workflow_id: str
) -> tuple[WorkflowDescription, str | None] | Response:
    try:
        return await described(dashboard_of(request).client, workflow_id)
    except KeyError:
        detail = f"There is no workflow {workflow_id!r} in this store."
        return error_page(request, 404, "Unknown workflow", detail)
    except CorruptedRecordError as exc:
        return error_page(request, 500, f"Workflow {workflow_id!r} cannot be read", str(exc))


def _row(info: WorkflowInfo | WorkflowDescription) -> dict[str, Any]:
    return {
        "workflow_id": info.workflow_id,
        "name": info.name,
        "state": info.state.value,
        "wake_at": info.wake_at,
        "updated_at": info.updated_at,
        "url": workflow_url(info.workflow_id),
    }
