"""The conformance suites every store must pass (they need pytest and its anyio plugin).

Subclass ``DriverConformance`` (any store) or ``WorkerStoreConformance`` (a store workers
share) in a test module and provide one fixture, ``conformance_store``, that yields the store.
``WorkerStoreConformance`` gathers the tests of ``claim``, ``post_message``, ``cancel`` and
the wake-ups (``_conformance_claims``) and of ``workflow_rows`` (``_conformance_rows``).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine.errors import SerializationError
from engine.testing._conformance_claims import ClaimConformance
from engine.testing._conformance_rows import WorkflowRowsConformance
from engine.testing._conformance_support import alarm_of, clean_up
from engine.testing._conformance_support import unique_id as _wid

_VALUE_LIMIT_TESTED = 16 * 1024 * 1024
"""A store whose ``max_value_bytes`` is at most this has a value one byte over it sent."""


@pytest.mark.anyio
class DriverConformance:
    """What every driver must do; subclass it and provide the ``conformance_store`` fixture."""

    async def test_get_set_delete(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("basic"))
        assert await driver.get(b"k") is None
        await driver.set(b"k", b"v1")
        assert await driver.get(b"k") == b"v1"
        await driver.set(b"k", b"v2")
        assert await driver.get(b"k") == b"v2"
        await driver.set(b"empty", b"")
        assert await driver.get(b"empty") == b""
        await driver.delete(b"k")
        assert await driver.get(b"k") is None
        await driver.delete(b"never-set")
        await driver.delete_prefix(b"")

    async def test_list_is_sorted_by_raw_bytes(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("order"))
        keys = [
            b"\x00",
            b"\x00\x00",
            b"\x00\xff",
            b"\x01",
            b"\x7f",
            b"\x80",
            b"\xfe",
            b"\xff",
            b"\xff\x00",
            b"\xff\xff",
            b"a",
            b"a\x00",
            b"a\xff",
            b"ab",
            b"B",
        ]
        await driver.batch([(key, key + b"!") for key in reversed(keys)])
        listed = await driver.list(b"")
        assert [key for key, _ in listed] == sorted(keys)
        assert all(value == key + b"!" for key, value in listed)
        assert all(type(k) is bytes and type(v) is bytes for k, v in listed)
        await driver.delete_prefix(b"")

    async def test_list_prefix_selects_exactly_the_prefix(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("prefix"))
        keys = [b"a", b"a\x00", b"a\xff\xff", b"ab", b"a`", b"b", b"\xff", b"\xff\xff", b"`"]
        await driver.batch([(key, b"x") for key in keys])
        assert [k for k, _ in await driver.list(b"a")] == [
            b"a",
            b"a\x00",
            b"a`",
            b"ab",
            b"a\xff\xff",
        ]
        assert [k for k, _ in await driver.list(b"a\xff")] == [b"a\xff\xff"]
        assert [k for k, _ in await driver.list(b"\xff")] == [b"\xff", b"\xff\xff"]
        assert await driver.list(b"c") == []
        await driver.delete_prefix(b"")

    async def test_namespaces_are_isolated(self, conformance_store: Any) -> None:
        base = _wid("iso")
        ids = [base, base + ":x", base + "*", base + "{x}", base + "é☃", base + "y" * 1024]
        drivers = [conformance_store.driver(wid) for wid in ids]
        for index, driver in enumerate(drivers):
            await driver.batch([(b"k", str(index).encode()), (b"k" + bytes([index]), b"own")])
        for index, driver in enumerate(drivers):
            assert await driver.get(b"k") == str(index).encode()
            assert [k for k, _ in await driver.list(b"")] == [b"k", b"k" + bytes([index])]
        await drivers[0].delete_prefix(b"")
        await drivers[1].delete_range(b"", b"\xff\xff\xff")
        assert await drivers[0].list(b"") == []
        assert await drivers[1].list(b"") == []
        for index, driver in enumerate(drivers[2:], start=2):
            assert await driver.get(b"k") == str(index).encode()
            await driver.delete_prefix(b"")

    async def test_delete_prefix_and_half_open_range(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("range"))
        keys = [b"r\x00", b"r\x01", b"r\x02", b"r\x03", b"r\xff", b"s", b"q"]
        await driver.batch([(key, b"v") for key in keys])
        await driver.delete_range(b"r\x01", b"r\x03")
        assert [k for k, _ in await driver.list(b"")] == [b"q", b"r\x00", b"r\x03", b"r\xff", b"s"]
        await driver.delete_range(b"r\x05", b"r\x04")  # empty range: nothing happens
        assert len(await driver.list(b"")) == 5
        await driver.delete_prefix(b"r")
        assert [k for k, _ in await driver.list(b"")] == [b"q", b"s"]
        await driver.delete_prefix(b"")

    async def test_batch_applies_sets_and_deletes_together(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("batch"))
        await driver.batch([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        await driver.batch(
            [(b"a", None), (b"b", b"22"), (b"d", b"4"), (b"d", b"44"), (b"zz", None)]
        )
        assert await driver.list(b"") == [(b"b", b"22"), (b"c", b"3"), (b"d", b"44")]
        await driver.batch([])
        await driver.delete_prefix(b"")

    async def test_bad_batch_writes_nothing(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("atomic"))
        await driver.set(b"keep", b"old")
        with pytest.raises(Exception):  # noqa: B017 - drivers may raise TypeError or StorageError
            await driver.batch([(b"keep", b"new"), (b"other", 12345)])
        assert await driver.list(b"") == [(b"keep", b"old")]
        await driver.delete_prefix(b"")

    async def test_large_values_round_trip(self, conformance_store: Any) -> None:
        driver = conformance_store.driver(_wid("large"))
        value = bytes(range(256)) * 1024  # 256 KiB, every byte value
        await driver.batch([(b"big", value), (b"\x00\xff", b"\x00\xff")])
        assert await driver.get(b"big") == value
        assert await driver.get(b"\x00\xff") == b"\x00\xff"
        await driver.delete_prefix(b"")

    async def test_alarms(self, conformance_store: Any) -> None:
        wid_a, wid_b, wid_c = _wid("alarm-a"), _wid("alarm-b"), _wid("alarm-c")
        a, b, c = (conformance_store.driver(w) for w in (wid_a, wid_b, wid_c))
        now = time.time()
        try:
            await a.set_alarm(wid_a, now - 20)
            await b.set_alarm(wid_b, now - 10)
            await c.set_alarm(wid_c, now + 3600)
            due = [
                (w, at)
                for w, at in await conformance_store.due_alarms(now=now)
                if w in {wid_a, wid_b, wid_c}
            ]
            assert [w for w, _ in due] == [wid_a, wid_b]
            assert abs(due[0][1] - (now - 20)) < 1e-3
            assert {w for w, _ in await conformance_store.due_alarms(now=now + 7200)} >= {
                wid_a,
                wid_b,
                wid_c,
            }
            await a.set_alarm(wid_a, now + 100)  # replaces the earlier wake time
            due_ids = {w for w, _ in await conformance_store.due_alarms(now=now)}
            assert wid_a not in due_ids and wid_b in due_ids
            await b.clear_alarm(wid_b)
            await b.clear_alarm(wid_b)  # clearing twice is fine
            due_ids = {w for w, _ in await conformance_store.due_alarms(now=now + 7200)}
            assert wid_b not in due_ids and {wid_a, wid_c} <= due_ids
            limited = await conformance_store.due_alarms(now=now + 7200, limit=1)
            assert len(limited) == 1
        finally:
            for wid, drv in ((wid_a, a), (wid_b, b), (wid_c, c)):
                await drv.clear_alarm(wid)


@pytest.mark.anyio
class WorkerStoreConformance(ClaimConformance, WorkflowRowsConformance):
    """What a store shared by workers must do (``engine.store.WorkerStore``).

    Provide the same ``conformance_store`` fixture as for ``DriverConformance``.
    """

    # Limits: what the store can hold, stated and checked.

    async def test_limits_max_value_bytes_on_the_store_and_every_driver(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, _wid("limits")
        limit = store.max_value_bytes
        assert isinstance(limit, int) and limit >= 256 * 1024, (
            f"max_value_bytes is an int, at least 256 KiB (a step's output); got {limit!r}"
        )
        try:
            lease = await store.claim(wid, "w1", 30.0, "order")
            assert lease is not None
            for kind, driver in (
                ("driver", store.driver(wid)),
                ("fenced_driver", store.fenced_driver(lease)),
            ):
                assert driver.max_value_bytes == limit, (
                    f"{kind}(...).max_value_bytes is the store's ({limit}); "
                    f"got {driver.max_value_bytes!r}"
                )
            await store.release(lease)
        finally:
            await clean_up(store, wid)

    @pytest.mark.parametrize(
        "workflow_id", ["", "\ud800", "x" * 5000], ids=["empty", "lone-surrogate", "5000-bytes"]
    )
    async def test_limits_check_workflow_id_refuses(
        self, conformance_store: Any, workflow_id: str
    ) -> None:
        with pytest.raises(ValueError) as refused:
            conformance_store.check_workflow_id(workflow_id)
        message = str(refused.value)
        assert "store" in message, f"check_workflow_id's ValueError names the store: {message!r}"
        assert any(ch.isdigit() for ch in message), (
            f"check_workflow_id's ValueError names the store's limit: {message!r}"
        )

    @pytest.mark.parametrize(
        "workflow_id",
        ["order-123", "\u00e9" * 200, "a:b/{c}*?\u2603 ~"],
        ids=["ascii", "400-bytes", "punctuation"],
    )
    async def test_limits_check_workflow_id_accepts(
        self, conformance_store: Any, workflow_id: str
    ) -> None:
        conformance_store.check_workflow_id(workflow_id)  # raises nothing

    async def test_limits_value_over_max_value_bytes_is_refused_writing_nothing(
        self, conformance_store: Any
    ) -> None:
        store, wid = conformance_store, _wid("too-big")
        if store.max_value_bytes > _VALUE_LIMIT_TESTED:
            pytest.skip(f"max_value_bytes {store.max_value_bytes} is too large to send")
        too_big = b"x" * (store.max_value_bytes + 1)
        driver, now = store.driver(wid), time.time()
        try:
            with pytest.raises(SerializationError):
                await driver.batch([(b"small", b"ok"), (b"big", too_big)])
            with pytest.raises(SerializationError):
                await store.create_workflow(wid, "order", [(b"big", too_big)], now)
            assert await store.workflow_info(wid) is None, "an oversized creation registers none"
            with pytest.raises(SerializationError):
                await store.post_message(wid, b"m", too_big, now)
            assert await alarm_of(store, wid) is None, "an oversized message sets no alarm"
            lease = await store.claim(wid, "w1", 30.0, "order")
            assert lease is not None
            with pytest.raises(SerializationError):
                await store.finish_run(lease, [(b"big", too_big)], "completed", None)
            with pytest.raises(SerializationError):
                await store.cancel(wid, [(b"big", too_big)])
            assert await store.workflow_info(wid) == ("order", "pending"), (
                "oversized finish_run and cancel change nothing"
            )
            assert await driver.list(b"") == [], "no oversized write lands anything"
            await store.release(lease)
        finally:
            await clean_up(store, wid)

    # Registration, claims and finishing runs.

    async def test_create_is_create_if_absent(self, conformance_store: Any) -> None:
        wid = _wid("create")
        driver = conformance_store.driver(wid)
        now = time.time()
        writes = [(b"b", b"input"), (b"a", b"name")]
        try:
            made = await conformance_store.create_workflow(wid, "order", writes, now - 1)
            assert (made.created, made.name, made.lease) == (True, "order", None)
            assert await conformance_store.workflow_info(wid) == ("order", "pending")
            assert await driver.list(b"") == sorted(writes)
            assert (wid, now - 1) in await conformance_store.due_alarms(now=now)
            assert wid in await conformance_store.list_workflows("pending")
            assert wid in await conformance_store.list_workflows()
            again = await conformance_store.create_workflow(
                wid, "other", [(b"a", b"changed"), (b"c", b"new")], now + 50
            )
            assert (again.created, again.name, again.lease) == (False, "order", None)
            assert await driver.list(b"") == sorted(writes)
            assert (wid, now - 1) in await conformance_store.due_alarms(now=now)
            assert await conformance_store.workflow_info(_wid("absent")) is None
            # A creation only sets values: a delete in it is refused and nothing lands.
            refused = _wid("refused")
            with pytest.raises(TypeError):
                await conformance_store.create_workflow(refused, "o", [(b"k", None)], now)
            assert await conformance_store.workflow_info(refused) is None
            assert await conformance_store.driver(refused).list(b"") == []
        finally:
            await driver.clear_alarm(wid)
            await driver.delete_prefix(b"")

    async def test_create_with_an_owner_claims_it(self, conformance_store: Any) -> None:
        wid = _wid("eager")
        driver = conformance_store.driver(wid)
        now = time.time()
        writes = [(b"in", b"1")]
        try:
            made = await conformance_store.create_workflow(
                wid, "order", writes, now, owner="w1", lease=30.0
            )
            lease = made.lease
            assert made.created and lease is not None
            assert (lease.workflow_id, lease.owner, lease.wake_at) == (wid, "w1", now)
            assert lease.rows == writes and lease.expires_at > now + 20
            taken = await conformance_store.claim_due("w2", 30.0, 1000, now=now + 1)
            assert wid not in {c.workflow_id for c in taken}
            await conformance_store.fenced_driver(lease).batch([(b"step", b"done")])
            # The alarm is there for a takeover should the owner die.
            later = [
                c
                for c in await conformance_store.claim_due("w2", 30.0, 1000, now=now + 120)
                if c.workflow_id == wid
            ]
            assert len(later) == 1 and later[0].token > lease.token
            assert later[0].rows == [(b"in", b"1"), (b"step", b"done")]
        finally:
            await driver.clear_alarm(wid)
            await driver.delete_prefix(b"")

    async def test_claims_exclude_each_other_until_expiry(self, conformance_store: Any) -> None:
        from engine.errors import LeaseLostError

        wid = _wid("claim")
        driver = conformance_store.driver(wid)
        now = time.time()
        await driver.set_alarm(wid, now - 1)
        try:
            first = [
                c
                for c in await conformance_store.claim_due("w1", 30.0, 1000, now=now)
                if c.workflow_id == wid
            ]
            assert len(first) == 1 and first[0].owner == "w1"
            assert first[0].wake_at is not None and abs(first[0].wake_at - (now - 1)) < 1e-3
            assert first[0].rows == []
            again = await conformance_store.claim_due("w2", 30.0, 1000, now=now)
            assert wid not in {c.workflow_id for c in again}
            fenced = conformance_store.fenced_driver(first[0])
            await fenced.batch([(b"k", b"by-w1")])
            renewed = await conformance_store.renew(first[0], 30.0)
            assert renewed is not None and renewed.token == first[0].token
            # After expiry another worker takes over with a higher token, and w1 is fenced off.
            later = now + 120
            taken = [
                c
                for c in await conformance_store.claim_due("w2", 30.0, 1000, now=later)
                if c.workflow_id == wid
            ]
            assert len(taken) == 1 and taken[0].token > first[0].token
            assert taken[0].rows == [(b"k", b"by-w1")]  # the namespace, read with the claim
            with pytest.raises(LeaseLostError):
                await fenced.batch([(b"k", b"stale"), (b"k2", b"stale")])
            with pytest.raises(LeaseLostError):
                await fenced.set(b"k3", b"stale")
            assert await driver.list(b"") == [(b"k", b"by-w1")]
            assert await conformance_store.renew(first[0], 30.0) is None
            await conformance_store.fenced_driver(taken[0]).batch([(b"k", b"by-w2")])
            assert await driver.get(b"k") == b"by-w2"
            await conformance_store.release(taken[0])
            released = [
                c
                for c in await conformance_store.claim_due("w3", 30.0, 1000, now=later)
                if c.workflow_id == wid
            ]
            assert len(released) == 1
            await conformance_store.release(released[0])
        finally:
            await driver.clear_alarm(wid)
            await driver.delete_prefix(b"")

    async def test_claims_in_due_order_up_to_the_limit_past_live_leases(
        self, conformance_store: Any
    ) -> None:
        # Wake times in 1970 put these first in any store; one id is long and not ASCII.
        wids = [_wid(f"order{i}") for i in range(4)] + [_wid("é" * 80)]
        now = time.time()
        for i, wid in enumerate(wids):
            await conformance_store.driver(wid).set_alarm(wid, 1.0 + i)
        await conformance_store.driver(wids[4]).set(b"k", b"v")
        try:
            first = await conformance_store.claim_due("w1", 30.0, 2, now=now)
            assert [c.workflow_id for c in first] == wids[:2]
            # The next claim passes over the two live leases, however small its limit.
            second = await conformance_store.claim_due("w2", 30.0, 2, now=now)
            assert [c.workflow_id for c in second] == wids[2:4]
            third = await conformance_store.claim_due("w3", 30.0, 1, now=now)
            assert [(c.workflow_id, c.rows) for c in third] == [(wids[4], [(b"k", b"v")])]
        finally:
            for wid in wids:
                await conformance_store.driver(wid).clear_alarm(wid)
                await conformance_store.driver(wid).delete_prefix(b"")

    async def test_claim_requires_a_due_alarm(self, conformance_store: Any) -> None:
        wid = _wid("notdue")
        driver = conformance_store.driver(wid)
        now = time.time()
        await driver.set_alarm(wid, now + 3600)
        try:
            claimed = await conformance_store.claim_due("w1", 30.0, 1000, now=now)
            assert wid not in {c.workflow_id for c in claimed}
        finally:
            await driver.clear_alarm(wid)

    async def _claimed(self, store: Any, wid: str, wake_at: float, owner: str = "w1") -> Any:
        await store.driver(wid).set_alarm(wid, wake_at)
        claims = await store.claim_due(owner, 30.0, 1000, now=wake_at + 1)
        return next(c for c in claims if c.workflow_id == wid)

    async def test_finish_run_writes_indexes_settles_and_releases(
        self, conformance_store: Any
    ) -> None:
        wid = _wid("finish")
        driver = conformance_store.driver(wid)
        now = time.time()
        try:
            await conformance_store.create_workflow(wid, "order", [(b"gone", b"x")], now - 5)
            lease = await self._claimed(conformance_store, wid, now - 5)
            await conformance_store.finish_run(
                lease, [(b"out", b"3"), (b"gone", None)], "completed", None
            )
            assert await driver.list(b"") == [(b"out", b"3")]
            assert await conformance_store.workflow_info(wid) == ("order", "completed")
            assert wid in await conformance_store.list_workflows("completed")
            assert wid not in await conformance_store.list_workflows("pending")
            assert wid not in {w for w, _ in await conformance_store.due_alarms(now=now + 7200)}
            # Released: the next claim need not wait for the lease to expire.
            again = await self._claimed(conformance_store, wid, now - 4, owner="w2")
            assert again.token > lease.token
            await conformance_store.finish_run(again, [], "sleeping", now + 100)
            assert await conformance_store.workflow_info(wid) == ("order", "sleeping")
            assert (wid, now + 100) in await conformance_store.due_alarms(now=now + 7200)
        finally:
            await driver.clear_alarm(wid)
            await driver.delete_prefix(b"")

    @pytest.mark.parametrize(("wake_at", "expected"), [(None, 50.0), (100.0, 50.0), (10.0, 10.0)])
    async def test_finish_run_keeps_an_alarm_set_since_the_claim(
        self, conformance_store: Any, wake_at: float | None, expected: float
    ) -> None:
        wid = _wid("keep")
        driver = conformance_store.driver(wid)
        now = time.time()
        try:
            lease = await self._claimed(conformance_store, wid, now - 5)
            await driver.set_alarm(wid, now + 50)  # a message arrived during the run
            await conformance_store.finish_run(
                lease, [], "sleeping", None if wake_at is None else now + wake_at
            )
            assert (wid, now + expected) in await conformance_store.due_alarms(now=now + 7200)
        finally:
            await driver.clear_alarm(wid)

    async def test_finish_run_is_fenced(self, conformance_store: Any) -> None:
        from engine.errors import LeaseLostError

        wid = _wid("stale")
        driver = conformance_store.driver(wid)
        now = time.time()
        try:
            await conformance_store.create_workflow(wid, "order", [(b"k", b"v")], now - 5)
            stale = await self._claimed(conformance_store, wid, now - 5)
            claims = await conformance_store.claim_due("w2", 30.0, 1000, now=now + 120)
            current = next(c for c in claims if c.workflow_id == wid)
            with pytest.raises(LeaseLostError):
                await conformance_store.finish_run(stale, [(b"k", b"stale")], "completed", None)
            assert await driver.list(b"") == [(b"k", b"v")]
            assert await conformance_store.workflow_info(wid) == ("order", "pending")
            assert (wid, now - 5) in await conformance_store.due_alarms(now=now)
            assert await conformance_store.renew(current, 30.0) is not None  # still held
        finally:
            await driver.clear_alarm(wid)
            await driver.delete_prefix(b"")

    async def test_wait_for_due_returns(self, conformance_store: Any) -> None:
        started = time.monotonic()
        await conformance_store.wait_for_due(0.05)
        assert time.monotonic() - started < 5.0
