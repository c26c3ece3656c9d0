"""The Redis store's workflow rows, one-workflow claims, messages and cancels beyond the
conformance suite: data written before ``updated`` existed, listing in pages, one round trip
per operation, and the limits it states."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import drivers.redis as redis_driver
from drivers import _redis_index
from drivers.redis import RedisStore
from engine.errors import SerializationError
from engine.store import Limits, WorkerStore, WorkflowRow
from tests.support.redis_store import open_store

pytestmark = pytest.mark.anyio

if os.environ.get("ENGINE_TEST_STORES") and "redis" not in os.environ["ENGINE_TEST_STORES"]:
    pytest.skip("ENGINE_TEST_STORES excludes redis", allow_module_level=True)

BACKENDS = ("asyncio",)  # redis-py's asyncio client runs on asyncio only


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    async with open_store() as opened:
        yield opened


def _log_commands(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commands the store's client sends from now on, one entry per round trip."""
    names: list[str] = []
    inner: Any = store._client.execute_command

    async def execute_command(*args: Any, **options: Any) -> Any:
        names.append(str(args[0]).upper())
        return await inner(*args, **options)

    monkeypatch.setattr(store._client, "execute_command", execute_command)
    return names


async def _forget_update_times(store: RedisStore, *workflow_ids: str) -> None:
    """Make workflows look registered by a version without ``updated``."""
    await store._client.zrem(store._updated, *workflow_ids)


def _expected(rows: list[WorkflowRow], state: str | None, name: str | None) -> list[str]:
    kept = [r for r in rows if (state is None or r.state == state) and name in (None, r.name)]
    return [r.workflow_id for r in sorted(kept, key=lambda r: (-r.updated_at, r.workflow_id))]


async def _mixed_index(store: RedisStore) -> list[str]:
    """Twelve workflows of two names in four states (one running), three without an update
    time; returns their ids."""
    now = time.time()
    ids = [f"wf-{i:02d}" for i in range(12)]
    for i, wid in enumerate(ids):
        await store.create_workflow(wid, "even" if i % 2 == 0 else "odd", [], now + 3600)
    for wid in ids[:4]:
        lease = await store.claim(wid, "w1", 30.0, "ignored")
        assert lease is not None
        await store.finish_run(lease, [], "completed", None)
    for wid in ids[4:6]:
        await store.cancel(wid, [(b"state", b"cancelled")])
    assert await store.claim(ids[6], "w1", 30.0, "ignored") is not None  # running
    await _forget_update_times(store, ids[9], ids[10], ids[11])
    return ids


async def test_rows_of_workflows_registered_before_update_times_still_list(
    store: RedisStore,
) -> None:
    await store.create_workflow("new", "order", [], time.time() + 60)
    for wid in ("old-b", "old-a"):
        await store.create_workflow(wid, "order", [], time.time() + 60)
    await _forget_update_times(store, "old-a", "old-b")
    rows = await store.workflow_rows()
    assert [(r.workflow_id, r.updated_at == 0.0) for r in rows] == [
        ("new", False),
        ("old-a", True),
        ("old-b", True),
    ]
    assert (await store.workflow_row("old-a")) == rows[1]
    assert [r.workflow_id for r in await store.workflow_rows(limit=2)] == ["new", "old-a"]
    # A claim gives it an update time: it moves to the front.
    assert await store.claim("old-b", "w1", 30.0, "order") is not None
    rows = await store.workflow_rows()
    assert [r.workflow_id for r in rows] == ["old-b", "new", "old-a"]
    assert rows[0].state == "running" and rows[0].updated_at > 0


