"""Rollback: compensations in reverse completion order, each once across restarts."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from engine import (
    CriticalError,
    ErrorEvent,
    HistoryDivergedError,
    Loop,
    LoopResult,
    RollbackCheckpointError,
    WorkflowContext,
    WorkflowState,
    run_workflow,
)
from engine.testing import SimulatedCrash
from tests.support.workflows import Calls

pytestmark = pytest.mark.anyio


class Ledger:
    """What happened, in order: steps completing and compensations running."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.undone: list[str] = []
        self.states: list[str] = []
        self.fail_once: set[str] = set()
        self.crash_once: set[str] = set()
        self.state_of: Callable[[], Any] | None = None

    def do(self, key: str) -> Callable[[], Awaitable[str]]:
        # Async, so it runs on the loop right before its record is taken: ``done`` is in
        # completion order (sync bodies run in threads, and concurrent ones may overlap).
        async def call() -> str:
            self.done.append(key)
            return key

        return call

    async def undo(self, rctx: Any, output: Any) -> None:
        if output in self.crash_once:
            self.crash_once.discard(output)
            raise SimulatedCrash(f"process died compensating {output}")
        if output in self.fail_once:
            self.fail_once.discard(output)
            raise RuntimeError(f"cannot undo {output} yet")
        if self.state_of is not None:
            self.states.append(str(await self.state_of()))
        self.undone.append(output)


def boom() -> None:
    raise CriticalError("payment declined")


def everything(ledger: Ledger, gate: bool = False) -> Any:
    """A checkpoint, then compensable steps at the top, in branches, iterations and a race."""

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.rollback_checkpoint("cp")
        await ctx.step("reserve", ledger.do("reserve"), rollback=ledger.undo)

        def branch(name: str) -> Any:
            async def run(bctx: WorkflowContext) -> Any:
                await bctx.step("one", ledger.do(f"j/{name}/one"), rollback=ledger.undo)
                await anyio.sleep(0)
                return await bctx.step("two", ledger.do(f"j/{name}/two"), rollback=ledger.undo)

            return run

        await ctx.join("j", {"a": branch("a"), "b": branch("b")})

        async def body(lctx: WorkflowContext, i: int) -> LoopResult:
            await lctx.step("s", ledger.do(f"l/~{i}/s"), rollback=ledger.undo)
            return Loop.break_(i) if i == 4 else Loop.continue_(i + 1)

        await ctx.loop("l", body, state=0, commit_interval=2, history_keep=10)

        async def work(rctx: WorkflowContext) -> Any:
            return await rctx.step("w", ledger.do("r/work/w"), rollback=ledger.undo)

        async def slow(rctx: WorkflowContext) -> Any:
            await rctx.sleep("t", 3600)

        await ctx.race("r", {"work": work, "slow": slow})
        if gate:
            await ctx.queue.next("gate", names=["go"])
        await ctx.step("charge", boom)
        return "unreachable"

    return workflow


async def test_handlers_run_newest_first_across_every_scope(driver: Any, wid: str) -> None:
    ledger = Ledger()
    workflow = everything(ledger)
    ledger.state_of = run_workflow(wid, workflow, None, driver).get_state
    errors: list[ErrorEvent] = []
    with pytest.raises(CriticalError, match="payment declined"):
        await run_workflow(wid, workflow, None, driver, on_error=errors.append).result()
    assert len(ledger.done) == 11
    assert ledger.undone == list(reversed(ledger.done))
    assert set(ledger.states) == {WorkflowState.ROLLING_BACK}
    handle = run_workflow(wid, workflow, None, driver)
    assert await handle.get_state() == WorkflowState.FAILED
    error = await handle.get_error()
    assert error is not None and error.type == "CriticalError"
    assert [e.kind for e in errors] == ["step", "workflow"]

    # A later run raises the recorded failure and compensates nothing again.
    with pytest.raises(CriticalError):
        await run_workflow(wid, workflow, None, driver).result()
    assert len(ledger.undone) == 11


async def test_handlers_registered_again_after_a_yield(driver: Any, wid: str) -> None:
    # The failure comes on a later run: the finished join, loop and race only replay there,
    # and every one of their handlers must still run.
    ledger = Ledger()
    workflow = everything(ledger, gate=True)
    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", None)
    with pytest.raises(CriticalError):
        await handle.result()
    assert ledger.undone == list(reversed(ledger.done))
    assert len(ledger.undone) == 11


