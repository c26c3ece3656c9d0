"""ctx.removed: a placeholder holding the position of an operation deleted from the code."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine import HistoryDivergedError, Loop, LoopResult, WorkflowContext, run_workflow
from tests.support.workflows import Calls

pytestmark = pytest.mark.anyio

TYPES = ["step", "sleep", "message", "join", "race", "loop"]


def original_operation(kind: str, calls: Calls) -> Callable[[WorkflowContext], Awaitable[Any]]:
    """The operation named "old" that a later version of the code deletes."""

    async def branch(bctx: WorkflowContext) -> Any:
        return await bctx.step("inside", calls.fn("old.inside"))

    async def body(lctx: WorkflowContext, i: int) -> LoopResult:
        await lctx.step("inside", calls.fn(f"old.inside{i}"))
        return Loop.break_(i) if i == 1 else Loop.continue_(i + 1)

    async def run(ctx: WorkflowContext) -> Any:
        if kind == "step":
            return await ctx.step("old", calls.fn("old"))
        if kind == "sleep":
            return await ctx.sleep("old", 0)
        if kind == "message":
            return await ctx.queue.next("old", timeout=0)
        if kind == "join":
            return await ctx.join("old", {"a": branch, "b": branch})
        if kind == "race":
            return await ctx.race("old", {"a": branch})
        return await ctx.loop("old", body, state=0)

    return run


def version(
    calls: Calls, old: Callable[[WorkflowContext], Awaitable[Any]] | None, kind: str
) -> Any:
    """``old`` given: the original code; None: the code with the operation removed."""

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        first = await ctx.step("first", calls.fn("first"))
        if old is not None:
            await old(ctx)
        else:
            await ctx.removed("old", kind)
        after = await ctx.step("after", calls.fn("after"))
        await ctx.sleep("later", 3600)
        return [first, after]

    return workflow


@pytest.mark.parametrize("kind", TYPES)
async def test_placeholder_replays_history_of_each_type(driver: Any, wid: str, kind: str) -> None:
    calls = Calls()
    first = await run_workflow(
        wid, version(calls, original_operation(kind, calls), kind), None, driver
    ).result()
    assert first.state == "sleeping"
    before = dict(calls.counts)
    again = await run_workflow(wid, version(calls, None, kind), None, driver).result()
    assert again.state == "sleeping"
    assert dict(calls.counts) == before, "the removed operation's position replayed"


@pytest.mark.parametrize("kind", TYPES)
async def test_fresh_run_records_a_placeholder(driver: Any, wid: str, kind: str) -> None:
    calls = Calls()
    workflow = version(calls, None, kind)
    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    assert calls["first"] == 1 and calls["after"] == 1

    # The placeholder holds its position: dropping it now is a divergence.
    async def without(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.step("first", calls.fn("first"))
        await ctx.step("after", calls.fn("after"))

    with pytest.raises(HistoryDivergedError, match=r"removed 'old'"):
        await run_workflow(wid, without, None, driver).result()


async def test_placeholder_of_the_wrong_type_diverges(driver: Any, wid: str) -> None:
    calls = Calls()
    await run_workflow(
        wid, version(calls, original_operation("step", calls), "step"), None, driver
    ).result()
    with pytest.raises(HistoryDivergedError, match=r"old.*holds step 'old'.*removed 'old'"):
        await run_workflow(wid, version(calls, None, "sleep"), None, driver).result()
    assert calls["after"] == 1


async def test_placeholder_with_another_name_diverges(driver: Any, wid: str) -> None:
    calls = Calls()
    await run_workflow(
        wid, version(calls, original_operation("loop", calls), "loop"), None, driver
    ).result()

    async def renamed(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.step("first", calls.fn("first"))
        await ctx.removed("older", "loop")

    with pytest.raises(HistoryDivergedError, match="holds loop 'old'"):
        await run_workflow(wid, renamed, None, driver).result()


async def test_placeholder_inside_a_branch(driver: Any, wid: str) -> None:
    calls = Calls()

    def workflow_with(removed: bool) -> Any:
        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            async def a(bctx: WorkflowContext) -> Any:
                if removed:
                    await bctx.removed("gone", "step")
                else:
                    await bctx.step("gone", calls.fn("gone"))
                return await bctx.step("kept", calls.fn("kept"))

            joined = await ctx.join("j", {"a": a})
            await ctx.sleep("later", 3600)
            return joined

        return workflow

    await run_workflow(wid, workflow_with(False), None, driver).result()
    assert (await run_workflow(wid, workflow_with(True), None, driver).result()).state == "sleeping"
    assert dict(calls.counts) == {"gone": 1, "kept": 1}


async def test_unknown_original_type_is_rejected(driver: Any, wid: str) -> None:
    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        with pytest.raises(ValueError, match="original_type"):
            ctx.removed("old", "checkpoint")
        return "ok"

    assert (await run_workflow(wid, workflow, None, driver).result()).output == "ok"
