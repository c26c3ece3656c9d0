"""What only the LevelDB store promises: durability across reopen, one owner per directory,
size limits, the sync flag, and clean errors after close."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from drivers.leveldb import MAX_VALUE_BYTES, LevelDBStore
from engine.errors import SerializationError, StorageError
from engine.store import Lease

pytestmark = pytest.mark.anyio


async def test_data_alarms_and_index_survive_reopen(tmp_path: Path) -> None:
    now = time.time()
    async with LevelDBStore(tmp_path) as store:
        driver = store.driver("order-1")
        await driver.batch([(b"h1", b"one"), (b"h2", b"two")])
        await driver.set_alarm("order-1", now + 50)
        await driver.set_alarm("order-1", now - 5)  # replaces the first wake time
        await store.driver("order-2").set_alarm("order-2", now - 10)
        assert (await store.create_workflow("order-1", "order", [], now - 5)).created
        (lease,) = [c for c in await store.claim_due("w", 30.0, 10) if c.workflow_id == "order-1"]
        await store.finish_run(lease, [], "sleeping", now - 5)
    async with LevelDBStore(tmp_path) as store:
        assert await store.driver("order-1").list(b"") == [(b"h1", b"one"), (b"h2", b"two")]
        due = await store.due_alarms(now=now + 3600)
        assert [w for w, _ in due] == ["order-2", "order-1"]
        assert abs(due[1][1] - (now - 5)) < 1e-6
        assert not (await store.create_workflow("order-1", "other", [], now)).created
        assert await store.workflow_info("order-1") == ("order", "sleeping")
        assert await store.list_workflows("sleeping") == ["order-1"]
        assert await store.list_workflows("pending") == []


async def test_ids_with_separators_and_nul_never_overlap(tmp_path: Path) -> None:
    ids = ["a", "a\x00", "a\x00\x01", "a:b", "a\x00b", ""]
    async with LevelDBStore(tmp_path, sync=False) as store:
        for wid in ids:
            # Keys that would mimic an escape or terminator after a looser id encoding.
            await store.driver(wid).batch([(b"\xff\x00k", wid.encode()), (b"\x01\x00\x00", b"x")])
            await store.create_workflow(wid, "n", [], 0.0)
        for wid in ids:
            listed = await store.driver(wid).list(b"")
            assert listed == [(b"\x01\x00\x00", b"x"), (b"\xff\x00k", wid.encode())]
        assert await store.list_workflows("pending") == sorted(ids)
        await store.driver("a").delete_prefix(b"")
        assert await store.driver("a\x00").get(b"\xff\x00k") == b"a\x00"


async def test_alarms_sort_by_time_including_negative_and_fractional(tmp_path: Path) -> None:
    times = {"w1": 1.5, "w2": -3.25, "w3": 0.0, "w4": 1.25, "w5": -0.5, "w6": 1e12}
    async with LevelDBStore(tmp_path, sync=False) as store:
        for wid, at in times.items():
            await store.driver(wid).set_alarm(wid, at)
        due = await store.due_alarms(now=1.5)
        assert due == sorted(((w, t) for w, t in times.items() if t <= 1.5), key=lambda x: x[1])


async def test_locked_directory_names_the_path(tmp_path: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, plyvel
        db = plyvel.DB({str(tmp_path)!r}, create_if_missing=True)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            with pytest.raises(StorageError, match="locked") as caught:
                LevelDBStore(tmp_path)
            assert str(tmp_path) in str(caught.value)
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)
    async with LevelDBStore(tmp_path):  # free again once the other process is gone
        pass


async def test_second_open_store_in_one_process_is_refused(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path):
        with pytest.raises(StorageError, match="locked"):
            LevelDBStore(tmp_path)


async def test_value_too_large_writes_nothing(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path) as store:
        driver = store.driver("big")
        too_big = b"x" * (MAX_VALUE_BYTES + 1)
        with pytest.raises(SerializationError) as caught:
            await driver.batch([(b"small", b"ok"), (b"huge-key", too_big)])
        message = str(caught.value)
        assert "leveldb store" in message and "huge-key" in message
        assert str(MAX_VALUE_BYTES + 1) in message
        with pytest.raises(SerializationError):
            await driver.set(b"huge-key", too_big)
        assert await driver.list(b"") == []


class _SpyDB:
    """Delegates to the real plyvel handle and records how write batches were created."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batch_sync: list[bool] = []

    def write_batch(self, **kwargs: Any) -> Any:
        self.batch_sync.append(kwargs.get("sync", False))
        return self.inner.write_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    calls: list[object] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    yield calls


