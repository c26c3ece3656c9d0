"""PostgreSQL-specific behaviour the shared suites cannot reach: schema, limits, failures."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

import anyio
import asyncpg
import pytest

import drivers.postgres
from drivers.postgres import PostgresStore
from engine.errors import LeaseLostError, SerializationError, StorageError
from tests.support.postgres_store import admin_connection, open_store
from tests.support.services import DATABASE_URL, unique_name

pytestmark = pytest.mark.anyio


BACKENDS = ("asyncio",)  # asyncpg runs on asyncio only


def _wid(label: str) -> str:
    return f"pg-{label}-{uuid.uuid4().hex[:8]}"


async def test_schema_creation_is_idempotent_under_concurrent_connects() -> None:
    schema = unique_name("pg_schema")
    async with open_store(schema=schema) as first:
        await first.driver("w").set(b"k", b"v")
        stores: list[PostgresStore] = []

        async def connect() -> None:
            stores.append(await PostgresStore.connect(DATABASE_URL, schema=schema))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(connect)
        for store in stores:
            assert await store.driver("w").get(b"k") == b"v"  # existing data untouched
            await store.close()
        assert await first._pool.fetchval(f'SELECT count(*) FROM "{schema}".schema_version') == 1


async def test_connecting_beside_running_writers_takes_no_table_lock() -> None:
    # A worker starting while others write must not queue behind them: the DDL's CREATE
    # INDEX waits for every open write on its table (and so deadlocked against them).
    schema = unique_name("pg_schema")
    async with open_store(schema=schema) as first:
        conn = await asyncpg.connect(DATABASE_URL)
        try:
            async with conn.transaction():
                await conn.execute(f'LOCK TABLE "{schema}".alarms IN ROW EXCLUSIVE MODE')
                with anyio.fail_after(10):
                    second = await PostgresStore.connect(DATABASE_URL, schema=schema)
                await second.close()
        finally:
            await conn.close()
        assert await first.claim_due("w", 30.0, 10) == []


async def test_an_older_schema_is_upgraded_at_connect() -> None:
    schema = unique_name("pg_schema")
    async with open_store(schema=schema) as first:
        wid = _wid("upgrade")
        await first.driver(wid).set_alarm(wid, time.time() - 1)
        # What a version-1 store looked like: no claim function.
        await first._pool.execute(f'DROP FUNCTION "{schema}".claim_due')
        await first._pool.execute(f'UPDATE "{schema}".schema_version SET version = 1')
        async with await PostgresStore.connect(DATABASE_URL, schema=schema) as upgraded:
            version = await upgraded._pool.fetchval(
                f'SELECT version FROM "{schema}".schema_version'
            )
            assert version == drivers.postgres.SCHEMA_VERSION
            assert [c.workflow_id for c in await upgraded.claim_due("w", 30.0, 10)] == [wid]


async def test_a_version_2_schema_gains_updated_at_in_place() -> None:
    schema = unique_name("pg_schema")
    async with open_store(schema=schema) as first:
        now = time.time()
        await first.create_workflow("kept", "order", [(b"in", b"1")], now - 1)
        # What a version-2 store looked like: no updated_at, its index, nor the claim function.
        s = f'"{schema}"'
        for ddl in (
            f"DROP FUNCTION {s}.claim",
            f"DROP INDEX {s}.workflows_updated",
            f"ALTER TABLE {s}.workflows DROP COLUMN updated_at",
            f"UPDATE {s}.schema_version SET version = 2",
        ):
            await first._pool.execute(ddl)
        async with await PostgresStore.connect(DATABASE_URL, schema=schema) as upgraded:
            version = await upgraded._pool.fetchval(f"SELECT version FROM {s}.schema_version")
            assert version == drivers.postgres.SCHEMA_VERSION == 3
            row = await upgraded.workflow_row("kept")  # kept, and oldest of all
            assert row is not None and (row.state, row.updated_at) == ("pending", 0.0)
            assert await upgraded.driver("kept").list(b"") == [(b"in", b"1")]
            index = await upgraded._pool.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
                schema,
                "workflows_updated",
            )
            assert index.endswith("(updated_at DESC, workflow_id)")
            lease = await upgraded.claim("kept", "w", 30.0, "order")
            assert lease is not None and lease.rows == [(b"in", b"1")]
            # A version-2 worker still running writes rows the new layout takes.
            await upgraded._pool.execute(f"INSERT INTO {s}.workflows VALUES ('v2', 'n', 'pending')")
            assert [r.workflow_id for r in await upgraded.workflow_rows()] == ["kept", "v2"]


async def test_a_newer_schema_is_refused() -> None:
    schema = unique_name("pg_schema")
    async with open_store(schema=schema) as first:
        newer = drivers.postgres.SCHEMA_VERSION + 1
        await first._pool.execute(f'UPDATE "{schema}".schema_version SET version = {newer}')
        with pytest.raises(StorageError, match=f"newer version {newer}"):
            await PostgresStore.connect(DATABASE_URL, schema=schema)


async def test_schema_name_is_validated() -> None:
    for bad in ('x"; DROP SCHEMA public; --', "Upper", "1abc", "", "a" * 49):
        with pytest.raises(ValueError):
            await PostgresStore.connect(DATABASE_URL, schema=bad)


async def test_too_large_value_raises_before_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drivers.postgres, "MAX_VALUE_BYTES", 16)
    async with open_store() as store:
        driver = store.driver(_wid("large"))
        await driver.set(b"keep", b"old")
        with pytest.raises(SerializationError) as caught:
            await driver.batch([(b"keep", b"new"), (b"big", b"x" * 17), (b"other", b"y")])
        assert "postgres store" in str(caught.value) and "b'big'" in str(caught.value)
        assert "17 bytes" in str(caught.value)
        with pytest.raises(SerializationError):
            await driver.set(b"big", b"x" * 17)
        assert await driver.list(b"") == [(b"keep", b"old")]


async def _backend_pids(store: PostgresStore) -> list[int]:
    """Server pids of every pool connection, the one the store holds for writes included."""
    held = [store._statements.held] if store._statements.held is not None else []
    conns = [await store._pool.acquire() for _ in range(store._pool.get_max_size() - len(held))]
    try:
        return [conn.get_server_pid() for conn in held + conns]
    finally:
        for conn in conns:
            await store._pool.release(conn)


async def test_connections_killed_by_the_server_never_leave_half_a_batch() -> None:
    admin = await admin_connection()
    try:
        async with open_store(min_size=2, max_size=2) as store:
            driver = store.driver(_wid("kill"))
            await driver.set(b"before", b"1")
            for round_ in range(3):
                pids = await _backend_pids(store)
                await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
                if round_ == 1:
                    await anyio.sleep(0.05)  # the pool notices: the write gets a fresh connection
                writes = [(bytes([round_, n]), b"v" * 125) for n in range(3)]
                try:
                    await driver.batch(writes)
                except StorageError as exc:
                    assert exc.operation == "batch"
                listed = dict(await driver.list(bytes([round_])))
                assert len(listed) in (0, 3)  # all or nothing
                await driver.batch(writes)  # later calls work on fresh connections
                assert len(await driver.list(bytes([round_]))) == 3
            assert await driver.get(b"before") == b"1"
    finally:
        await admin.close()


async def test_key_order_is_bytewise_in_a_non_c_collation_database() -> None:
    admin = await admin_connection()
    database = unique_name("pg_icu")
    try:
        await admin.execute(
            f'CREATE DATABASE "{database}" TEMPLATE template0 ENCODING UTF8'
            " LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    except asyncpg.PostgresError as exc:  # older server or no CREATEDB: nothing to compare
        await admin.close()
        pytest.skip(f"cannot create an ICU-collated database: {exc}")
    dsn = urllib.parse.urlsplit(DATABASE_URL)._replace(path=f"/{database}").geturl()
    try:
        async with await PostgresStore.connect(dsn, schema="durable") as store:
            assert await store._pool.fetchval("SELECT 'a' < 'B'")  # text order is not bytes
            keys = [
                b"\x00",
                b"\x00\x00",
                b"\x7f",
                b"\x80",
                b"\x80\x00",
                b"\xff",
                b"\xff\xff",
                b"B",
                b"a",
                b"a\x00",
                b"ab",
                b"\xc3\xa9",
                b"e",
                b"Z",
            ]
            driver = store.driver("order")
            await driver.batch([(key, key) for key in reversed(keys)])
            assert [key for key, _ in await driver.list(b"")] == sorted(keys)
            assert [key for key, _ in await driver.list(b"\x80")] == [b"\x80", b"\x80\x00"]
            await driver.delete_range(b"\x00\x00", b"\xff")
            assert [key for key, _ in await driver.list(b"")] == [b"\x00", b"\xff", b"\xff\xff"]
            for wid in ("b", "B", "a", "é"):
                await store.create_workflow(wid, "n", [], 0.0)
            assert await store.list_workflows() == sorted(["b", "B", "a", "é"])
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def _next_wakeup(wakeups: Any, timeout: float) -> bool:
    with anyio.move_on_after(timeout):
        await wakeups.__anext__()
        return True
    return False


async def test_subscribe_gets_notifications_for_its_workflow_only() -> None:
    async with open_store() as store:
        wid, other = _wid("live"), _wid("other")
        async with store.driver(wid).subscribe() as wakeups:
            await store.driver(other).notify(other)
            assert not await _next_wakeup(wakeups, 0.2)
            await store.driver(wid).notify(wid)
            assert await _next_wakeup(wakeups, 5)
            # Another process (here: another store on the same schema) reaches it too.
            async with await PostgresStore.connect(DATABASE_URL, schema=store.schema) as peer:
                await peer.notify(wid)
            assert await _next_wakeup(wakeups, 5)
            # A lost LISTEN connection wakes the subscriber, which then listens again.
            admin = await admin_connection()
            try:
                pid = store._listener.connection.get_server_pid()
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            assert await _next_wakeup(wakeups, 5)
            await store.notify(wid)
            assert await _next_wakeup(wakeups, 5)


async def test_wait_for_due_wakes_on_set_alarm() -> None:
    async with open_store() as store:
        await store.wait_for_due(0.01)  # starts the listener
        wid = _wid("alarm")
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.wait_for_due, 30.0)
            await anyio.sleep(0.1)
            await store.driver(wid).set_alarm(wid, time.time())
        assert time.monotonic() - started < 5.0


async def test_fenced_range_deletes_write_nothing_after_takeover() -> None:
    async with open_store() as store:
        wid = _wid("fence")
        driver = store.driver(wid)
        await driver.batch([(b"a", b"1"), (b"b", b"2")])
        now = time.time()
        await driver.set_alarm(wid, now - 1)
        [first] = await store.claim_due("w1", 30.0, 10, now=now)
        [second] = await store.claim_due("w2", 30.0, 10, now=now + 60)
        assert second.token == first.token + 1
        stale = store.fenced_driver(first)
        for call in (stale.delete_prefix(b""), stale.delete_range(b"a", b"z"), stale.delete(b"a")):
            with pytest.raises(LeaseLostError):
                await call
        assert len(await driver.list(b"")) == 2
        await store.release(second)
        [third] = await store.claim_due("w3", 30.0, 10, now=now + 60)
        assert third.token == second.token + 1  # tokens never repeat after a release
        await store.fenced_driver(third).delete_prefix(b"")
        assert await driver.list(b"") == []


async def test_concurrent_claims_are_disjoint() -> None:
    async with open_store() as store:
        now = time.time()
        wids = [_wid(f"due{n}") for n in range(20)]
        for wid in wids:
            await store.driver(wid).set_alarm(wid, now - 1)
        peers = [await PostgresStore.connect(DATABASE_URL, schema=store.schema) for _ in range(3)]
        claims: list[list[str]] = []

        async def claim(peer: PostgresStore, owner: str) -> None:
            claims.append([c.workflow_id for c in await peer.claim_due(owner, 30.0, 8, now=now)])

        try:
            async with anyio.create_task_group() as tg:
                for n, peer in enumerate([store, *peers]):
                    tg.start_soon(claim, peer, f"w{n}")
        finally:
            for peer in peers:
                await peer.close()
        flat = [wid for claimed in claims for wid in claimed]
        assert len(flat) == len(set(flat)) == 20  # nobody claimed a workflow twice


async def test_sql_injection_in_workflow_ids_is_harmless() -> None:
    async with open_store() as store:
        hostile = [
            "x'; DROP TABLE kv; --",
            'y"); DELETE FROM alarms; --',
            "z\\'; TRUNCATE workflows; SELECT '",
            "$1; $2 %s %(x)s",
        ]
        bystander = store.driver("bystander")
        await bystander.set(b"k", b"safe")
        await store.create_workflow("bystander", "n", [], time.time() + 3600)
        for wid in hostile:
            driver = store.driver(wid)
            made = await store.create_workflow(wid, wid, [(b"k", wid.encode())], time.time() - 1)
            assert made.created
            await driver.notify(wid)
        for wid in hostile:
            assert await store.driver(wid).get(b"k") == wid.encode()
            assert await store.workflow_info(wid) == (wid, "pending")
        due = {w for w, _ in await store.due_alarms()}
        assert set(hostile) <= due
        claimed = await store.claim_due("w1", 30.0, 100)
        assert {lease.workflow_id for lease in claimed} == set(hostile)
        for wid in hostile:
            await store.driver(wid).delete_prefix(b"")
        assert await bystander.get(b"k") == b"safe"
        assert await store.workflow_info("bystander") == ("n", "pending")


async def test_a_claim_sees_a_write_that_landed_while_it_waited() -> None:
    """The previous holder's fenced write, judged unexpired on its clock, is in flight when
    the lease expires: the claim waits for its lock, and must then read the namespace with
    that write in it (else the new holder would run the landed step again)."""
    admin = await admin_connection()
    try:
        async with open_store() as store:
            wid = f"straddle-{uuid.uuid4().hex[:8]}"
            now = time.time()
            made = await store.create_workflow(
                wid, "n", [(b"in", b"1")], now - 1, owner="w1", lease=0.5
            )
            assert made.lease is not None
            transaction = admin.transaction()
            await transaction.start()
            write = store._statements.sql["upsert fenced"]
            args = (wid, made.lease.token, now, [b"step"], [b"done"])
            assert await admin.fetchval(write, *args) == 1  # allowed, not yet committed
            claims: list[Any] = []

            async def claim() -> None:
                taken = await store.claim_due("w2", 30.0, 10, now=now + 1)
                claims.extend(c for c in taken if c.workflow_id == wid)

            async with anyio.create_task_group() as tg:
                tg.start_soon(claim)
                await anyio.sleep(0.3)
                assert not claims  # waiting for the holder's lock
                await transaction.commit()
            assert claims[0].token > made.lease.token
            assert claims[0].rows == [(b"in", b"1"), (b"step", b"done")]
    finally:
        await admin.close()