@pytest.mark.parametrize("page", [1, 3, 1000])
async def test_rows_in_pages_agree_with_every_filter(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    await _mixed_index(store)
    everything = await store.workflow_rows(limit=1000)
    assert len(everything) == 12
    assert {r.state for r in everything} == {"completed", "cancelled", "pending", "running"}
    monkeypatch.setattr(_redis_index, "PAGE", page)
    for state in (None, "pending", "completed", "cancelled", "running", "failed"):
        for name in (None, "even", "odd", "nobody"):
            for limit in (1, 2, 5, 100):
                got = await store.workflow_rows(state=state, name=name, limit=limit)
                want = _expected(everything, state, name)[:limit]
                assert [r.workflow_id for r in got] == want, (state, name, limit)
    assert await store.workflow_rows(limit=0) == []


async def test_a_listing_pages_instead_of_holding_redis(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _mixed_index(store)
    monkeypatch.setattr(_redis_index, "PAGE", 3)
    log = _log_commands(store, monkeypatch)
    rows = await store.workflow_rows(name="nobody")
    assert rows == []
    # 9 scored ids in pages of 3 (the last one is full: one more, empty), then the 12
    # registered ids in pages of 3 for those without an update time.
    assert log == ["EVALSHA"] * 9


async def test_new_operations_are_one_round_trip_each(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    await store.create_workflow("warm", "order", [(b"in", b"1")], now - 1)  # scripts loaded
    warm = await store.claim("warm", "w1", 30.0, "order")
    assert warm is not None
    await store.post_message("warm", b"m", b"x", now)
    await store.cancel("warm", [(b"state", b"cancelled")])
    await store.workflow_row("warm")
    await store.workflow_rows()
    lease = await store.claim("one", "w1", 30.0, "order")
    assert lease is not None
    await store.finish_run(lease, [], "sleeping", None)
    log = _log_commands(store, monkeypatch)
    lease = await store.claim("one", "w1", 30.0, "order")
    assert lease is not None and lease.rows == [] and lease.wake_at is None
    await store.post_message("one", b"m", b"x", now)
    await store.fenced_driver(lease).batch([(b"step", b"1")])
    await store.finish_run(lease, [(b"out", b"1")], "completed", None)
    await store.cancel("one", [(b"state", b"cancelled")])
    await store.workflow_row("one")
    await store.workflow_rows()
    assert log == ["EVALSHA"] * 7


async def test_claim_due_leaves_update_times_alone(store: RedisStore) -> None:
    now = time.time()
    await store.create_workflow("due", "order", [], now - 1)
    [before] = await store.workflow_rows()
    claims = await store.claim_due("w1", 30.0, 10, now=now + 5)
    assert [c.workflow_id for c in claims] == ["due"]
    [after] = await store.workflow_rows()
    assert after.updated_at == before.updated_at and after.state == "running"
    assert after.wake_at == now - 1


async def test_claim_reports_the_alarm_and_registers_once(store: RedisStore) -> None:
    now = time.time()
    await store.driver("alarmed").set_alarm("alarmed", now + 100)
    lease = await store.claim("alarmed", "w1", 30.0, "order", now=now)
    assert lease is not None and lease.wake_at == now + 100 and lease.expires_at == now + 30
    assert await store.workflow_info("alarmed") == ("order", "pending")
    assert "alarmed" in await store.list_workflows("pending")
    assert await store.claim("alarmed", "w1", 30.0, "other", now=now + 29) is None
    again = await store.claim("alarmed", "w2", 30.0, "other", now=now + 31)
    assert again is not None and again.token == lease.token + 1
    assert await store.workflow_info("alarmed") == ("order", "pending")  # name kept


async def test_limits(store: RedisStore) -> None:
    assert isinstance(store, Limits) and isinstance(store, WorkerStore)
    assert store.max_value_bytes == redis_driver.MAX_VALUE_BYTES
    assert store.driver("x").max_value_bytes == redis_driver.MAX_VALUE_BYTES
    store.check_workflow_id("x" * 1024)
    store.check_workflow_id("é" * 512)  # 1024 bytes of UTF-8
    for bad, why in [
        ("", "empty"),
        ("x" * 1025, "1025 bytes"),
        ("é" * 513, "1026 bytes"),
        ("a\udc80b", "UTF-8"),
    ]:
        with pytest.raises(ValueError, match=r"redis store.*1024 bytes") as caught:
            store.check_workflow_id(bad)
        assert why in str(caught.value) or why == "empty"


async def test_oversized_values_are_refused_before_anything_is_sent(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await store.claim("big", "w1", 30.0, "order")
    assert lease is not None
    monkeypatch.setattr(redis_driver, "MAX_VALUE_BYTES", 16)
    log = _log_commands(store, monkeypatch)
    too_big, now = b"x" * 17, time.time()
    for refused in (
        store.create_workflow("other", "order", [(b"in", too_big)], now),
        store.post_message("big", b"m", too_big, now),
        store.finish_run(lease, [(b"out", too_big)], "completed", None),
        store.cancel("big", [(b"state", too_big)]),
    ):
        with pytest.raises(SerializationError, match=r"redis store.*17 bytes"):
            await refused
    assert log == []
    assert await store.workflow_info("big") == ("order", "pending")
    assert await store.workflow_info("other") is None
