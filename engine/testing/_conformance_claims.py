"""Conformance of ``Claims.claim``, ``post_message`` and ``cancel``, and of the wake-ups that
``post_message``, ``cancel`` and ``finish_run`` send (``engine.store``).

Each test is named after the clause it checks; part of ``WorkerStoreConformance``.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from engine.errors import LeaseLostError
from engine.testing._conformance_support import (
    WAKE_WITHIN,
    alarm_of,
    claim_due_one,
    clean_up,
    next_wakeup,
    unique_id,
)


@pytest.mark.anyio
class ClaimConformance:
    """``claim``: one workflow's lease, due or not, registering the workflow if absent."""

    async def test_claim_registers_an_absent_workflow_pending_and_holds_its_lease(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("claim-new")
        before = time.time()
        try:
            lease = await store.claim(wid, "w1", 30.0, "order")
            assert lease is not None, "claim of a workflow with no lease must return a lease"
            got = (lease.workflow_id, lease.owner, lease.rows, lease.wake_at)
            assert got == (wid, "w1", [], None), (
                f"claim's lease: (id, owner, rows=its empty namespace, wake_at=None: no "
                f"alarm); got {got!r}"
            )
            assert lease.expires_at >= before + 29, (
                f"claim's lease lasts `lease` seconds from now: expires_at {lease.expires_at}"
            )
            info = await store.workflow_info(wid)
            assert info == ("order", "pending"), (
                f"claim registers an absent workflow with its name, state pending; got {info!r}"
            )
            assert wid in await store.list_workflows("pending"), "claim indexes it as pending"
            row = await store.workflow_row(wid)
            assert row is not None and row.state == "running", (
                f"workflow_row reports running while claim's lease is live; got {row!r}"
            )
            assert await alarm_of(store, wid) is None, "claim sets no alarm"
            await store.release(lease)
            row = await store.workflow_row(wid)
            assert row is not None and row.state == "pending", (
                f"workflow_row reports the recorded state once the lease is released; got {row!r}"
            )
        finally:
            await clean_up(store, wid)

    async def test_claim_reads_namespace_and_alarm_and_keeps_the_registered_name(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("claim-rows")
        now = time.time()
        try:
            await store.create_workflow(wid, "order", [(b"in", b"1")], now + 3600)
            await store.driver(wid).set(b"k", b"v")
            lease = await store.claim(wid, "w1", 30.0, "other-name")
            assert lease is not None, "claim needs no due alarm: a not-yet-due workflow is claimed"
            assert lease.rows == [(b"in", b"1"), (b"k", b"v")], (
                f"claim's rows are the workflow's namespace; got {lease.rows!r}"
            )
            assert lease.wake_at == now + 3600, (
                f"claim's wake_at is the workflow's alarm then; got {lease.wake_at!r}"
            )
            info = await store.workflow_info(wid)
            assert info == ("order", "pending"), (
                f"claim of a registered workflow keeps its name and state; got {info!r}"
            )
            assert await alarm_of(store, wid) == now + 3600, "claim leaves the alarm alone"
            await store.release(lease)
        finally:
            await clean_up(store, wid)

    async def test_claim_returns_none_while_any_live_lease_is_held_and_tokens_grow(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("claim-busy")
        now = time.time()
        await store.driver(wid).set_alarm(wid, now - 1)
        try:
            due = await claim_due_one(store, wid, "w1", now)
            assert due is not None, "claim_due takes the due workflow"
            for owner in ("w2", "w1"):
                refused = await store.claim(wid, owner, 30.0, "order", now=now)
                assert refused is None, (
                    f"claim while claim_due's lease is live returns None, even for the same "
                    f"owner ({owner}); got {refused!r}"
                )
            assert await store.workflow_info(wid) is None, (
                "a refused claim changes nothing: it does not register the workflow"
            )
            taken = await store.claim(wid, "w2", 30.0, "order", now=now + 120)
            assert taken is not None, "claim succeeds once the live lease has expired"
            assert taken.token > due.token, "claim's token is above claim_due's before it"
            with pytest.raises(LeaseLostError):
                await store.fenced_driver(due).set(b"k", b"stale")  # taken over: fenced off
            assert await store.claim(wid, "w1", 30.0, "order", now=now + 121) is None, (
                "claim while another claim's lease is live returns None"
            )
            assert await claim_due_one(store, wid, "w3", now + 121) is None, (
                "claim_due passes over a workflow whose claim lease is live"
            )
            await store.release(taken)
            again = await store.claim(wid, "w3", 30.0, "order", now=now + 121)
            assert again is not None and again.token > taken.token, (
                f"after release, claim succeeds at once with a higher token; got {again!r}"
            )
            later = await claim_due_one(store, wid, "w4", now + 300)
            assert later is not None and later.token > again.token, (
                f"claim_due after a claim lease expired takes a higher token; got {later!r}"
            )
            assert await store.driver(wid).get(b"k") is None, "a fenced-off write lands nothing"
            await store.release(later)
        finally:
            await clean_up(store, wid)

    async def test_claim_lease_fences_writes_and_finish_run_like_claim_due_lease(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("claim-run")
        driver = store.driver(wid)
        now = time.time()
        try:
            await store.create_workflow(wid, "order", [(b"in", b"1")], now + 3600)
            lease = await store.claim(wid, "w1", 30.0, "order")
            assert lease is not None, "claim returns a lease"
            await store.fenced_driver(lease).batch([(b"step", b"1")])
            renewed = await store.renew(lease, 30.0)
            assert renewed is not None and renewed.token == lease.token, (
                f"renew extends a claim lease, same token; got {renewed!r}"
            )
            await store.finish_run(lease, [(b"out", b"2")], "sleeping", now + 50)
            rows = await driver.list(b"")
            assert rows == [(b"in", b"1"), (b"out", b"2"), (b"step", b"1")], (
                f"fenced batch and finish_run under a claim lease both land; got {rows!r}"
            )
            info = await store.workflow_info(wid)
            assert info == ("order", "sleeping"), f"finish_run records its state; got {info!r}"
            assert await alarm_of(store, wid) == now + 50, (
                "finish_run settles the alarm claim read (lease.wake_at) into its wake_at"
            )
            with pytest.raises(LeaseLostError):
                await store.fenced_driver(lease).batch([(b"out", b"stale")])
            assert await driver.get(b"out") == b"2", "a write under a released lease lands nothing"
            again = await store.claim(wid, "w2", 30.0, "order")
            assert again is not None and again.token > lease.token, (
                f"finish_run released the claim lease: claim again at once; got {again!r}"
            )
            await store.release(again)
        finally:
            await clean_up(store, wid)

    # post_message: the message row and its alarm, atomically; then wake-ups.

    async def test_post_message_writes_its_row_and_replaces_the_alarm(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("post")
        driver = store.driver(wid)
        now = time.time()
        try:
            lease = await store.claim(wid, "w1", 30.0, "order")
            assert lease is not None
            await store.post_message(wid, b"m1", b"hello", now - 5)
            assert await driver.get(b"m1") == b"hello", "post_message writes its row"
            listed = await driver.list(b"")
            assert listed == [(b"m1", b"hello")], f"driver.list sees the message; got {listed!r}"
            assert (wid, now - 5) in await store.due_alarms(now=now), (
                "post_message sets the alarm to wake_at"
            )
            await store.post_message(wid, b"m2", b"later", now + 100)
            assert await alarm_of(store, wid) == now + 100, (
                "post_message replaces the alarm, as set_alarm does, even with a later time"
            )
            await store.fenced_driver(lease).set(b"step", b"1")  # the holder is not disturbed
            keys = [k for k, _ in await driver.list(b"")]
            assert keys == [b"m1", b"m2", b"step"], (
                f"post_message is not fenced: it lands while a lease is held; got {keys!r}"
            )
            await store.release(lease)
        finally:
            await clean_up(store, wid)

    async def test_post_message_refused_writes_neither_row_nor_alarm(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("post-bad")
        now = time.time()
        try:
            with pytest.raises(Exception):  # noqa: B017 - TypeError or StorageError
                await store.post_message(wid, b"m", 12345, now - 5)
            assert await store.driver(wid).list(b"") == [], "a refused message writes no row"
            assert await alarm_of(store, wid) is None, "a refused message sets no alarm"
        finally:
            await clean_up(store, wid)

    async def test_post_message_wakes_an_idle_worker(self, conformance_store: Any) -> None:
        store, wid = conformance_store, unique_id("post-wake")
        woken = anyio.Event()

        async def idle_worker() -> None:
            await store.wait_for_due(60.0)
            woken.set()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(idle_worker)
                # Sent until the waiter returns: a message before it started waiting would
                # rightly not wake it, and how soon it waits differs by store.
                with anyio.move_on_after(WAKE_WITHIN):
                    sent = 0
                    while not woken.is_set():
                        await anyio.sleep(0.02)
                        sent += 1
                        await store.post_message(wid, b"m%d" % sent, b"x", time.time())
                group.cancel_scope.cancel()
            assert woken.is_set(), f"post_message wakes wait_for_due within {WAKE_WITHIN} s"
        finally:
            await clean_up(store, wid)

    @pytest.mark.parametrize("operation", ["post_message", "cancel", "finish_run"])
    async def test_subscribers_are_woken_after(
        self, conformance_store: Any, operation: str
    ) -> None:
        store, wid = conformance_store, unique_id(f"wake-{operation}")
        now = time.time()
        try:
            lease = await store.claim(wid, "w1", 30.0, "order")
            assert lease is not None
            async with store.driver(wid).subscribe() as wakeups:
                if operation == "post_message":
                    await store.post_message(wid, b"m", b"x", now)
                elif operation == "cancel":
                    await store.cancel(wid, [(b"state", b"cancelled")])
                else:
                    await store.finish_run(lease, [(b"out", b"1")], "completed", None)
                await next_wakeup(wakeups, f"{operation} wakes the workflow's subscribers")
        finally:
            await clean_up(store, wid)

    # cancel: writes, index, alarm and lease in one atomic operation.

    @pytest.mark.parametrize("taken_by", ["claim_due", "claim"])
    async def test_cancel_writes_records_clears_alarm_and_revokes_the_lease(
        self, conformance_store: Any, taken_by: str
    ) -> None:
        store, wid = conformance_store, unique_id("cancel")
        driver = store.driver(wid)
        now = time.time()
        try:
            await store.create_workflow(wid, "order", [(b"in", b"1")], now - 5)
            if taken_by == "claim":
                lease = await store.claim(wid, "w1", 30.0, "order")
            else:
                lease = await claim_due_one(store, wid, "w1", now)
            assert lease is not None
            before = time.time()
            await store.cancel(wid, [(b"state", b"cancelled")])
            assert await driver.get(b"state") == b"cancelled", "cancel applies its writes"
            info = await store.workflow_info(wid)
            assert info == ("order", "cancelled"), f"cancel records cancelled; got {info!r}"
            assert wid in await store.list_workflows("cancelled"), "indexed under cancelled"
            assert wid not in await store.list_workflows("pending"), "no longer under pending"
            assert await alarm_of(store, wid) is None, "cancel clears the alarm"
            row = await store.workflow_row(wid)
            assert row is not None and (row.state, row.wake_at) == ("cancelled", None), (
                f"after cancel the row is cancelled (lease revoked: not running), no alarm; "
                f"got {row!r}"
            )
            assert row.updated_at >= before - 1, f"cancel sets updated_at; got {row!r}"
            fenced = store.fenced_driver(lease)
            with pytest.raises(LeaseLostError):
                await fenced.batch([(b"state", b"running"), (b"step", b"1")])
            with pytest.raises(LeaseLostError):
                await fenced.set(b"step", b"1")
            assert await store.renew(lease, 30.0) is None, "a revoked lease cannot be renewed"
            with pytest.raises(LeaseLostError):
                await store.finish_run(lease, [(b"out", b"1")], "completed", now + 10)
            rows = await driver.list(b"")
            assert rows == [(b"in", b"1"), (b"state", b"cancelled")], (
                f"the revoked holder's writes and finish_run land nothing; got {rows!r}"
            )
            assert await store.workflow_info(wid) == ("order", "cancelled"), "still cancelled"
            assert await alarm_of(store, wid) is None, "a refused finish_run sets no alarm"
            again = await store.claim(wid, "w2", 30.0, "order")
            assert again is not None and again.token > lease.token, (
                f"cancel revoked the lease, keeping its token used: the next claim succeeds "
                f"at once with a higher token; got {again!r}"
            )
            await store.release(again)
        finally:
            await clean_up(store, wid)

    async def test_cancel_of_an_unregistered_workflow_writes_and_clears_the_alarm(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, unique_id("cancel-unknown")
        driver = store.driver(wid)
        try:
            await driver.set_alarm(wid, time.time() - 5)
            await store.cancel(wid, [(b"state", b"cancelled")])
            assert await driver.list(b"") == [(b"state", b"cancelled")], "cancel writes anyway"
            assert await alarm_of(store, wid) is None, "cancel clears the alarm anyway"
            assert await store.workflow_info(wid) is None, "cancel registers no workflow"
            assert await store.workflow_row(wid) is None, "no index row for it either"
        finally:
            await clean_up(store, wid)
