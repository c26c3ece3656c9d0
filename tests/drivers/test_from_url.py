"""Every store builds itself from a URL, and ``open_store`` finds it by scheme alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Self

import asyncpg
import pytest

from drivers.leveldb import LevelDBStore
from drivers.memory import MemoryStore
from drivers.postgres import PostgresStore
from drivers.redis import RedisStore
from engine import cli
from engine.errors import StorageError
from engine.store import WorkerStore
from tests.support.postgres_store import admin_connection
from tests.support.redis_store import delete_namespace
from tests.support.services import DATABASE_URL, REDIS_URL, unique_name, unreachable

pytestmark = pytest.mark.anyio

BACKENDS = ("asyncio",)  # the Redis and Postgres clients run on asyncio only


async def test_memory_from_url() -> None:
    store = await MemoryStore.from_url("memory://", worker_poll_interval=0.25, latency=0.001)
    async with store:
        assert isinstance(store, WorkerStore)
        assert (store.worker_poll_interval, store.latency) == (0.25, 0.001)
        await store.driver("wf").set(b"k", b"v")
        assert await store.driver("wf").get(b"k") == b"v"


async def test_leveldb_from_url(tmp_path: Path) -> None:
    url = f"leveldb://{tmp_path}/my%20store"
    async with await LevelDBStore.from_url(url, worker_poll_interval=0.25, sync=False) as store:
        assert isinstance(store, WorkerStore)
        assert store.path == str(tmp_path / "my store")
        assert (store.worker_poll_interval, store.sync) == (0.25, False)
        await store.driver("wf").set(b"k", b"v")
    async with await LevelDBStore.from_url(url) as store:
        assert store.sync is True and await store.driver("wf").get(b"k") == b"v"
    with pytest.raises(ValueError, match="needs a path"):
        await LevelDBStore.from_url("leveldb://")


async def test_redis_from_url() -> None:
    namespace = unique_name("redis_url")
    try:
        store = await RedisStore.from_url(
            REDIS_URL, namespace=namespace, worker_poll_interval=0.25, max_connections=4
        )
    except StorageError as exc:
        unreachable("Redis", REDIS_URL, exc)
    async with store:
        try:
            assert isinstance(store, WorkerStore)
            assert (store.namespace, store.worker_poll_interval) == (namespace, 0.25)
            await store.driver("wf").set(b"k", b"v")
            assert await store.driver("wf").get(b"k") == b"v"
        finally:
            await delete_namespace(store)
    # No namespace: the default one (nothing is written under it here).
    async with await RedisStore.from_url(REDIS_URL) as default:
        assert default.namespace == "durable"


async def test_postgres_from_url() -> None:
    schema = unique_name("pg_url")
    admin = await admin_connection()
    try:
        url = DATABASE_URL.replace("postgresql://", "postgres://", 1)
        store = await PostgresStore.from_url(
            url, namespace=schema, worker_poll_interval=0.25, max_size=2
        )
        async with store:
            assert isinstance(store, WorkerStore)
            assert (store.schema, store.worker_poll_interval) == (schema, 0.25)
            assert store._pool.get_max_size() == 2
            await store.driver("wf").set(b"k", b"v")
            assert await store.driver("wf").get(b"k") == b"v"
    except (OSError, asyncpg.PostgresError, StorageError) as exc:
        unreachable("PostgreSQL", DATABASE_URL, exc)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.mark.parametrize(
    ("cls", "url", "expected"),
    [
        (MemoryStore, "redis://localhost", "memory store URLs start with memory://"),
        (LevelDBStore, "memory://", "leveldb store URLs start with leveldb://"),
        (RedisStore, "postgresql://localhost/db", "redis store URLs start with redis://"),
        (PostgresStore, "leveldb:///tmp/x", "postgres store URLs start with postgresql://"),
    ],
)
async def test_a_url_of_another_scheme_is_refused(cls: Any, url: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        await cls.from_url(url)


async def test_a_namespace_is_refused_by_a_store_without_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory store has no namespace"):
        await MemoryStore.from_url("memory://", namespace="tenant")
    with pytest.raises(ValueError, match="leveldb store has no namespace"):
        await LevelDBStore.from_url(f"leveldb://{tmp_path}", namespace="tenant")
    assert not any(tmp_path.iterdir())  # refused before the directory was opened


async def test_open_store_picks_the_store_by_scheme(tmp_path: Path) -> None:
    async with cli.open_store("MEMORY://", worker_poll_interval=0.5) as memory:
        assert type(memory) is MemoryStore and memory.worker_poll_interval == 0.5
    async with cli.open_store(f"leveldb://{tmp_path}") as leveldb:
        assert type(leveldb) is LevelDBStore
    with pytest.raises(StorageError, match="closed"):
        await leveldb.due_alarms()  # closed on the way out
    with pytest.raises(ValueError, match="unknown store URL scheme"):
        async with cli.open_store("ftp://example.com"):
            pass
    with pytest.raises(ValueError, match="memory store has no namespace"):
        async with cli.open_store("memory://", namespace="tenant"):
            pass


class _FifthStore(MemoryStore):
    """A store the engine has never heard of: only its line in the scheme table."""

    opened: list[tuple[str, str | None, float]] = []
    closed = False

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        namespace: str | None = None,
        worker_poll_interval: float = 1.0,
        **options: Any,
    ) -> Self:
        cls.opened.append((url, namespace, worker_poll_interval))
        return cls(worker_poll_interval=worker_poll_interval)

    async def close(self) -> None:
        type(self).closed = True


async def test_a_new_store_needs_only_its_line_in_the_scheme_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(cli._STORES, "fifth", f"{__name__}:_FifthStore")
    async with cli.open_store("fifth://x", namespace="n", worker_poll_interval=0.5) as store:
        assert type(store) is _FifthStore
        now = time.time()
        assert (await store.create_workflow("wf", "flow", [], now)).created
    assert _FifthStore.opened == [("fifth://x", "n", 0.5)] and _FifthStore.closed