@pytest.mark.parametrize(("sync", "in_thread"), [(True, False), (True, True), (False, True)])
async def test_sync_flag_reaches_every_write_batch(
    tmp_path: Path, sync: bool, in_thread: bool, thread_calls: list[object]
) -> None:
    async with LevelDBStore(tmp_path, sync=sync, fsync_in_thread=in_thread) as store:
        assert store.sync is sync
        spy = _SpyDB(store._db)
        store._db = spy
        driver = store.driver("wf")
        await driver.batch([(b"a", b"1"), (b"b", b"2")])
        await driver.set(b"c", b"3")
        await driver.delete_range(b"a", b"b")
        await driver.delete_prefix(b"")
        await driver.set_alarm("wf", 1.0)
        await store.create_workflow("wf2", "n", [(b"in", b"1")], 1.0, owner="w", lease=30.0)
        (lease,) = await store.claim_due("w", 30.0, 10)  # "wf": "wf2" is held
        await store.finish_run(lease, [(b"out", b"2")], "completed", None)
        assert len(spy.batch_sync) == 7 and set(spy.batch_sync) == {sync}
        # Only synced writes with fsync_in_thread go to a thread; everything else, reads
        # included, stays on the loop.
        reads_before = len(thread_calls)
        await driver.get(b"a")
        await driver.list(b"")
        await store.due_alarms()
        assert len(thread_calls) == reads_before
        assert len(thread_calls) == (7 if sync and in_thread else 0)
        store._db = spy.inner


async def test_closed_store_raises_storage_error(tmp_path: Path) -> None:
    store = LevelDBStore(tmp_path)
    driver = store.driver("wf")
    await store.close()
    await store.close()  # closing twice is fine
    for call in (
        driver.get(b"k"),
        driver.list(b""),
        driver.batch([(b"k", b"v")]),
        driver.set_alarm("wf", 1.0),
        store.due_alarms(),
        store.create_workflow("wf", "n", [], 1.0),
    ):
        with pytest.raises(StorageError, match="closed"):
            await call


async def test_close_waits_for_synced_writes_in_flight(tmp_path: Path) -> None:
    store = LevelDBStore(tmp_path, fsync_in_thread=True)
    driver = store.driver("wf")
    written: list[int] = []

    async def write(index: int) -> None:
        try:
            await driver.set(b"k%d" % index, b"v")
            written.append(index)
        except StorageError:
            pass  # started after close: refused cleanly

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(write, index)
        with anyio.fail_after(5):
            while not store._inflight:  # some writes are waiting for their fsync in a thread
                await anyio.sleep(0)
        await store.close()
        assert store._inflight == 0
    async with LevelDBStore(tmp_path) as reopened:
        assert written and len(await reopened.driver("wf").list(b"")) == len(written)


async def test_set_alarm_wakes_wait_for_due(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path, sync=False) as store:
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(store.wait_for_due, 10.0)
            await anyio.sleep(0.01)
            await store.driver("wf").set_alarm("wf", time.time())
        assert time.monotonic() - started < 5.0


async def test_notify_reaches_subscribers_of_that_workflow(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path, sync=False) as store:
        driver, other = store.driver("wf"), store.driver("other")
        async with driver.subscribe() as wakeups:
            await other.notify("other")
            await driver.notify("wf")
            with anyio.fail_after(5):
                await wakeups.__anext__()
            with anyio.move_on_after(0.05) as scope:
                await wakeups.__anext__()
            assert scope.cancelled_caught  # the other workflow's notify did not arrive here


@pytest.mark.parametrize("in_thread", [False, True])
async def test_fenced_driver_refuses_a_stale_lease(tmp_path: Path, in_thread: bool) -> None:
    from engine.errors import LeaseLostError

    async with LevelDBStore(tmp_path, fsync_in_thread=in_thread) as store:
        await store.driver("wf").set_alarm("wf", time.time() - 1)
        [lease] = await store.claim_due("w1", 30.0, 10)
        await store.fenced_driver(lease).batch([(b"k", b"v")])
        stale = Lease(lease.workflow_id, lease.owner, lease.token - 1, lease.expires_at)
        with pytest.raises(LeaseLostError):
            await store.fenced_driver(stale).delete_prefix(b"")
        assert await store.driver("wf").get(b"k") == b"v"