async def test_loop_resumed_at_a_commit_compensates_earlier_iterations(
    driver: Any, wid: str
) -> None:
    ledger = Ledger()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.rollback_checkpoint("cp")

        async def body(lctx: WorkflowContext, i: int) -> LoopResult:
            await lctx.step("s", ledger.do(f"l/~{i}/s"), rollback=ledger.undo)
            if i == 4:
                await lctx.queue.next("gate", names=["go"])
                await lctx.step("fail", boom)
            return Loop.continue_(i + 1)

        return await ctx.loop("l", body, state=0, commit_interval=2, history_keep=20)

    assert (await run_workflow(wid, workflow, None, driver).result()).state == "sleeping"
    handle = run_workflow(wid, workflow, None, driver)
    await handle.message("go", None)
    with pytest.raises(CriticalError):
        await handle.result()
    assert ledger.undone == [f"l/~{i}/s" for i in (4, 3, 2, 1, 0)]


async def test_race_losers_and_trimmed_iterations_are_not_compensated(
    driver: Any, wid: str
) -> None:
    ledger = Ledger()
    loser_done = anyio.Event()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.rollback_checkpoint("cp")

        async def loser(rctx: WorkflowContext) -> Any:
            await rctx.step("x", ledger.do("r/loser/x"), rollback=ledger.undo)
            loser_done.set()
            await rctx.sleep("t", 3600)

        async def winner(rctx: WorkflowContext) -> Any:
            await rctx.step("wait", loser_done.wait)
            return await rctx.step("y", ledger.do("r/winner/y"), rollback=ledger.undo)

        await ctx.race("r", {"loser": loser, "winner": winner})

        async def body(lctx: WorkflowContext, i: int) -> LoopResult:
            await lctx.step("s", ledger.do(f"l/~{i}/s"), rollback=ledger.undo)
            return Loop.break_(i) if i == 5 else Loop.continue_(i + 1)

        await ctx.loop("l", body, state=0, commit_interval=2, history_every=2, history_keep=2)
        await ctx.step("charge", boom)

    with anyio.fail_after(10), pytest.raises(CriticalError):
        await run_workflow(wid, workflow, None, driver).result()
    # Only what history still holds is compensated: the same set a later run would know.
    assert ledger.undone == ["l/~5/s", "l/~4/s", "r/winner/y"]
    assert "r/loser/x" in ledger.done


async def test_crash_mid_rollback_resumes_with_remaining_handlers(driver: Any, wid: str) -> None:
    ledger = Ledger()
    workflow = everything(ledger)
    ledger.crash_once = {"l/~2/s"}
    with pytest.raises(BaseException) as crashed:
        await run_workflow(wid, workflow, None, driver).result()
    assert isinstance(crashed.value, SimulatedCrash)
    before_crash = list(ledger.undone)
    assert before_crash == ["r/work/w", "l/~4/s", "l/~3/s"]
    handle = run_workflow(wid, workflow, None, driver)
    assert await handle.get_state() == WorkflowState.ROLLING_BACK

    with pytest.raises(CriticalError):
        await run_workflow(wid, workflow, None, driver).result()
    assert ledger.undone == list(reversed(ledger.done)), "each handler once, in order"
    assert await handle.get_state() == WorkflowState.FAILED


async def test_eviction_mid_rollback_resumes_with_remaining_handlers(
    store: Any, driver: Any, wid: str
) -> None:
    ledger = Ledger()
    workflow = everything(ledger)
    handle = run_workflow(wid, workflow, None, driver)
    original_undo = ledger.undo

    async def undo_then_evict(rctx: Any, output: Any) -> None:
        await original_undo(rctx, output)
        if output == "l/~1/s":
            handle.evict()

    ledger.undo = undo_then_evict  # type: ignore[method-assign]
    evicted = await handle.result()
    assert evicted.evicted and evicted.state == WorkflowState.ROLLING_BACK
    assert ledger.undone == ["r/work/w", "l/~4/s", "l/~3/s", "l/~2/s", "l/~1/s"]
    # Due at once, like any evicted run, so whoever owns the store finishes the rollback.
    assert wid in {w for w, _ in await store.due_alarms(now=time.time() + 0.001)}

    with pytest.raises(CriticalError):
        await run_workflow(wid, workflow, None, driver).result()
    assert ledger.undone == list(reversed(ledger.done))


