"""The Redis store's one pub/sub connection: shared by every subscriber, never a pool
connection each, and no wake-up lost when it drops and comes back."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from drivers import _redis_pubsub
from drivers.redis import RedisStore
from engine import WorkflowContext, WorkflowState, run_workflow
from tests.support.redis_store import open_store
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.anyio

if os.environ.get("ENGINE_TEST_STORES") and "redis" not in os.environ["ENGINE_TEST_STORES"]:
    pytest.skip("ENGINE_TEST_STORES excludes redis", allow_module_level=True)

BACKENDS = ("asyncio",)  # redis-py's asyncio client runs on asyncio only
WAKE_WITHIN = 5.0


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def named() -> AsyncIterator[tuple[RedisStore, str]]:
    """A store whose connections carry a client name of their own, to find them in CLIENT
    LIST."""
    name = f"durable-pubsub-{os.getpid()}-{time.monotonic_ns()}"
    async with open_store(client_name=name) as store:
        yield store, name


async def _ours(admin: Any, name: str) -> list[dict[str, Any]]:
    return [c for c in await admin.client_list() if c.get("name") == name]


async def _kill_pubsub(admin: Any, name: str) -> int:
    """``CLIENT KILL TYPE pubsub``, narrowed to this store's connection (by id): other
    tests may share the server."""
    killed = 0
    for client in await _ours(admin, name):
        if "P" in client["flags"]:
            killed += await admin.execute_command(
                "CLIENT", "KILL", "TYPE", "pubsub", "ID", client["id"]
            )
    return killed


class Subscribers:
    """``count`` subscribers on their own workflows, each counting the wake-ups it gets."""

    def __init__(self, store: RedisStore, count: int, label: str) -> None:
        self.store = store
        self.ids = [f"{label}-{i}" for i in range(count)]
        self.woken = dict.fromkeys(self.ids, 0)
        self.subscribed = 0
        self.all_subscribed = anyio.Event()
        self.stop = anyio.Event()

    async def run_one(self, workflow_id: str) -> None:
        async with self.store.driver(workflow_id).subscribe() as wakeups:
            self.subscribed += 1
            if self.subscribed == len(self.ids):
                self.all_subscribed.set()
            async with anyio.create_task_group() as tg:

                async def count() -> None:
                    async for _ in wakeups:
                        self.woken[workflow_id] += 1

                tg.start_soon(count)
                await self.stop.wait()
                tg.cancel_scope.cancel()

    async def until(self, check: Callable[[], bool], what: str) -> None:
        try:
            with anyio.fail_after(WAKE_WITHIN):
                while not check():
                    await anyio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"not within {WAKE_WITHIN} s: {what}") from None

    def every_woken(self, at_least: int = 1) -> bool:
        return all(n >= at_least for n in self.woken.values())


async def _with_subscribers(
    store: RedisStore, count: int, label: str, body: Callable[[Subscribers], Awaitable[None]]
) -> Subscribers:
    subscribers = Subscribers(store, count, label)
    async with anyio.create_task_group() as tg:
        for workflow_id in subscribers.ids:
            tg.start_soon(subscribers.run_one, workflow_id)
        with anyio.fail_after(30):
            await subscribers.all_subscribed.wait()
        try:
            await body(subscribers)
        finally:
            subscribers.stop.set()
    return subscribers


async def test_500_subscribers_share_one_connection_and_each_is_woken(
    named: tuple[RedisStore, str], admin: Any
) -> None:
    store, name = named
    pool = store._client.connection_pool

    async def body(subscribers: Subscribers) -> None:
        clients = await _ours(admin, name)
        pubsub = [c for c in clients if "P" in c["flags"]]
        assert len(pubsub) == 1 and int(pubsub[0]["sub"]) == 500
        assert len(clients) <= 2  # the pub/sub connection and the one that pinged at connect
        assert len(pool._in_use_connections) == 1
        async with admin.pipeline(transaction=False) as pipe:  # as another process would
            for workflow_id in subscribers.ids:
                pipe.publish(store._channel(workflow_id), b"")
            await pipe.execute()
        await subscribers.until(subscribers.every_woken, "every subscriber woken")

    subscribers = await _with_subscribers(store, 500, "many", body)
    assert subscribers.every_woken()
    # Gone with their subscribers: the connection stays, subscribed to nothing.
    with anyio.fail_after(WAKE_WITHIN):
        while any(int(c["sub"]) for c in await _ours(admin, name)):
            await anyio.sleep(0.01)
    assert store._pubsub._channels == {}


@pytest.mark.parametrize(("connections", "runs"), [(4, 20), (50, 60), (50, 500)])
async def test_live_runs_beyond_the_pool_size_all_complete(connections: int, runs: int) -> None:
    """The issue: each live run held a pub/sub connection of the pool, so with as many live
    runs as connections (50 by default) nothing could write, and nothing completed."""

    async def waits_for_go(ctx: WorkflowContext, _: None) -> Any:
        [data] = await ctx.queue.next("wait", names=["go"])
        return await ctx.step("done", lambda: data)

    async with open_store(max_connections=connections, connection_wait=5.0) as store:
        ids = [f"live-{i}" for i in range(runs)]
        handles = [
            run_workflow(wid, waits_for_go, None, store.driver(wid), mode="live") for wid in ids
        ]
        results: dict[str, Any] = {}

        async def run(handle: Any) -> None:
            results[handle.workflow_id] = await handle.result()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for handle in handles:
                    tg.start_soon(run, handle)
                await anyio.sleep(0.3)  # every run subscribed and waiting
                for handle in handles:
                    await handle.message("go", handle.workflow_id)
        assert {wid: (r.state, r.output) for wid, r in results.items()} == {
            wid: (WorkflowState.COMPLETED, wid) for wid in ids
        }


async def test_a_dropped_connection_wakes_every_subscriber_and_resubscribes(
    named: tuple[RedisStore, str], admin: Any
) -> None:
    store, name = named

    async def body(subscribers: Subscribers) -> None:
        assert store._pubsub.connections == 1
        assert await _kill_pubsub(admin, name) == 1
        # Published before the reconnect subscribed again: lost, and the reconnect's wake-up
        # stands in for it; or after: delivered. Either way every subscriber wakes.
        for workflow_id in subscribers.ids:
            await admin.publish(store._channel(workflow_id), b"")
        await subscribers.until(subscribers.every_woken, "every subscriber woken")
        assert store._pubsub.connections == 2
        # Every channel is subscribed again on the new connection.
        clients = await _ours(admin, name)
        assert [int(c["sub"]) for c in clients if "P" in c["flags"]] == [50]
        before = dict(subscribers.woken)
        for workflow_id in subscribers.ids:
            await admin.publish(store._channel(workflow_id), b"")
        await subscribers.until(
            lambda: all(subscribers.woken[w] > before[w] for w in subscribers.ids), "again"
        )

    await _with_subscribers(store, 50, "dropped", body)


async def test_a_reconnect_alone_wakes_each_subscriber_once(
    named: tuple[RedisStore, str], admin: Any
) -> None:
    store, name = named

    async def body(subscribers: Subscribers) -> None:
        assert await _kill_pubsub(admin, name) == 1
        await subscribers.until(subscribers.every_woken, "every subscriber woken")
        await anyio.sleep(0.3)
        assert set(subscribers.woken.values()) == {1}

    await _with_subscribers(store, 20, "rewake", body)


async def test_wait_for_due_is_woken_by_a_reconnect(
    named: tuple[RedisStore, str], admin: Any
) -> None:
    store, name = named
    await store.wait_for_due(0.0)  # subscribed from now on, on the shared connection
    async with store.driver("live").subscribe():
        assert len([c for c in await _ours(admin, name) if "P" in c["flags"]]) == 1
    assert await _kill_pubsub(admin, name) == 1
    started = time.monotonic()
    await store.wait_for_due(WAKE_WITHIN)
    assert time.monotonic() - started < WAKE_WITHIN - 1
    # And still subscribed: an alarm set elsewhere ends the next wait.
    await store.wait_for_due(0.0)  # consumes nothing, or a wake-up already held
    await store.driver("due").set_alarm("due", time.time())
    started = time.monotonic()
    await store.wait_for_due(WAKE_WITHIN)
    assert time.monotonic() - started < WAKE_WITHIN - 1


async def test_a_subscriber_leaving_and_coming_back_misses_nothing(
    named: tuple[RedisStore, str],
) -> None:
    # Unsubscribe and subscribe again, back to back: the new subscription must be confirmed
    # by its own SUBSCRIBE, not by the reply to an earlier one.
    store, _ = named
    driver = store.driver("again")
    for _ in range(20):
        async with driver.subscribe():
            pass
        async with driver.subscribe() as wakeups:
            await driver.notify("again")
            with anyio.fail_after(WAKE_WITHIN):
                await wakeups.__anext__()


async def test_subscribing_fails_cleanly_without_a_server(
    named: tuple[RedisStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = named  # set up before monkeypatch, so torn down after it is undone
    monkeypatch.setattr(_redis_pubsub, "_CONFIRM_SECONDS", 0.3)

    async def refused(*_: Any, **__: Any) -> Any:
        raise ConnectionRefusedError("no server")

    monkeypatch.setattr(store._client.connection_pool, "get_connection", refused)
    from engine.errors import StorageError

    with pytest.raises(StorageError, match="no confirmation"):
        async with store.driver("nowhere").subscribe():
            pass
    assert store._pubsub._channels == {}


async def test_churn_and_drops_lose_no_wake_up(named: tuple[RedisStore, str], admin: Any) -> None:
    """Subscribers come and go on a few shared channels while the connection is killed
    again and again; each one publishes once it is subscribed and must be woken."""
    store, name = named
    rounds, missed = 0, []
    stopped = anyio.Event()

    async def kill_again_and_again() -> None:
        while not stopped.is_set():
            await anyio.sleep(0.02)
            await _kill_pubsub(admin, name)

    async def subscriber(seed: int) -> None:
        nonlocal rounds
        for step in range(40):
            workflow_id = f"churn-{(seed + step) % 5}"
            async with store.driver(workflow_id).subscribe() as wakeups:
                await admin.publish(store._channel(workflow_id), b"")
                with anyio.move_on_after(WAKE_WITHIN) as scope:
                    await wakeups.__anext__()
                if scope.cancelled_caught:
                    missed.append((seed, step))
                rounds += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_again_and_again)
        async with anyio.create_task_group() as subscribers:
            for seed in range(30):
                subscribers.start_soon(subscriber, seed)
        stopped.set()
    assert missed == [] and rounds == 30 * 40
    assert store._pubsub.connections > 3
    assert store._pubsub._channels == {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start_server(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = aioredis.Redis(port=port)
    try:
        with anyio.fail_after(10):
            while True:
                try:
                    await client.ping()
                    return server
                except aioredis.ConnectionError:
                    await anyio.sleep(0.02)
    finally:
        await client.aclose()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_subscribers_are_woken_when_a_restarted_server_is_back() -> None:
    port = _free_port()
    server = await _start_server(port)
    try:
        store = await RedisStore.connect(f"redis://127.0.0.1:{port}/0", namespace="restart")
        async with store:

            async def body(subscribers: Subscribers) -> None:
                server.kill()
                server.wait()
                await anyio.sleep(0.5)  # the reader keeps trying meanwhile
                assert not any(subscribers.woken.values())
                restarted = await _start_server(port)
                try:
                    await subscribers.until(subscribers.every_woken, "woken once it is back")
                    before = dict(subscribers.woken)
                    for workflow_id in subscribers.ids:
                        await store.driver(workflow_id).notify(workflow_id)
                    await subscribers.until(
                        lambda: all(subscribers.woken[w] > before[w] for w in subscribers.ids),
                        "subscribed again on the restarted server",
                    )
                finally:
                    restarted.kill()
                    restarted.wait()

            await _with_subscribers(store, 10, "restart", body)
    finally:
        server.kill()
        server.wait()
