"""Redis-specific behaviour beyond the shared conformance suites.

Limits, dropped connections, round trips, key isolation and pub/sub wake-ups: the things a
Redis deployment gets wrong that an in-memory driver cannot show.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

import drivers.redis as redis_driver
from drivers import _redis_scripts as scripts
from drivers.redis import RedisStore
from engine.errors import LeaseLostError, SerializationError, StorageError
from engine.store import Lease
from tests.support.redis_store import delete_namespace, open_store
from tests.support.services import REDIS_URL, unique_name

pytestmark = pytest.mark.anyio

if os.environ.get("ENGINE_TEST_STORES") and "redis" not in os.environ["ENGINE_TEST_STORES"]:
    pytest.skip("ENGINE_TEST_STORES excludes redis", allow_module_level=True)

ODD_IDS = ["a", "a:kv", "a}:kv", "{a}", "*", "a*", "é☃ ünï", "x" * 1024, "a:w:{61}:kv", ""]


BACKENDS = ("asyncio",)  # redis-py's asyncio client runs on asyncio only


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    async with open_store() as opened:
        yield opened


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


class CommandLog:
    """Records every command the store's client sends (one entry per round trip)."""

    def __init__(self, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        inner: Any = store._client.execute_command

        async def execute_command(*args: Any, **options: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return await inner(*args, **options)

        monkeypatch.setattr(store._client, "execute_command", execute_command)


async def test_value_too_large_raises_before_writing(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = store.driver("big")
    await driver.set(b"keep", b"old")
    monkeypatch.setattr(redis_driver, "MAX_VALUE_BYTES", 16)
    log = CommandLog(store, monkeypatch)
    with pytest.raises(SerializationError, match=r"redis store.*'huge'.*17 bytes"):
        await driver.set(b"huge", b"x" * 17)
    with pytest.raises(SerializationError, match="redis store"):
        await driver.batch([(b"keep", b"new"), (b"huge", b"x" * 17)])
    assert log.names == []  # rejected before anything reached Redis
    assert await driver.list(b"") == [(b"keep", b"old")]


async def test_batch_and_list_are_one_round_trip_without_keys_or_scan(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = store.driver("trips")
    await driver.batch([(b"warm", b"up")])  # loads the script once (NOSCRIPT fallback)
    log = CommandLog(store, monkeypatch)
    await driver.batch([(bytes([i]), b"v%d" % i) for i in range(200)] + [(b"warm", None)])
    assert log.names == ["EVALSHA"]
    listed = await driver.list(b"")
    await driver.list(b"\x10")
    assert log.names == ["EVALSHA"] * 3
    assert [k for k, _ in listed] == [bytes([i]) for i in range(200)]
    # The scripts themselves never enumerate the keyspace either.
    for source in (scripts.WRITE, scripts.LIST, scripts.CLAIM):
        assert "'KEYS'" not in source and "SCAN" not in source


async def test_batch_survives_flushed_script_cache(store: RedisStore, admin: Any) -> None:
    driver = store.driver("noscript")
    await driver.batch([(b"a", b"1")])
    await admin.script_flush()
    await driver.batch([(b"a", b"2"), (b"b", b"2")])
    assert await driver.list(b"") == [(b"a", b"2"), (b"b", b"2")]


async def _reads_processed(admin: Any) -> int:
    return int((await admin.info("stats"))["total_reads_processed"])


async def _quiet_reads(admin: Any) -> int:
    """``total_reads_processed`` once the server counts nothing but this INFO: the count is
    server-wide, and the connections an earlier test closed are still being read (EOF)."""
    last = await _reads_processed(admin)
    with anyio.move_on_after(2.0):
        while True:
            await anyio.sleep(0.02)
            now = await _reads_processed(admin)
            if now - last == 1:
                break
            last = now
    return await _reads_processed(admin)


async def _claim_all(store: RedisStore, wids: list[str]) -> dict[str, Lease]:
    now = time.time()
    for wid in wids:
        await store.driver(wid).set_alarm(wid, now - 10)
    return {c.workflow_id: c for c in await store.claim_due("w1", 30.0, 1000, now=now)}


async def test_concurrent_writes_share_a_round_trip_and_fail_alone(
    store: RedisStore, admin: Any
) -> None:
    wids = [f"together-{i}" for i in range(20)]
    leases = await _claim_all(store, wids)
    # The lease of together-7 expires and another worker takes it: its old holder is fenced.
    taken = {
        c.workflow_id: c for c in await store.claim_due("w2", 30.0, 1000, now=time.time() + 60)
    }
    assert sorted(taken) == sorted(wids)
    outcomes: dict[str, str] = {}

    async def write(wid: str) -> None:
        lease = taken[wid] if wid != "together-7" else leases[wid]
        try:
            await store.fenced_driver(lease).batch([(b"step", wid.encode())])
            outcomes[wid] = "written"
        except LeaseLostError:
            outcomes[wid] = "fenced"

    before = await _quiet_reads(admin)
    async with anyio.create_task_group() as tg:
        for wid in wids:
            tg.start_soon(write, wid)
    reads = await _reads_processed(admin) - before
    assert outcomes == {wid: "fenced" if wid == "together-7" else "written" for wid in wids}
    # Twenty scripts, one request (plus the INFO that counts); one by one it would be 21.
    assert reads <= 3
    for wid in wids:
        expected = [] if wid == "together-7" else [(b"step", wid.encode())]
        assert await store.driver(wid).list(b"") == expected


async def test_a_batched_round_trip_survives_a_flushed_script_cache(
    store: RedisStore, admin: Any
) -> None:
    drivers = [store.driver(f"reload-{i}") for i in range(5)]
    await drivers[0].batch([(b"warm", b"up")])
    await admin.script_flush()
    async with anyio.create_task_group() as tg:
        for i, driver in enumerate(drivers):
            tg.start_soon(driver.set, b"k", b"%d" % i)
    assert [await driver.get(b"k") for driver in drivers] == [b"%d" % i for i in range(5)]


async def test_a_failed_script_reload_fails_only_the_calls_that_needed_it(
    store: RedisStore, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, lister = store.driver("reload-writer"), store.driver("reload-lister")
    await writer.set(b"warm", b"up")
    await admin.script_flush()
    await admin.script_load(scripts.WRITE)  # the write script is back, the list one is not

    async def refused(*_: Any) -> Any:
        raise redis_driver.RedisError("connection lost while loading")

    monkeypatch.setattr(store._client, "script_load", refused)
    outcomes: dict[str, Any] = {}

    async def write() -> None:
        await writer.set(b"k", b"v")
        outcomes["write"] = "written"

    async def read() -> None:
        with pytest.raises(StorageError, match="list") as caught:
            await lister.list(b"")
        outcomes["list"] = caught.value

    async with anyio.create_task_group() as tg:  # one pipeline: both in the same turn
        tg.start_soon(write)
        tg.start_soon(read)
    assert outcomes["write"] == "written"
    assert "connection lost while loading" in str(outcomes["list"])
    assert await writer.get(b"k") == b"v"


async def test_a_call_cancelled_before_it_went_out_is_never_sent(store: RedisStore) -> None:
    drivers = [store.driver(f"cancel-{i}") for i in range(5)]
    async with anyio.create_task_group() as tg:
        for i, driver in enumerate(drivers):
            tg.start_soon(driver.set, b"k", b"%d" % i)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.driver("cancel-x").set(b"k", b"x")
    assert [await driver.get(b"k") for driver in drivers] == [b"%d" % i for i in range(5)]
    assert await store.driver("cancel-x").get(b"k") is None


async def test_a_later_call_never_overtakes_one_already_sent(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first write is slow on the wire (a connection being set up, say) and its caller
    # gives up waiting; a write made after it must still land after it.
    inner: Any = store._client.evalsha
    delays = [0.2]

    async def evalsha(*args: Any) -> Any:
        if delays:
            await anyio.sleep(delays.pop())
        return await inner(*args)

    monkeypatch.setattr(store._client, "evalsha", evalsha)
    driver = store.driver("order")
    with anyio.move_on_after(0.05):
        await driver.set(b"k", b"first")
    await driver.set(b"k", b"second")
    await anyio.sleep(0.3)  # past the slow write, wherever it went
    assert await driver.get(b"k") == b"second"


async def test_close_waits_for_calls_already_sent() -> None:
    # Otherwise close() returns with calls still to go out, which would reopen a connection
    # after the store was closed.
    namespace = unique_name("redis")
    store = await RedisStore.connect(REDIS_URL, namespace=namespace)
    events: list[str] = []

    async def write(i: int) -> None:
        await store.driver(f"closing-{i}").set(b"k", b"%d" % i)
        events.append(f"written {i}")

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(write, i)
        await anyio.sleep(0)  # the calls are handed over, their replies not yet in
        await store.close()
        events.append("closed")
    async with await RedisStore.connect(REDIS_URL, namespace=namespace) as reopened:
        try:
            got = [await reopened.driver(f"closing-{i}").get(b"k") for i in range(5)]
        finally:
            await delete_namespace(reopened)
    assert events[-1] == "closed" and sorted(events[:-1]) == [f"written {i}" for i in range(5)]
    assert got == [b"%d" % i for i in range(5)]


async def test_more_keys_than_one_script_chunk(store: RedisStore) -> None:
    driver = store.driver("chunks")
    keys = [b"k%05d" % i for i in range(2500)]
    await driver.batch([(key, key) for key in keys])
    assert [k for k, _ in await driver.list(b"k")] == keys
    await driver.delete_range(b"k00100", b"k02400")
    assert len(await driver.list(b"")) == 200
    await driver.delete_prefix(b"")
    assert await driver.list(b"") == []


async def _kill_clients(admin: Any, name: str) -> int:
    killed = 0
    for client in await admin.client_list():
        if client.get("name") == name:
            await admin.execute_command("CLIENT", "KILL", "ID", client["id"])
            killed += 1
    return killed


async def test_killed_connection_never_half_writes_a_batch(admin: Any) -> None:
    name = f"durable-kill-{os.getpid()}-{time.monotonic_ns()}"
    namespace = f"t_redis_kill_{time.monotonic_ns()}"
    store = await RedisStore.connect(REDIS_URL, namespace=namespace, client_name=name)
    try:
        await _batches_survive_kills(store, admin, name)
    finally:
        async for key in admin.scan_iter(match=f"{namespace}:*"):
            await admin.unlink(key)
        await store.close()


async def _batches_survive_kills(store: RedisStore, admin: Any, name: str) -> None:
    driver = store.driver("victim")
    keys = [b"k%02d" % i for i in range(20)]
    await driver.batch([(key, b"0") for key in keys])
    assert await _kill_clients(admin, name) >= 1
    await driver.batch([(key, b"1") for key in keys])  # redis-py reconnects and retries
    assert {v for _, v in await driver.list(b"")} == {b"1"}

    outcomes = {"ok": 0, "storage_error": 0, "kills": 0}
    stop = anyio.Event()

    async def writer() -> None:
        generation = 2
        while not stop.is_set():
            try:
                await driver.batch([(key, b"%d" % generation) for key in keys])
                outcomes["ok"] += 1
            except StorageError:  # allowed, as long as the batch did not half-land
                outcomes["storage_error"] += 1
            generation += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        for _ in range(8):
            await anyio.sleep(0.01)
            outcomes["kills"] += await _kill_clients(admin, name)
        stop.set()
    values = [v for _, v in await driver.list(b"")]
    assert len(values) == 20 and len(set(values)) == 1  # every key from the same batch
    assert outcomes["kills"] >= 3 and outcomes["ok"] > 5


async def test_subscribe_wakes_on_notify_from_another_process(store: RedisStore) -> None:
    other = await RedisStore.connect(REDIS_URL, namespace=store.namespace)
    try:
        async with store.driver("live").subscribe() as wakeups:
            await other.driver("elsewhere").notify("elsewhere")
            await other.driver("live").notify("live")
            with anyio.fail_after(3):
                await wakeups.__anext__()
            with anyio.move_on_after(0.2) as scope:  # "elsewhere" did not reach this one
                await wakeups.__anext__()
            assert scope.cancelled_caught
    finally:
        await other.close()


async def test_wait_for_due_returns_on_set_alarm(store: RedisStore) -> None:
    await store.wait_for_due(0.0)  # subscribes; later alarms are buffered, never missed
    other = await RedisStore.connect(REDIS_URL, namespace=store.namespace)
    try:
        await other.driver("due").set_alarm("due", time.time())
        started = time.monotonic()
        await store.wait_for_due(5.0)
        assert time.monotonic() - started < 2.0
    finally:
        await other.close()


async def test_odd_workflow_ids_are_isolated_and_claimable(store: RedisStore) -> None:
    for index, wid in enumerate(ODD_IDS):
        await store.driver(wid).batch([(b"k", b"%d" % index), (b"own%d" % index, b"x")])
    for index, wid in enumerate(ODD_IDS):
        expected = [(b"k", b"%d" % index), (b"own%d" % index, b"x")]
        assert await store.driver(wid).list(b"") == expected
    # Every workflow key carries its id in hex inside one hash tag: no id forges a separator.
    client = store._client
    names = [key.decode() async for key in client.scan_iter(match=f"{store.namespace}:w:*")]
    assert names and all(n.count("{") == 1 and n.count("}") == 1 for n in names)

    now = time.time()
    for wid in ODD_IDS:
        await store.driver(wid).set_alarm(wid, now - 1)
    claims = {c.workflow_id: c for c in await store.claim_due("w1", 30.0, 100, now=now)}
    assert set(claims) == set(ODD_IDS)
    for index, wid in enumerate(ODD_IDS):  # the script's lease key matches the driver's
        await store.fenced_driver(claims[wid]).set(b"k", b"fenced%d" % index)
        assert await store.driver(wid).get(b"k") == b"fenced%d" % index
        await store.release(claims[wid])
        with pytest.raises(LeaseLostError):
            await store.fenced_driver(claims[wid]).delete_prefix(b"")
        await store.driver(wid).clear_alarm(wid)
    assert await store.due_alarms(now=now + 10) == []


async def test_fenced_writes_stop_when_the_lease_expires(store: RedisStore) -> None:
    wid = "expiring"
    await store.driver(wid).set_alarm(wid, time.time() - 1)
    [lease] = await store.claim_due("w1", 0.2, 10)
    fenced = store.fenced_driver(lease)
    await fenced.batch([(b"a", b"1")])
    await anyio.sleep(0.3)
    with pytest.raises(LeaseLostError, match="expiring"):
        await fenced.batch([(b"a", b"2"), (b"b", b"2")])
    with pytest.raises(LeaseLostError):
        await fenced.delete_range(b"a", b"z")
    assert await store.renew(lease, 30.0) is None
    assert await store.driver(wid).list(b"") == [(b"a", b"1")]


async def test_unreachable_server_raises_storage_error() -> None:
    with pytest.raises(StorageError, match="redis store connect failed"):
        await RedisStore.connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)


async def test_a_burst_beyond_the_pool_waits_for_connections() -> None:
    """More concurrent calls than connections: they queue for one instead of failing."""
    from engine import start_workflow

    async with open_store(max_connections=4) as store:
        ids = [f"burst-{n}" for n in range(300)]
        async with anyio.create_task_group() as tg:
            for n, wid in enumerate(ids):
                tg.start_soon(start_workflow, store, "flow", wid, n)
        assert set(await store.list_workflows("pending", limit=1000)) == set(ids)
