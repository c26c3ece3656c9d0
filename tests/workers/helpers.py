"""In-process helpers for worker tests: run a worker in the background, wait for states."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from engine import Worker, WorkflowState, run_workflow


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run the workers in the background; stop them (gracefully) and wait on exit."""
    async with anyio.create_task_group() as tg:
        for worker in workers:
            tg.start_soon(worker.run)
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.02)


async def state_of(store: Any, workflow_id: str) -> WorkflowState:
    return await run_workflow(workflow_id, _never, None, store.driver(workflow_id)).get_state()


async def output_of(store: Any, workflow_id: str) -> Any:
    return await run_workflow(workflow_id, _never, None, store.driver(workflow_id)).get_output()


async def send(store: Any, workflow_id: str, name: str, data: Any) -> None:
    await run_workflow(workflow_id, _never, None, store.driver(workflow_id)).message(name, data)


async def all_in_state(store: Any, ids: list[str], state: str) -> bool:
    listed = set(await store.list_workflows(state, limit=100_000))
    return all(wid in listed for wid in ids)


async def _never(ctx: Any, value: Any) -> Any:  # a handle used only to read or send
    raise AssertionError("this handle is never run")
