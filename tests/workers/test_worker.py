"""``Worker`` in one process, on every store: claim, run, renew, fence, unknown names, stop."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
import pytest

from engine import Worker, WorkflowContext, WorkflowState, keys, start_workflow
from engine.errors import StorageError
from engine.keys import Prefix
from tests.support.workflows import Calls
from tests.workers.helpers import (
    all_in_state,
    output_of,
    running,
    send,
    state_of,
    wait_until,
)

pytestmark = pytest.mark.anyio


def _wid() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


def _worker(store: Any, workflows: dict[str, Any], **options: Any) -> Worker:
    options.setdefault("lease", 2.0)
    options.setdefault("heartbeat", 0.5)
    return Worker(store, workflows, handle_signals=False, poll_interval=0.05, **options)


async def _due(store: Any, wid: str) -> bool:
    return wid in [w for w, _ in await store.due_alarms(now=time.time() + 0.001, limit=10_000)]


async def _history_steps(store: Any, wid: str) -> int:
    return len(await store.driver(wid).list(keys.prefix_key(Prefix.HISTORY)))


async def test_runs_due_workflows_to_completion(store: Any) -> None:
    calls = Calls()

    async def double(ctx: WorkflowContext, n: int) -> Any:
        a = await ctx.step("a", calls.fn("a", n * 2))
        b = await ctx.step("b", calls.fn("b", a + 1))
        return b

    ids = [_wid() for _ in range(8)]
    for i, wid in enumerate(ids):
        await start_workflow(store, "double", wid, i)
    worker = _worker(store, {"double": double})
    async with running(worker):
        await wait_until(lambda: all_in_state(store, ids, "completed"), what="completed")
    for i, wid in enumerate(ids):
        assert await output_of(store, wid) == i * 2 + 1
        assert not await _due(store, wid)
    assert (calls["a"], calls["b"]) == (8, 8)
    assert worker.stats.completed == 8
    assert worker.stats.leases_lost == worker.stats.fencing_rejections == 0


async def test_sleeps_and_messages_wake_the_workflow(store: Any) -> None:
    async def waits(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.sleep("nap", 0.2)  # longer than the poll interval: yields, an alarm wakes it
        [got] = await ctx.queue.next("go", names=["go"])
        return await ctx.step("done", lambda: f"got {got}")

    wid = _wid()
    await start_workflow(store, "waits", wid, None)
    worker = _worker(store, {"waits": waits})
    async with running(worker):
        await wait_until(lambda: all_in_state(store, [wid], "sleeping"), what="sleeping")
        await anyio.sleep(0.4)
        assert await state_of(store, wid) == WorkflowState.SLEEPING
        assert not await _due(store, wid)  # waiting for a message alone: no alarm left
        await send(store, wid, "go", 42)
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
    assert await output_of(store, wid) == "got 42"
    assert worker.stats.suspended >= 2


async def test_concurrency_limits_runs_at_once(store: Any) -> None:
    now_running, peak = [0], [0]

    async def busy() -> str:
        now_running[0] += 1
        peak[0] = max(peak[0], now_running[0])
        await anyio.sleep(0.05)
        now_running[0] -= 1
        return "ok"

    async def slow(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.step("busy", busy)

    ids = [_wid() for _ in range(7)]
    for wid in ids:
        await start_workflow(store, "slow", wid, None)
    worker = _worker(store, {"slow": slow}, concurrency=2)
    async with running(worker):
        await wait_until(lambda: all_in_state(store, ids, "completed"), what="completed")
    assert peak[0] == 2


async def test_heartbeat_keeps_a_long_step_leased(store: Any) -> None:
    calls = Calls()

    async def long(ctx: WorkflowContext, _: Any) -> Any:
        async def work() -> str:
            calls.counts["work"] += 1
            await anyio.sleep(1.0)  # far past the lease: only renewals keep it
            return "done"

        return await ctx.step("work", work)

    wid = _wid()
    await start_workflow(store, "long", wid, None)
    first = _worker(store, {"long": long}, lease=0.3, heartbeat=0.08)
    second = _worker(store, {"long": long}, lease=0.3, heartbeat=0.08)
    async with running(first, second):
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
    assert calls["work"] == 1
    assert first.stats.leases_lost + second.stats.leases_lost == 0
    assert first.stats.fencing_rejections + second.stats.fencing_rejections == 0


class _RenewalTrouble:
    """The store, except that the first renewal of chosen workflows hangs or fails."""

    def __init__(self, store: Any, hang: str = "", fail: str = "") -> None:
        self._store, self._hang, self._fail = store, hang, fail
        self.renewals: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew(self, lease: Any, duration: float) -> Any:
        wid = lease.workflow_id
        first = wid not in self.renewals
        self.renewals.append(wid)
        if first and wid == self._hang:
            await anyio.sleep_forever()
        if first and wid == self._fail:
            raise StorageError("test store", "renew", OSError("connection reset"))
        return await self._store.renew(lease, duration)


def _one_step_of(calls: Calls, seconds: float) -> Any:
    async def sleeper(ctx: WorkflowContext, label: str) -> Any:
        async def work() -> str:
            calls.counts[label] += 1
            await anyio.sleep(seconds)
            return label

        return await ctx.step("work", work)

    return sleeper


async def test_a_hung_renewal_holds_up_no_other_lease(store: Any) -> None:
    calls = Calls()
    short, long = _wid(), _wid()
    troubled = _RenewalTrouble(store, hang=short)
    await start_workflow(store, "short", short, "short")
    await start_workflow(store, "long", long, "long")
    flows = {"short": _one_step_of(calls, 0.15), "long": _one_step_of(calls, 1.0)}
    worker = _worker(troubled, flows, lease=0.3, heartbeat=0.08)
    async with running(worker):
        await wait_until(lambda: all_in_state(store, [short, long], "completed"), what="done")
    assert (calls["short"], calls["long"]) == (1, 1)
    assert troubled.renewals.count(long) >= 5  # renewed all along, beside the hung one
    assert worker.stats.leases_lost == worker.stats.fencing_rejections == 0


async def test_a_failed_renewal_is_tried_again_while_the_lease_holds(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    wid = _wid()
    troubled = _RenewalTrouble(store, fail=wid)
    await start_workflow(store, "long", wid, "long")
    worker = _worker(troubled, {"long": _one_step_of(calls, 0.8)}, lease=0.3, heartbeat=0.08)
    with caplog.at_level(logging.WARNING, logger="engine.worker"):
        async with running(worker):
            await wait_until(lambda: all_in_state(store, [wid], "completed"), what="done")
    assert calls["long"] == 1
    assert worker.stats.leases_lost == worker.stats.fencing_rejections == 0
    failed = [r for r in caplog.records if r.fields.get("operation") == "renew"]  # type: ignore[attr-defined]
    assert [(r.event, r.workflow_id) for r in failed] == [("store_error", wid)]  # type: ignore[attr-defined]


async def test_lost_lease_evicts_and_abandons_the_run(store: Any) -> None:
    calls = Calls()
    release = anyio.Event()

    async def blocked(ctx: WorkflowContext, _: Any) -> Any:
        async def work() -> int:
            calls.counts["work"] += 1
            if calls["work"] == 1:
                await release.wait()
            return calls["work"]

        return await ctx.step("work", work)

    wid = _wid()
    await start_workflow(store, "blocked", wid, None)
    worker = _worker(store, {"blocked": blocked}, lease=1.0, heartbeat=0.05)
    async with running(worker):
        await wait_until(lambda: _started(calls), what="the step to start")
        # Another worker claims it as if the lease had expired (its clock is far ahead).
        [thief] = await store.claim_due("thief", 30.0, 1, now=time.time() + 1000)
        assert thief.workflow_id == wid
        await wait_until(lambda: _counted(worker, "leases_lost"), what="lease lost")
        release.set()  # the step finishes; its write is fenced off
        await wait_until(lambda: _counted(worker, "fencing_rejections"), what="fencing")
        assert await _history_steps(store, wid) == 0  # nothing of the stale run landed
        assert await state_of(store, wid) == WorkflowState.PENDING
        await store.release(thief)  # the thief gives up: the alarm is still there
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
    assert await output_of(store, wid) == 2  # the second execution is the one that landed
    assert worker.stats.leases_lost == 1
    assert worker.stats.fencing_rejections == 1


async def _started(calls: Calls) -> bool:
    return calls["work"] >= 1


async def _counted(worker: Worker, counter: str) -> bool:
    return bool(getattr(worker.stats, counter))


async def test_unknown_name_is_left_untouched_and_not_hot_looped(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def known(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("one", lambda: n + 1)

    wid = _wid()
    await start_workflow(store, "deployed-later", wid, 1)
    caplog.set_level(logging.ERROR, logger="engine.worker")
    worker = _worker(store, {"known": known}, lease=0.3, heartbeat=0.1)
    async with running(worker):
        await anyio.sleep(1.0)
        assert 1 <= worker.stats.unknown <= 5  # held off one lease at a time, not hot-looped
    assert await state_of(store, wid) == WorkflowState.PENDING
    assert await store.workflow_info(wid) == ("deployed-later", "pending")
    assert await _due(store, wid)  # the alarm was not consumed
    assert await _history_steps(store, wid) == 0
    assert any(getattr(r, "event", None) == "unknown_workflow" for r in caplog.records)
    # Once a worker that knows the name comes, it runs it.
    later = _worker(store, {"deployed-later": known})
    async with running(later):
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
    assert await output_of(store, wid) == 2


async def test_a_corrupted_workflow_is_held_off_and_never_marked_failed(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def waits(ctx: WorkflowContext, n: int) -> int:
        await ctx.step("one", lambda: n)
        [extra] = await ctx.queue.next("wait")
        return n + int(extra)

    damaged, healthy = _wid(), _wid()
    await start_workflow(store, "waits", damaged, 1)
    await start_workflow(store, "waits", healthy, 10)
    caplog.set_level(logging.ERROR, logger="engine.worker")
    worker = _worker(store, {"waits": waits}, lease=0.3, heartbeat=0.1)
    async with running(worker):
        await wait_until(lambda: all_in_state(store, [damaged, healthy], "sleeping"), what="wait")
        key, good = (await store.driver(damaged).list(keys.prefix_key(Prefix.HISTORY)))[0]
        await store.driver(damaged).set(key, b"\x01\xc1")  # a damaged step record
        await send(store, damaged, "wait", 1)
        await send(store, healthy, "wait", 5)
        before = await store.driver(damaged).list(b"")
        await wait_until(lambda: all_in_state(store, [healthy], "completed"), what="healthy")
        await wait_until(lambda: _corrupted(worker), what="the corrupted run")
        await anyio.sleep(0.6)
        assert 1 <= worker.stats.corrupted <= 4  # held off a lease at a time, not hot-looped
    assert worker.stats.failed == 0
    assert await store.workflow_info(damaged) == ("waits", "sleeping")
    assert await store.driver(damaged).list(b"") == before  # nothing written
    assert any(getattr(r, "event", None) == "corrupted_workflow" for r in caplog.records)
    # Repaired, it carries on with the message that waited for it.
    await store.driver(damaged).set(key, good)
    later = _worker(store, {"waits": waits})
    async with running(later):
        await wait_until(lambda: all_in_state(store, [damaged], "completed"), what="repaired")
    assert await output_of(store, damaged) == 2


async def _corrupted(worker: Worker) -> bool:
    return worker.stats.corrupted > 0


async def test_a_divergence_is_reported_retried_later_and_resumed_by_matching_code(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()

    async def original(ctx: WorkflowContext, n: int) -> int:
        await ctx.step("charge", calls.fn("charge", n))
        [extra] = await ctx.queue.next("wait")
        return n + int(extra)

    async def renamed(ctx: WorkflowContext, n: int) -> int:
        return await ctx.step("charge-card", calls.fn("charge-card", n))

    wid = _wid()
    await start_workflow(store, "order", wid, 1)
    async with running(_worker(store, {"order": original})):
        await wait_until(lambda: all_in_state(store, [wid], "sleeping"), what="sleeping")
    await send(store, wid, "wait", 2)
    caplog.set_level(logging.ERROR, logger="engine.worker")
    bad = _worker(store, {"order": renamed})
    async with running(bad):
        await wait_until(lambda: _diverged(bad), what="the divergence")
    assert bad.stats.failed == 0 and calls["charge-card"] == 0
    assert await store.workflow_info(wid) == ("order", "sleeping")
    events = [(getattr(r, "event", None), getattr(r, "fields", {})) for r in caplog.records]
    [(_, fields)] = [e for e in events if e[0] == "diverged"]
    assert "charge-card" in fields["error"] and fields["retry_in"] == 1.0
    # Matching code deployed: it resumes at the backed-off alarm, without recover().
    good = _worker(store, {"order": original})
    async with running(good):
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
    assert await output_of(store, wid) == 3 and calls["charge"] == 1


async def _diverged(worker: Worker) -> bool:
    return worker.stats.diverged > 0


async def test_failure_is_logged_and_indexed_as_failed(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(ctx: WorkflowContext, _: Any) -> Any:
        def fail() -> None:
            raise ValueError("boom")

        return await ctx.step("fail", fail, max_retries=1, retry_backoff_base=0.01)

    wid = _wid()
    await start_workflow(store, "broken", wid, None)
    caplog.set_level(logging.INFO, logger="engine")
    worker = _worker(store, {"broken": broken})
    async with running(worker):
        await wait_until(lambda: all_in_state(store, [wid], "failed"), what="failed")
    assert worker.stats.failed == 1
    assert not await _due(store, wid)
    events = [(getattr(r, "event", None), getattr(r, "fields", {})) for r in caplog.records]
    step_failures = [r for r in caplog.records if getattr(r, "event", None) == "step_failed"]
    assert [(r.levelname, r.attempt) for r in step_failures] == [  # type: ignore[attr-defined]
        ("WARNING", 1),
        ("ERROR", 2),
    ]
    for record in step_failures:
        assert record.name == "engine.runner"
        assert (record.workflow_id, record.workflow_name, record.path) == (  # type: ignore[attr-defined]
            wid,
            "broken",
            "fail",
        )
        assert "ValueError: boom" in record.getMessage()
    assert any(e == "workflow_failed" for e, _ in events)


async def test_stop_is_graceful(store: Any) -> None:
    calls = Calls()
    in_step = anyio.Event()

    async def two_steps(ctx: WorkflowContext, _: Any) -> Any:
        async def slow() -> str:
            calls.counts["slow"] += 1
            in_step.set()
            await anyio.sleep(0.3)
            return "slow done"

        a: str = await ctx.step("slow", slow)
        b = await ctx.step("next", calls.fn("next"))
        return [a, b]

    wid = _wid()
    await start_workflow(store, "two", wid, None)
    worker = _worker(store, {"two": two_steps}, lease=5.0, heartbeat=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await in_step.wait()
        started = time.monotonic()
        worker.stop()
    assert time.monotonic() - started < 2.0  # the step finished; the worker did not linger
    assert (calls["slow"], calls["next"]) == (1, 0)
    assert await _history_steps(store, wid) == 1  # the running step kept its output
    assert worker.stats.evicted == 1
    assert await _due(store, wid)  # re-armed for whoever runs it next
    # The lease was released: another worker claims it at once, long before 5 s.
    other = _worker(store, {"two": two_steps})
    async with running(other):
        await wait_until(lambda: all_in_state(store, [wid], "completed"), timeout=3.0)
    assert await output_of(store, wid) == ["slow done", "next"]
    assert (calls["slow"], calls["next"]) == (1, 1)


async def test_stop_before_any_claim_returns_at_once(store: Any) -> None:
    worker = _worker(store, {})
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await anyio.sleep(0.1)
            worker.stop()


def test_rejects_bad_settings() -> None:
    from drivers.memory import MemoryStore

    with pytest.raises(ValueError):
        Worker(MemoryStore(), {}, concurrency=0)
    with pytest.raises(ValueError):
        Worker(MemoryStore(), {}, lease=1.0, heartbeat=1.0)
    with pytest.raises(TypeError):
        Worker(MemoryStore(), {"x": "not a function"})  # type: ignore[dict-item]


async def test_a_run_whose_finish_did_not_land_is_replayed_and_finished(store: Any) -> None:
    """The run's last call (last step's output, index state, alarm, lease) failed: none of
    it landed, so the alarm is still due and the next claim replays the workflow: the first
    step is replayed, the last one (whose write had not landed) runs again."""
    calls = Calls()

    async def two_steps(ctx: WorkflowContext, _: Any) -> Any:
        await ctx.step("first", calls.fn("first", 1))
        return await ctx.step("last", calls.fn("last", "done"))

    wid = _wid()
    await start_workflow(store, "two", wid, None)
    real_finish_run = store.finish_run
    failures: list[str] = []

    async def fails_once(lease: Any, writes: Any, state: str, wake_at: Any) -> None:
        if not failures:
            failures.append(state)
            raise StorageError("test store", "finish_run")  # as if the worker died here
        await real_finish_run(lease, writes, state, wake_at)

    store.finish_run = fails_once
    try:
        worker = _worker(store, {"two": two_steps}, lease=0.4, heartbeat=0.1)
        async with running(worker):
            await wait_until(lambda: all_in_state(store, [wid], "completed"), what="finished")
    finally:
        store.finish_run = real_finish_run
    assert failures == ["completed"]
    assert (calls["first"], calls["last"]) == (1, 2)
    assert await output_of(store, wid) == "done"
    assert not await _due(store, wid)
    assert worker.stats.claimed == 2 and worker.stats.store_errors == 1


async def test_a_completed_run_leaves_index_alarm_and_lease_settled(store: Any) -> None:
    async def one_step(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.step("only", lambda: "done")

    wid = _wid()
    await start_workflow(store, "one", wid, None)
    worker = _worker(store, {"one": one_step})
    async with running(worker):
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
    assert not await _due(store, wid)
    # Released, not left to expire: a new alarm is claimable at once.
    await store.driver(wid).set_alarm(wid, time.time() - 1)
    assert wid in {c.workflow_id for c in await store.claim_due("other", 30.0, 1000)}


class _ClaimLog:
    """Records every workflow a worker got from ``claim_due``."""

    def __init__(self, store: Any) -> None:
        self.ids: list[str] = []
        self._claim_due = store.claim_due
        store.claim_due = self

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leases = await self._claim_due(*args, **kwargs)
        self.ids.extend(lease.workflow_id for lease in leases)
        return leases


async def test_eager_start_runs_here_without_a_claim(store: Any) -> None:
    calls = Calls()

    async def two_steps(ctx: WorkflowContext, n: int) -> int:
        a = await ctx.step("a", calls.fn("a", n + 1))
        return int(await ctx.step("b", calls.fn("b", a * 2)))

    claims = _ClaimLog(store)
    worker = _worker(store, {"two": two_steps})
    wid = _wid()
    async with running(worker):
        await wait_until(lambda: _is_running(worker), what="worker running")
        started = await worker.start_workflow("two", wid, 1)
        assert (started.workflow_id, started.name, started.created) == (wid, "two", True)
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="completed")
        again = await worker.start_workflow("two", wid, 5)  # idempotent, runs nothing
        assert (again.name, again.created) == ("two", False)
    assert await output_of(store, wid) == 4
    assert calls["a"] == 1 and calls["b"] == 1
    assert wid not in claims.ids
    assert worker.stats.claimed == 1 and worker.stats.completed == 1
    assert not await _due(store, wid)


async def test_eager_start_falls_back_to_a_plain_start(store: Any) -> None:
    """Not running, or a name this worker does not run: the workflow is started and left
    due for any worker."""
    idle = _worker(store, {"two": _sleeper})
    first = _wid()
    assert (await idle.start_workflow("two", first, 1)).created
    assert await _due(store, first) and idle.stats.claimed == 0

    worker = _worker(store, {"two": _sleeper})
    second = _wid()
    async with running(worker):
        await wait_until(lambda: _is_running(worker), what="worker running")
        await worker.start_workflow("elsewhere", second, 1)
        assert await store.workflow_info(second) == ("elsewhere", "pending")
    assert await _history_steps(store, second) == 0


async def test_eager_start_when_full_leaves_it_for_a_claim(store: Any) -> None:
    release = anyio.Event()

    async def blocked(ctx: WorkflowContext, _: Any) -> Any:
        async def wait() -> str:
            await release.wait()
            return "ok"

        return await ctx.step("wait", wait)

    claims = _ClaimLog(store)
    worker = _worker(store, {"blocked": blocked}, concurrency=1)
    first, second = _wid(), _wid()
    async with running(worker):
        await wait_until(lambda: _is_running(worker), what="worker running")
        await worker.start_workflow("blocked", first, None)
        await wait_until(lambda: _running_count(worker, 1), what="first running")
        await worker.start_workflow("blocked", second, None)  # no free slot: plain start
        assert await _due(store, second)
        release.set()
        await wait_until(lambda: all_in_state(store, [first, second], "completed"), what="both")
    assert claims.ids.count(second) == 1 and first not in claims.ids


async def test_an_eagerly_started_workflow_survives_its_worker(store: Any) -> None:
    """The starting process claims the workflow and dies before running it: once the
    lease expires another worker runs it."""
    from engine.start import create

    wid = _wid()
    started, lease = await create(store, "two", wid, 1, owner="dead-worker", lease=0.3)
    assert started.created and lease is not None
    worker = _worker(store, {"two": _sleeper}, lease=1.0, heartbeat=0.2)
    async with running(worker):
        await wait_until(lambda: all_in_state(store, [wid], "completed"), what="taken over")
    assert await output_of(store, wid) == 2
    assert worker.stats.claimed == 1


async def _sleeper(ctx: WorkflowContext, n: int) -> int:
    return int(await ctx.step("inc", lambda: n + 1))


async def _is_running(worker: Worker) -> bool:
    return worker._task_groups is not None


async def _running_count(worker: Worker, count: int) -> bool:
    return worker.running == count


async def test_an_eager_start_that_races_a_stop_leaves_the_workflow_to_any_worker(
    store: Any,
) -> None:
    """stop() lands while the eager start's store call is under way: the claim it got is
    released at once, so the workflow is due for another worker, not held for a lease."""
    worker = _worker(store, {"two": _sleeper}, lease=30.0, heartbeat=5.0)
    real_create = store.create_workflow

    async def create_then_stop(*args: Any, **kwargs: Any) -> Any:
        made = await real_create(*args, **kwargs)
        worker.stop()
        return made

    wid = _wid()
    async with running(worker):
        await wait_until(lambda: _is_running(worker), what="worker running")
        store.create_workflow = create_then_stop
        try:
            assert (await worker.start_workflow("two", wid, 1)).created
        finally:
            store.create_workflow = real_create
    assert worker.stats.completed == 0 and await _history_steps(store, wid) == 0
    assert wid in {c.workflow_id for c in await store.claim_due("other", 30.0, 1000)}
