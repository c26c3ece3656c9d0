"""One writer: a workflow runs in one place at a time, however runs are started."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

from drivers.memory import MemoryDriver
from engine import (
    Worker,
    WorkflowBusyError,
    WorkflowContext,
    WorkflowState,
    run_workflow,
    start_workflow,
)
from tests.workers.helpers import running, wait_until

pytestmark = pytest.mark.anyio


def gated(calls: Counter[str], gate: anyio.Event, entered: anyio.Event) -> Any:
    async def workflow(ctx: WorkflowContext, _: Any) -> str:
        async def held() -> str:
            calls["held"] += 1
            entered.set()
            await gate.wait()
            return "done"

        return await ctx.step("held", held)

    return workflow


async def test_a_second_run_while_one_goes_on_is_refused_before_anything_runs(
    store: Any, wid: str
) -> None:
    calls: Counter[str] = Counter()
    gate, entered = anyio.Event(), anyio.Event()
    workflow = gated(calls, gate, entered)
    outcomes: list[Any] = []

    async def first() -> None:
        outcomes.append(await run_workflow(wid, workflow, None, store.driver(wid)).result())

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await entered.wait()
        before = await store.driver(wid).list(b"")
        with pytest.raises(WorkflowBusyError, match=repr(wid)):
            await run_workflow(wid, workflow, None, store.driver(wid)).result()
        assert await store.driver(wid).list(b"") == before  # nothing written by it
        gate.set()
    assert outcomes[0].output == "done" and calls["held"] == 1
    # The lease was released at the end: the next run replays, executing nothing.
    again = await run_workflow(wid, workflow, None, store.driver(wid)).result()
    assert again.output == "done" and calls["held"] == 1


async def test_a_run_beside_a_worker_that_runs_the_workflow_is_refused(
    store: Any, wid: str
) -> None:
    calls: Counter[str] = Counter()
    gate, entered = anyio.Event(), anyio.Event()
    workflow = gated(calls, gate, entered)
    await start_workflow(store, "gated", wid, None)
    worker = Worker(store, {"gated": workflow}, handle_signals=False, poll_interval=0.05)
    async with running(worker):
        await entered.wait()
        with pytest.raises(WorkflowBusyError):
            await run_workflow(wid, workflow, None, store.driver(wid)).result()
        gate.set()
        await wait_until(lambda: _state_is(store, wid, WorkflowState.COMPLETED), what="completed")
    assert calls["held"] == 1


async def test_a_worker_leaves_a_workflow_alone_while_a_run_holds_it(store: Any, wid: str) -> None:
    calls: Counter[str] = Counter()
    gate, entered = anyio.Event(), anyio.Event()
    workflow = gated(calls, gate, entered)
    await start_workflow(store, "gated", wid, None)  # due now, for any worker
    worker = Worker(store, {"gated": workflow}, handle_signals=False, poll_interval=0.05)
    async with anyio.create_task_group() as tg:
        handle = run_workflow(wid, workflow, None, store.driver(wid))
        tg.start_soon(handle.result)
        await entered.wait()  # the run holds the lease: now a worker comes
        async with running(worker):
            await anyio.sleep(0.3)  # it polls meanwhile and must not claim the workflow
            gate.set()
    assert calls["held"] == 1 and worker.stats.claimed == 0
    assert await _state_is(store, wid, WorkflowState.COMPLETED)


async def test_a_live_run_holds_the_workflow_while_it_waits(store: Any, wid: str) -> None:
    async def waits(ctx: WorkflowContext, _: Any) -> str:
        [go] = await ctx.queue.next("go")
        return str(go)

    async with run_workflow(wid, waits, None, store.driver(wid), mode="live") as live:
        await anyio.sleep(0.1)
        with pytest.raises(WorkflowBusyError):
            await run_workflow(wid, waits, None, store.driver(wid)).result()
        await live.message("go", "yes")
        assert (await live.result()).output == "yes"


async def test_two_runs_on_one_bare_driver_are_refused(wid: str) -> None:
    driver = MemoryDriver()
    calls: Counter[str] = Counter()
    gate, entered = anyio.Event(), anyio.Event()
    workflow = gated(calls, gate, entered)
    async with run_workflow(wid, workflow, None, driver) as first:
        await entered.wait()
        with pytest.raises(WorkflowBusyError):
            await run_workflow(wid, workflow, None, driver).result()
        gate.set()
    assert (await first.result()).output == "done" and calls["held"] == 1


async def test_an_abandoned_lease_expires_and_the_workflow_runs_again(store: Any, wid: str) -> None:
    async def quick(ctx: WorkflowContext, _: Any) -> int:
        return await ctx.step("one", lambda: 1)

    lease = await store.claim(wid, "a-process-that-died", 0.2, "quick")
    assert lease is not None
    with pytest.raises(WorkflowBusyError):
        await run_workflow(wid, quick, None, store.driver(wid)).result()
    await anyio.sleep(0.3)
    assert (await run_workflow(wid, quick, None, store.driver(wid)).result()).output == 1


async def _state_is(store: Any, wid: str, state: WorkflowState) -> bool:
    row = await store.workflow_row(wid)
    return row is not None and row.state == state.value
