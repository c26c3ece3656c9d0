"""ctx.step: replay, retries with backoff, exhaustion, recover, timeouts, ephemeral writes."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine import (
    CriticalError,
    ErrorEvent,
    HistoryDivergedError,
    RollbackError,
    SerializationError,
    StepExhaustedError,
    StepTimeoutError,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowState,
    keys,
    run_workflow,
)
from engine.keys import Prefix
from engine.testing import CountingDriver, FaultyDriver, SimulatedCrash
from tests.support.workflows import Calls

pytestmark = pytest.mark.anyio


async def test_replay_returns_recorded_outputs_without_calling_step_functions(
    driver: Any, wid: str
) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, order: str) -> dict[str, Any]:
        a = await ctx.step("a", calls.fn("a", {"order": order, "pair": (1, b"\x00")}))
        b = await ctx.step("b", calls.fn("b", [1, 2]))
        [go] = await ctx.queue.next("go")
        c = await ctx.step("c", calls.fn("c", go))
        return {"a": a, "b": b, "c": c}

    first = await run_workflow(wid, wf, "o-1", driver).result()
    assert first.state == WorkflowState.SLEEPING
    assert calls.counts == {"a": 1, "b": 1}
    handle = run_workflow(wid, wf, "o-1", driver)
    await handle.message("go", "x")
    done = await handle.result()
    assert done.state == WorkflowState.COMPLETED
    assert done.output == {"a": {"order": "o-1", "pair": (1, b"\x00")}, "b": [1, 2], "c": "x"}
    assert calls.counts == {"a": 1, "b": 1, "c": 1}
    again = await run_workflow(wid, wf, "ignored", driver).result()
    assert again.output == done.output and calls.counts == {"a": 1, "b": 1, "c": 1}


async def test_first_run_returns_what_replay_returns(driver: Any, wid: str) -> None:
    seen: list[Any] = []

    async def wf(ctx: WorkflowContext, _: None) -> None:
        seen.append(await ctx.step("t", lambda: (1, [2, (3,)], {"k": b"v"})))
        await ctx.queue.next("go")

    await run_workflow(wid, wf, None, driver).result()
    await run_workflow(wid, wf, None, driver).result()
    assert seen[0] == seen[1] == (1, [2, (3,)], {"k": b"v"})
    assert type(seen[0]) is tuple and type(seen[1]) is tuple


async def test_sync_and_async_step_functions(driver: Any, wid: str) -> None:
    async def fetch() -> int:
        await anyio.sleep(0)
        return 2

    async def wf(ctx: WorkflowContext, _: None) -> int:
        return await ctx.step("sync", lambda: 1) + await ctx.step("async", fetch)

    assert (await run_workflow(wid, wf, None, driver).result()).output == 3


async def test_failed_attempts_are_retried_with_short_backoff_in_memory(
    driver: Any, wid: str
) -> None:
    attempts: list[float] = []
    events: list[ErrorEvent] = []

    def flaky() -> str:
        attempts.append(time.time())
        if len(attempts) < 3:
            raise ConnectionError(f"down {len(attempts)}")
        return "up"

    async def wf(ctx: WorkflowContext, _: None) -> str:
        return await ctx.step("call", flaky, retry_backoff_base=0.005)

    result = await run_workflow(wid, wf, None, driver, on_error=events.append).result()
    assert result.output == "up" and len(attempts) == 3
    assert [(e.attempt, e.will_retry, e.kind) for e in events] == [
        (1, True, "step"),
        (2, True, "step"),
    ]
    assert events[0].location == "call" and str(events[1].error) == "down 2"


async def test_long_backoff_yields_until_the_retry_time(driver: Any, wid: str) -> None:
    events: list[ErrorEvent] = []
    calls = Calls()

    def fail() -> None:
        calls.counts["fail"] += 1
        raise ConnectionError("nope")

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("s", fail, max_retries=5, retry_backoff_base=10.0, retry_backoff_max=15.0)

    before = time.time()
    first = await run_workflow(wid, wf, None, driver, on_error=events.append).result()
    assert first.state == WorkflowState.SLEEPING and calls["fail"] == 1
    assert first.wake_at is not None and 9.9 <= first.wake_at - before <= 11
    assert events[0].retry_at == first.wake_at
    # A run before the retry time neither calls the step nor moves the alarm.
    second = await run_workflow(wid, wf, None, driver).result()
    assert second.state == WorkflowState.SLEEPING and second.wake_at == first.wake_at
    assert calls["fail"] == 1


def test_backoff_is_deterministic_exponential_and_capped() -> None:
    from engine.ops.step import StepOptions

    options = StepOptions(5, 0.1, 1.0, 30.0, False, None)
    assert [options.backoff(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_exhaustion_fails_the_workflow_and_later_runs_raise_without_calling(
    driver: Any, wid: str
) -> None:
    calls = Calls()

    def broken() -> None:
        calls.counts["broken"] += 1
        raise KeyError("missing-sku")

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("reserve", broken, max_retries=2, retry_backoff_base=0.001)

    handle = run_workflow(wid, wf, None, driver)
    with pytest.raises(StepExhaustedError) as info:
        await handle.result()
    assert calls["broken"] == 3
    assert "reserve" in str(info.value) and "missing-sku" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
    assert await handle.get_state() == WorkflowState.FAILED
    error = await handle.get_error()
    assert error is not None and error.type == "StepExhaustedError"
    assert "missing-sku" in error.message and "KeyError" in error.traceback
    with pytest.raises(StepExhaustedError, match="missing-sku"):
        await run_workflow(wid, wf, None, driver).result()
    assert calls["broken"] == 3


async def test_recover_gives_an_exhausted_step_fresh_attempts(driver: Any, wid: str) -> None:
    fixed = False
    calls = Calls()

    def charge() -> str:
        calls.counts["charge"] += 1
        if not fixed:
            raise RuntimeError("card service down")
        return "paid"

    async def wf(ctx: WorkflowContext, _: None) -> str:
        first = await ctx.step("before", calls.fn("before"))
        return (
            first + ":" + await ctx.step("charge", charge, max_retries=1, retry_backoff_base=0.001)
        )

    handle = run_workflow(wid, wf, None, driver)
    with pytest.raises(StepExhaustedError):
        await handle.result()
    fixed = True
    await handle.recover()
    assert await handle.get_state() == WorkflowState.PENDING
    assert await handle.get_error() is None
    result = await run_workflow(wid, wf, None, driver).result()
    assert result.output == "before:paid"
    assert calls.counts == {"before": 1, "charge": 3}


@pytest.mark.parametrize("error_type", [CriticalError, RollbackError])
async def test_critical_and_rollback_errors_are_not_retried(
    driver: Any, wid: str, error_type: type[Exception]
) -> None:
    raised = error_type("stop now")
    calls = Calls()

    def fail() -> None:
        calls.counts["fail"] += 1
        raise raised

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("s", fail, max_retries=5, retry_backoff_base=0.001)

    with pytest.raises(error_type) as info:
        await run_workflow(wid, wf, None, driver).result()
    assert info.value is raised and calls["fail"] == 1
    with pytest.raises(error_type, match="stop now"):
        await run_workflow(wid, wf, None, driver).result()


async def test_a_runaway_recursion_fails_the_step_at_once(driver: Any, wid: str) -> None:
    calls = Calls()

    def recurse(depth: int = 0) -> int:
        if depth == 0:
            calls.counts["recurse"] += 1
        return recurse(depth + 1)

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("deep", recurse, max_retries=5, retry_backoff_base=0.001)

    with pytest.raises(RecursionError):
        await run_workflow(wid, wf, None, driver).result()
    assert calls["recurse"] == 1  # the same recursion would blow the stack again: no retry
    assert await run_workflow(wid, wf, None, driver).get_state() == WorkflowState.FAILED
    with pytest.raises(WorkflowFailedError, match="RecursionError"):
        await run_workflow(wid, wf, None, driver).result()
    assert calls["recurse"] == 1


async def test_a_step_over_its_timeout_fails_without_retry(driver: Any, wid: str) -> None:
    calls = Calls()

    async def slow() -> str:
        calls.counts["slow"] += 1
        await anyio.sleep(5)
        return "late"

    async def wf(ctx: WorkflowContext, _: None) -> str:
        return await ctx.step("slow", slow, timeout=0.05, max_retries=3)

    with pytest.raises(StepTimeoutError, match=r"slow.*longer than 0\.05s"):
        await run_workflow(wid, wf, None, driver).result()
    assert calls["slow"] == 1


async def test_a_blocking_sync_step_times_out_without_stalling_other_runs(
    store: Any, wid: str
) -> None:
    ticks: list[float] = []

    async def blocking(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("block", lambda: time.sleep(1.5), timeout=0.3, max_retries=0)

    async def ticking(ctx: WorkflowContext, _: None) -> int:
        for i in range(8):
            await ctx.step(f"tick-{i}", lambda: ticks.append(time.monotonic()))
            await ctx.sleep(f"nap-{i}", 0.01)
        return len(ticks)

    started = time.monotonic()
    timed_out_after: list[float] = []

    async def run_blocking() -> None:
        with pytest.raises(StepTimeoutError, match="block"):
            await run_workflow(wid, blocking, None, store.driver(wid)).result()
        timed_out_after.append(time.monotonic() - started)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_blocking)
        other = f"{wid}-other"
        done = await run_workflow(other, ticking, None, store.driver(other)).result()
    assert done.output == 8
    # The step's body is still asleep in its thread: the loop was free all along.
    assert timed_out_after[0] < 1.2, timed_out_after
    assert ticks[-1] - started < 1.2, "the other workflow waited for the blocked step"


async def test_timeout_zero_disables_the_timeout(driver: Any, wid: str) -> None:
    async def slowish() -> str:
        await anyio.sleep(0.1)
        return "done"

    async def wf(ctx: WorkflowContext, _: None) -> str:
        return await ctx.step("s", slowish, timeout=0)

    assert (await run_workflow(wid, wf, None, driver).result()).output == "done"


async def test_one_batch_per_step_and_none_on_a_pure_replay(driver: Any, wid: str) -> None:
    counting = CountingDriver(driver)

    async def wf(ctx: WorkflowContext, _: None) -> None:
        for i in range(5):
            await ctx.step(f"s{i}", lambda i=i: i)
        await ctx.queue.next("never")

    await run_workflow(wid, wf, None, counting).result()
    assert counting.calls["batch"] == 5 + 1  # one per step, one when the run yields
    # One list of the whole namespace at load, one last look for messages before yielding.
    assert counting.calls["list"] == 1 + 1
    counting.reset()
    result = await run_workflow(wid, wf, None, counting).result()
    assert result.state == WorkflowState.SLEEPING
    assert counting.writes == 0 and counting.calls["list"] == 1 + 1


async def test_ephemeral_steps_ride_along_with_the_next_flush(driver: Any, wid: str) -> None:
    counting = CountingDriver(driver)
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        out = [await ctx.step(f"e{i}", calls.fn(f"e{i}"), ephemeral=True) for i in range(3)]
        out.append(await ctx.step("durable", calls.fn("durable")))
        await ctx.queue.next("never")
        return out

    await run_workflow(wid, wf, None, counting).result()
    assert counting.calls["batch"] == 2  # the durable step's flush, then the yield
    counting.reset()
    await run_workflow(wid, wf, None, counting).result()
    assert counting.writes == 0
    assert calls.counts == {"e0": 1, "e1": 1, "e2": 1, "durable": 1}


async def test_an_unserializable_output_fails_with_a_clear_error(driver: Any, wid: str) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("load-user", lambda: {"when": time})

    handle = run_workflow(wid, wf, None, driver)
    with pytest.raises(SerializationError) as info:
        await handle.result()
    message = str(info.value)
    assert repr(wid) in message and "load-user" in message and "module" in message
    assert await handle.get_state() == WorkflowState.FAILED


async def test_a_workflow_error_is_raised_as_itself_then_as_workflow_failed_error(
    driver: Any, wid: str
) -> None:
    boom = ValueError("bad order")

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("ok", lambda: 1)
        raise boom

    with pytest.raises(ValueError) as info:
        await run_workflow(wid, wf, None, driver).result()
    assert info.value is boom
    with pytest.raises(WorkflowFailedError) as later:
        await run_workflow(wid, wf, None, driver).result()
    assert later.value.type_name == "ValueError" and later.value.message == "bad order"
    assert "raise boom" in later.value.traceback


@pytest.mark.parametrize("name", ["", None, 3])
async def test_operation_names_must_be_non_empty_strings(driver: Any, wid: str, name: Any) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step(name, lambda: 1)

    with pytest.raises(ValueError, match="non-empty string name"):
        await run_workflow(wid, wf, None, driver).result()


async def test_a_name_used_twice_in_one_scope_is_rejected(driver: Any, wid: str) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("dup", calls.fn("first"))
        await ctx.step("dup", calls.fn("second"))

    with pytest.raises(HistoryDivergedError, match="'dup' is used twice"):
        await run_workflow(wid, wf, None, driver).result()
    assert calls.counts == {"first": 1}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": -1}, "timeout"),
        ({"retry_backoff_base": float("nan")}, "retry_backoff_base"),
    ],
)
async def test_bad_step_options_are_rejected_at_the_call(
    driver: Any, wid: str, options: dict[str, Any], fragment: str
) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("s", lambda: 1, **options)

    with pytest.raises(ValueError, match=fragment):
        await run_workflow(wid, wf, None, driver).result()


async def test_a_raising_on_error_hook_never_breaks_the_run(driver: Any, wid: str) -> None:
    attempts = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("once")
        return 7

    def bad_hook(event: ErrorEvent) -> None:
        raise RuntimeError("hook bug")

    async def wf(ctx: WorkflowContext, _: None) -> int:
        return await ctx.step("s", flaky, retry_backoff_base=0.001)

    assert (await run_workflow(wid, wf, None, driver, on_error=bad_hook).result()).output == 7


async def test_on_history_updated_is_called_after_each_flush(driver: Any, wid: str) -> None:
    flushed: list[str] = []

    async def hook(workflow_id: str) -> None:
        flushed.append(workflow_id)

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.step("b", lambda: 2)

    await run_workflow(wid, wf, None, driver, on_history_updated=hook).result()
    assert flushed == [wid, wid]  # "a" before "b" starts, then "b" with the completion


# The owed flush: outside branches a step's write waits for whatever comes next.


async def test_the_last_step_and_the_completion_are_one_batch(driver: Any, wid: str) -> None:
    counting = CountingDriver(driver)

    async def wf(ctx: WorkflowContext, _: None) -> int:
        a = await ctx.step("a", lambda: 1)
        b = await ctx.step("b", lambda: a + 1)
        return int(await ctx.step("c", lambda: b + 1))

    assert (await run_workflow(wid, wf, None, counting).result()).output == 3
    # "a" lands before "b" starts, "b" before "c" starts, "c" with the completion.
    assert counting.calls["batch"] == 3 and counting.writes == 3


async def test_a_crash_at_the_last_write_runs_only_the_last_step_again(
    driver: Any, wid: str
) -> None:
    calls = Calls()

    async def wf(ctx: WorkflowContext, _: None) -> list[Any]:
        return [await ctx.step(name, calls.fn(name, name)) for name in ("a", "b", "c")]

    with pytest.raises(SimulatedCrash):
        await run_workflow(wid, wf, None, FaultyDriver(driver, crash_at=3)).result()
    assert (calls["a"], calls["b"], calls["c"]) == (1, 1, 1)
    result = await run_workflow(wid, wf, None, driver).result()
    assert result.output == ["a", "b", "c"]
    assert (calls["a"], calls["b"], calls["c"]) == (1, 1, 2)


async def test_an_owed_write_lands_before_the_next_step_runs(driver: Any, wid: str) -> None:
    seen: list[int] = []

    async def look() -> str:
        seen.append(len(await driver.list(keys.prefix_key(Prefix.HISTORY))))
        return "looked"

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.step("b", look)
        await ctx.sleep("pause", 0.001)
        await ctx.step("c", look)

    await run_workflow(wid, wf, None, driver).result()
    assert seen == [1, 2]  # "a" landed before "b" ran, "b" before "c" ran


async def test_a_step_in_a_branch_is_written_before_its_siblings_go_on(
    driver: Any, wid: str
) -> None:
    """A sibling branch may be in the middle of a step: a branch's step output lands at
    once instead of waiting for the next operation."""
    seen: list[int] = []
    a_done = anyio.Event()

    async def slow_sibling() -> str:
        await a_done.wait()
        await anyio.sleep(0.01)  # whatever "a" had to write has had its chance
        seen.append(len(await driver.list(keys.prefix_key(Prefix.HISTORY))))
        return "b"

    async def slow_a() -> str:
        await anyio.sleep(0.005)  # so the sibling's step is under way when this one ends
        return "a"

    async def branch_a(ctx: WorkflowContext) -> str:
        out = await ctx.step("a", slow_a)
        a_done.set()
        await anyio.sleep(0.05)  # still going (no operation) while the sibling looks
        return str(out)

    async def branch_b(ctx: WorkflowContext) -> str:
        return str(await ctx.step("b", slow_sibling))

    async def wf(ctx: WorkflowContext, _: None) -> dict[str, Any]:
        return await ctx.join("both", {"a": branch_a, "b": branch_b})

    assert (await run_workflow(wid, wf, None, driver).result()).output == {"a": "a", "b": "b"}
    assert seen == [2]  # the join's own entry and "a"


async def test_an_owed_write_lands_before_a_rollback_handler_runs(driver: Any, wid: str) -> None:
    seen: list[int] = []

    async def undo(_rctx: Any, _output: Any) -> None:
        seen.append(len(await driver.list(keys.prefix_key(Prefix.HISTORY))))

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.rollback_checkpoint("start")
        await ctx.step("charge", lambda: "charged", rollback=undo)
        raise CriticalError("declined")

    with pytest.raises(CriticalError):
        await run_workflow(wid, wf, None, driver).result()
    assert seen == [2]  # the checkpoint and the charge, both stored before the undo ran
