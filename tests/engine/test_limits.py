"""Ids and values are checked before anything runs or is written, against each store's
limits: an oversized step output fails the workflow once, an over-long id starts nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from engine import (
    SerializationError,
    WorkflowContext,
    WorkflowState,
    run_workflow,
    start_workflow,
)

pytestmark = pytest.mark.anyio


def _lower_the_limit(monkeypatch: pytest.MonkeyPatch, store: Any, wid: str, limit: int) -> None:
    """Every store's limit is megabytes; a test lowers it rather than write that much."""
    monkeypatch.setattr(store, "max_value_bytes", limit, raising=False)
    monkeypatch.setattr(type(store.driver(wid)), "max_value_bytes", limit, raising=False)


async def test_an_oversized_step_output_fails_the_workflow_once(
    store: Any, wid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()

    async def big(ctx: WorkflowContext, _: Any) -> None:
        def produce() -> str:
            calls["produce"] += 1
            return "x" * 5000

        await ctx.step("produce", produce, max_retries=5, retry_backoff_base=0.001)

    _lower_the_limit(monkeypatch, store, wid, 1000)
    driver = store.driver(wid)
    handle = run_workflow(wid, big, None, driver)
    with pytest.raises(SerializationError) as info:
        await handle.result()
    message = str(info.value)
    assert "produce" in message and "1000" in message and "bytes" in message, message
    assert calls["produce"] == 1  # not retried: it would be as big again
    assert await handle.get_state() == WorkflowState.FAILED
    with pytest.raises(SerializationError):
        await run_workflow(wid, big, None, driver).result()
    assert calls["produce"] == 1


async def test_an_oversized_input_or_message_is_refused_before_anything_lands(
    store: Any, wid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def waits(ctx: WorkflowContext, _: Any) -> Any:
        return await ctx.queue.next("m")

    _lower_the_limit(monkeypatch, store, wid, 1000)
    with pytest.raises(SerializationError, match="1000"):
        await start_workflow(store, "waits", wid, "y" * 5000)
    assert await store.driver(wid).list(b"") == []
    assert await store.workflow_info(wid) is None
    handle = run_workflow(wid, waits, None, store.driver(wid))
    with pytest.raises(SerializationError, match="1000"):
        await handle.message("m", "z" * 5000)
    assert await store.driver(wid).list(b"") == []


@pytest.mark.parametrize("bad", ["", "x" * 5000, "\ud800"])
async def test_an_id_the_store_cannot_hold_is_refused_before_anything_runs(
    store: Any, bad: str
) -> None:
    calls: Counter[str] = Counter()

    async def counted(ctx: WorkflowContext, _: Any) -> int:
        return await ctx.step("s", lambda: calls.update(["s"]) or 1)

    with pytest.raises(ValueError):
        await run_workflow(bad, counted, None, store.driver(bad or "-")).result()
    with pytest.raises(ValueError):
        await start_workflow(store, "counted", bad, None)
    assert calls["s"] == 0
