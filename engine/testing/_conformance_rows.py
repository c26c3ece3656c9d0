"""Conformance of ``WorkflowIndex.workflow_rows`` and ``workflow_row`` (``engine.store``):
what a row holds, its order, its filters, and ``running`` as a live lease.

Each test is named after the clause it checks; part of ``WorkerStoreConformance``. Names are
unique per test, so filtering by name keeps other tests' workflows out of the listing.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine.testing._conformance_support import claim_due_one, clean_up, unique_id

# Between updates whose order a test checks: more than any store's clock resolution.
_TICK = 0.002


def _ids(rows: list[Any]) -> list[str]:
    return [row.workflow_id for row in rows]


@pytest.mark.anyio
class WorkflowRowsConformance:
    """``workflow_rows`` and ``workflow_row``: the index as a client lists it."""

    async def test_workflow_row_holds_name_state_alarm_and_updated_at(
        self, conformance_store: Any
    ) -> None:
        store, wid, name = conformance_store, unique_id("row"), unique_id("name")
        now = time.time()
        try:
            before = time.time()
            await store.create_workflow(wid, name, [(b"in", b"1")], now + 3600)
            after = time.time()
            row = await store.workflow_row(wid)
            assert row is not None, "workflow_row of a created workflow is a row"
            got = (row.workflow_id, row.name, row.state, row.wake_at)
            assert got == (wid, name, "pending", now + 3600), (
                f"workflow_row: (id, registered name, state, wake_at = its alarm); got {got!r}"
            )
            assert before - 1 <= row.updated_at <= after + 1, (
                f"create_workflow sets updated_at to the time it ran ({before}..{after}); "
                f"got {row.updated_at}"
            )
            listed = await store.workflow_rows(name=name)
            assert listed == [row], f"workflow_rows lists the same row; got {listed!r}"
            assert await store.workflow_row(unique_id("absent")) is None, (
                "workflow_row of an id the index does not hold is None"
            )
            await store.driver(wid).clear_alarm(wid)
            row = await store.workflow_row(wid)
            assert row is not None and row.wake_at is None, (
                f"wake_at is None when the workflow has no alarm; got {row!r}"
            )
        finally:
            await clean_up(store, wid)

    async def test_workflow_row_of_an_alarm_without_index_entry_is_none(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("row-unindexed")
        try:
            await store.driver(wid).set_alarm(wid, time.time() + 3600)
            await store.driver(wid).set(b"k", b"v")
            assert await store.workflow_row(wid) is None, "only indexed workflows have rows"
            listed = _ids(await store.workflow_rows(limit=10_000))
            assert wid not in listed, "workflow_rows lists only indexed workflows"
        finally:
            await clean_up(store, wid)

    async def test_workflow_rows_are_most_recently_updated_first(
        self, conformance_store: Any
    ) -> None:
        store, name = conformance_store, unique_id("recent")
        a, b, c = (unique_id(f"recent-{x}") for x in "abc")
        now = time.time()
        try:
            for wid in (a, b, c):
                await store.create_workflow(wid, name, [], now + 3600)
                await anyio.sleep(_TICK)
            rows = await store.workflow_rows(name=name)
            assert _ids(rows) == [c, b, a], f"newest creation first; got {_ids(rows)}"
            lease = await store.claim(a, "w1", 30.0, name)
            assert lease is not None
            await anyio.sleep(_TICK)
            rows = await store.workflow_rows(name=name)
            assert _ids(rows) == [a, c, b], f"claim moves a row to the top; got {rows!r}"
            assert await store.claim(b, "w1", 30.0, name) is not None
            await anyio.sleep(_TICK)
            await store.finish_run(lease, [], "completed", None)
            await anyio.sleep(_TICK)
            rows = await store.workflow_rows(name=name)
            assert _ids(rows) == [a, b, c], f"finish_run moves a row to the top; got {rows!r}"
            await store.cancel(c, [(b"state", b"cancelled")])
            rows = await store.workflow_rows(name=name)
            assert _ids(rows) == [c, a, b], f"cancel moves a row to the top; got {rows!r}"
            stamps = [row.updated_at for row in rows]
            assert stamps == sorted(stamps, reverse=True), (
                f"rows come in descending updated_at; got {stamps}"
            )
        finally:
            await clean_up(store, a, b, c)

    async def test_workflow_rows_filter_by_state_and_name_up_to_limit(
        self, conformance_store: Any
    ) -> None:
        store = conformance_store
        name, other = unique_id("filter"), unique_id("filter-other")
        done, waiting, elsewhere = (unique_id(f"filter-{x}") for x in "xyz")
        now = time.time()
        try:
            await store.create_workflow(done, name, [], now - 5)
            await anyio.sleep(_TICK)
            await store.create_workflow(waiting, name, [], now + 3600)
            await store.create_workflow(elsewhere, other, [], now + 3600)
            lease = await store.claim(done, "w1", 30.0, name)
            assert lease is not None
            await anyio.sleep(_TICK)
            await store.finish_run(lease, [], "completed", None)
            rows = await store.workflow_rows(name=name)
            assert _ids(rows) == [done, waiting], (
                f"name= selects the workflows registered under it; got {_ids(rows)}"
            )
            rows = await store.workflow_rows(state="completed", name=name)
            assert _ids(rows) == [done], f"state= and name= combine; got {_ids(rows)}"
            rows = await store.workflow_rows(state="pending", name=name)
            assert _ids(rows) == [waiting], f"state=pending; got {_ids(rows)}"
            assert await store.workflow_rows(state="completed", name=other) == [], (
                "no row matches both filters"
            )
            rows = await store.workflow_rows(name=name, limit=1)
            assert _ids(rows) == [done], f"limit keeps the most recent rows; got {_ids(rows)}"
            assert len(await store.workflow_rows(limit=2)) == 2, "limit applies without filters"
            rows = await store.workflow_rows(state="completed", limit=10_000)
            assert done in _ids(rows) and {row.state for row in rows} == {"completed"}, (
                f"state= alone selects exactly that state; got {rows!r}"
            )
        finally:
            await clean_up(store, done, waiting, elsewhere)

    @pytest.mark.parametrize("taken_by", ["claim_due", "claim"])
    async def test_workflow_rows_running_means_a_live_lease(
        self, conformance_store: Any, taken_by: str
    ) -> None:
        store, wid, name = conformance_store, unique_id("running"), unique_id("running")
        now = time.time()
        try:
            await store.create_workflow(wid, name, [], now - 5)
            if taken_by == "claim":
                lease = await store.claim(wid, "w1", 30.0, name)
            else:
                lease = await claim_due_one(store, wid, "w1", now)
            assert lease is not None
            row = await store.workflow_row(wid)
            assert row is not None and row.state == "running", (
                f"a workflow whose lease ({taken_by}) is live is reported running; got {row!r}"
            )
            rows = await store.workflow_rows(state="running", name=name)
            assert _ids(rows) == [wid], f"state=running selects live leases; got {rows!r}"
            assert await store.workflow_rows(state="pending", name=name) == [], (
                "a running workflow is not listed under the state the index recorded"
            )
            assert await store.workflow_info(wid) == (name, "pending"), (
                "workflow_info still reports the recorded state"
            )
            await store.release(lease)
            row = await store.workflow_row(wid)
            assert row is not None and row.state == "pending", (
                f"after release the recorded state is reported; got {row!r}"
            )
            assert await store.workflow_rows(state="running", name=name) == [], (
                "state=running no longer selects it after release"
            )
        finally:
            await clean_up(store, wid)

    async def test_workflow_rows_an_expired_lease_is_not_running(
        self, conformance_store: Any
    ) -> None:
        store, wid, name = conformance_store, unique_id("expired"), unique_id("expired")
        try:
            # Taken 100 s ago for 30 s: expired now.
            lease = await store.claim(wid, "w1", 30.0, name, now=time.time() - 100)
            assert lease is not None
            row = await store.workflow_row(wid)
            assert row is not None and row.state == "pending", (
                f"a workflow whose lease has expired is reported in its recorded state; got {row!r}"
            )
            assert await store.workflow_rows(state="running", name=name) == [], (
                "state=running does not select an expired lease"
            )
        finally:
            await clean_up(store, wid)