@pytest.mark.parametrize("retry_with", ["next run", "recover"])
async def test_failing_handler_is_retried_later(driver: Any, wid: str, retry_with: str) -> None:
    ledger = Ledger()
    workflow = everything(ledger)
    failed_at = "l/~0/s"
    ledger.fail_once = {failed_at}
    errors: list[ErrorEvent] = []
    with pytest.raises(CriticalError, match="payment declined"):
        await run_workflow(wid, workflow, None, driver, on_error=errors.append).result()
    rollback_events = [e for e in errors if e.kind == "rollback"]
    assert len(rollback_events) == 1 and rollback_events[0].location == failed_at
    assert f"cannot undo {failed_at} yet" in str(rollback_events[0].error)
    handle = run_workflow(wid, workflow, None, driver)
    assert await handle.get_state() == WorkflowState.FAILED
    error = await handle.get_error()
    assert error is not None and error.message == "payment declined"
    compensated_first = list(ledger.undone)
    assert compensated_first == ["r/work/w", "l/~4/s", "l/~3/s", "l/~2/s", "l/~1/s"]

    if retry_with == "recover":
        await handle.recover()
        assert await handle.get_state() == WorkflowState.ROLLING_BACK
    with pytest.raises(CriticalError):
        await run_workflow(wid, workflow, None, driver).result()
    assert ledger.undone == list(reversed(ledger.done)), "the rest, each once"
    assert await handle.get_state() == WorkflowState.FAILED
    assert len(ledger.done) == 11, "no step ran again"


async def test_step_with_rollback_needs_a_checkpoint_before_it(driver: Any, wid: str) -> None:
    calls = Calls()

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.step("plain", calls.fn("plain"))
        await ctx.step("charge", calls.fn("charge"), rollback=lambda rctx, out: anyio.sleep(0))
        await ctx.rollback_checkpoint("too-late")

    with pytest.raises(RollbackCheckpointError, match="charge"):
        await run_workflow(wid, workflow, None, driver).result()
    assert calls["charge"] == 0
    assert await run_workflow(wid, workflow, None, driver).get_state() == WorkflowState.FAILED


@pytest.mark.parametrize("stop", ["evict", "cancel"])
async def test_no_rollback_on_eviction_or_cancel(driver: Any, wid: str, stop: str) -> None:
    ledger = Ledger()
    started = anyio.Event()
    release = anyio.Event()

    async def blocked() -> str:
        started.set()
        await release.wait()
        return "finished"

    async def workflow(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.rollback_checkpoint("cp")
        await ctx.step("reserve", ledger.do("reserve"), rollback=ledger.undo)
        await ctx.step("blocked", blocked)
        await ctx.step("never", ledger.do("never"), rollback=ledger.undo)

    with anyio.fail_after(10):
        async with run_workflow(wid, workflow, None, driver) as handle:
            await started.wait()
            if stop == "evict":
                handle.evict()
            else:
                await handle.cancel()
            release.set()
            result = await handle.result()
    assert ledger.undone == [] and ledger.done == ["reserve"]
    if stop == "evict":
        assert result.evicted and result.state == WorkflowState.RUNNING
    else:
        assert result.state == WorkflowState.CANCELLED
        assert await handle.get_state() == WorkflowState.CANCELLED


async def test_divergence_is_not_compensated(driver: Any, wid: str) -> None:
    ledger = Ledger()

    def version(renamed: bool) -> Any:
        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            await ctx.rollback_checkpoint("cp")

            async def a(bctx: WorkflowContext) -> Any:
                await bctx.step("one", ledger.do("j/a/one"), rollback=ledger.undo)
                await bctx.step("renamed" if renamed else "two", ledger.do("j/a/two"))

            async def b(bctx: WorkflowContext) -> Any:
                await bctx.step("one", ledger.do("j/b/one"), rollback=ledger.undo)

            await ctx.join("j", {"a": a, "b": b})
            await ctx.sleep("later", 3600)

        return workflow

    await run_workflow(wid, version(False), None, driver).result()
    with pytest.raises(HistoryDivergedError, match="j/a/renamed"):
        await run_workflow(wid, version(True), None, driver).result()
    assert ledger.undone == []
