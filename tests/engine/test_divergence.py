"""Replay validation: renamed, reordered, inserted, removed and re-typed operations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine import (
    EntryInProgressError,
    HistoryDivergedError,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from tests.support.workflows import Calls

pytestmark = pytest.mark.anyio

Body = Callable[[WorkflowContext, Calls], Awaitable[None]]


async def v1(ctx: WorkflowContext, calls: Calls) -> None:
    await ctx.step("a", calls.fn("a"))
    await ctx.step("b", calls.fn("b"))
    await ctx.step("c", calls.fn("c"))
    await ctx.queue.next("hold")


async def _record_v1_then_run(driver: Any, wid: str, body: Body) -> tuple[Calls, str]:
    """Record history with ``v1``, run ``body`` on it; return its step calls and the error."""
    first = Calls()

    async def wf1(ctx: WorkflowContext, _: None) -> None:
        await v1(ctx, first)

    await run_workflow(wid, wf1, None, driver).result()
    calls = Calls()

    async def wf2(ctx: WorkflowContext, _: None) -> None:
        await body(ctx, calls)

    with pytest.raises(HistoryDivergedError) as info:
        await run_workflow(wid, wf2, None, driver).result()
    return calls, str(info.value)


async def renamed(ctx: WorkflowContext, calls: Calls) -> None:
    await ctx.step("a", calls.fn("a"))
    await ctx.step("b2", calls.fn("b2"))


async def reordered(ctx: WorkflowContext, calls: Calls) -> None:
    await ctx.step("b", calls.fn("b"))


async def inserted(ctx: WorkflowContext, calls: Calls) -> None:
    await ctx.step("a", calls.fn("a"))
    await ctx.step("new", calls.fn("new"))


async def removed_in_middle(ctx: WorkflowContext, calls: Calls) -> None:
    await ctx.step("a", calls.fn("a"))
    await ctx.step("c", calls.fn("c"))


async def retyped(ctx: WorkflowContext, calls: Calls) -> None:
    await ctx.step("a", calls.fn("a"))
    await ctx.sleep("b", 0)


@pytest.mark.parametrize(
    ("body", "asked", "held"),
    [
        (renamed, "step 'b2'", "step 'b'"),
        (reordered, "step 'b'", "step 'a'"),
        (inserted, "step 'new'", "step 'b'"),
        (removed_in_middle, "step 'c'", "step 'b'"),
        (retyped, "sleep 'b'", "step 'b'"),
    ],
)
async def test_divergence_is_raised_before_new_code_runs(
    driver: Any, wid: str, body: Body, asked: str, held: str
) -> None:
    calls, message = await _record_v1_then_run(driver, wid, body)
    assert f"history holds {held}" in message and f"the code asked for {asked}" in message
    assert repr(wid) in message
    assert sum(calls.counts.values()) == 0  # nothing of the new code executed


async def test_an_operation_removed_at_the_end_of_a_scope_is_caught(driver: Any, wid: str) -> None:
    async def shorter(ctx: WorkflowContext, calls: Calls) -> None:
        await ctx.step("a", calls.fn("a"))
        await ctx.step("b", calls.fn("b"))
        await ctx.step("c", calls.fn("c"))

    _, message = await _record_v1_then_run(driver, wid, shorter)
    assert "at hold" in message and "ended the scope without it" in message


async def test_removed_placeholders_keep_old_history_valid(driver: Any, wid: str) -> None:
    first = Calls()

    async def wf1(ctx: WorkflowContext, _: None) -> None:
        await v1(ctx, first)

    await run_workflow(wid, wf1, None, driver).result()
    calls = Calls()

    async def wf2(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("a", calls.fn("a"))
        await ctx.removed("b", "step")
        await ctx.step("c", calls.fn("c"))
        [go] = await ctx.queue.next("hold")
        return str(go)

    handle = run_workflow(wid, wf2, None, driver)
    await handle.message("go", "ok")
    assert (await handle.result()).output == "ok"
    assert sum(calls.counts.values()) == 0


async def test_removed_with_the_wrong_original_type_diverges(driver: Any, wid: str) -> None:
    async def wf1(ctx: WorkflowContext, _: None) -> None:
        await v1(ctx, Calls())

    await run_workflow(wid, wf1, None, driver).result()

    async def wf2(ctx: WorkflowContext, _: None) -> None:
        await ctx.removed("a", "sleep")

    with pytest.raises(HistoryDivergedError, match="history holds step 'a'"):
        await run_workflow(wid, wf2, None, driver).result()


async def test_a_bad_original_type_is_rejected(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.removed("old", "checkpoint")

    with pytest.raises(ValueError, match="original_type must be one of"):
        await run_workflow(wid, wf, None, driver).result()


async def test_an_unawaited_operation_is_caught_at_the_next_one(driver: Any, wid: str) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> None:
        pending = ctx.step("forgot-await", calls.fn("forgot"))
        try:
            await ctx.step("next", calls.fn("next"))
        finally:
            pending.close()

    with pytest.raises(EntryInProgressError, match="step 'forgot-await' was not awaited"):
        await run_workflow(wid, wf, None, driver).result()
    assert sum(calls.counts.values()) == 0


async def test_an_unawaited_operation_at_the_end_of_the_workflow_is_caught(
    driver: Any, wid: str
) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        ctx.step("forgot", lambda: 1).close()

    with pytest.raises(EntryInProgressError, match="ended while step 'forgot' was not awaited"):
        await run_workflow(wid, wf, None, driver).result()


async def test_a_divergence_changes_nothing_and_matching_code_resumes_the_workflow(
    driver: Any, wid: str
) -> None:
    async def original(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("charge", lambda: "charged")
        [go] = await ctx.queue.next("go")
        return str(go)

    async def renamed_step(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("charge-card", lambda: "charged again")
        return "never"

    waiting = await run_workflow(wid, original, None, driver).result()
    assert waiting.state == WorkflowState.SLEEPING
    before = await driver.list(b"")

    handle = run_workflow(wid, renamed_step, None, driver)
    with pytest.raises(HistoryDivergedError, match="charge-card"):
        await handle.result()
    # Not a failure: state, history and error untouched, nothing written.
    assert await driver.list(b"") == before
    assert await handle.get_state() == WorkflowState.SLEEPING
    assert await handle.get_error() is None

    # The fix deployed (the original code back): it carries on, no recover() needed.
    handle = run_workflow(wid, original, None, driver)
    await handle.message("go", "shipped")
    done = await handle.result()
    assert (done.state, done.output) == (WorkflowState.COMPLETED, "shipped")


async def test_a_divergence_in_a_compensable_workflow_runs_no_compensation(
    driver: Any, wid: str
) -> None:
    undone: list[str] = []

    async def undo(_: Any, output: Any) -> None:
        undone.append(str(output))

    async def original(ctx: WorkflowContext, _: None) -> None:
        await ctx.rollback_checkpoint("cp")
        await ctx.step("reserve", lambda: "r1", rollback=undo)
        await ctx.queue.next("go")

    async def changed(ctx: WorkflowContext, _: None) -> None:
        await ctx.rollback_checkpoint("cp")
        await ctx.step("reserve", lambda: "r1", rollback=undo)
        await ctx.step("inserted", lambda: 1)

    await run_workflow(wid, original, None, driver).result()
    with pytest.raises(HistoryDivergedError):
        await run_workflow(wid, changed, None, driver).result()
    assert undone == []
    assert await run_workflow(wid, original, None, driver).get_state() == WorkflowState.SLEEPING
