"""What only the LevelDB store promises about its index, claims and cancels: layout 1
databases upgraded in place, ``updated_at`` durable, and the new writes synced, threaded and
refused after close like every other write."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import plyvel
import pytest

from drivers._leveldb_layout import LAYOUT_VERSION
from drivers.leveldb import LevelDBStore
from engine.errors import CorruptedRecordError, StorageError
from engine.keys import pack

pytestmark = pytest.mark.anyio


def _write_layout_1(path: Path) -> None:
    """A database as layout 1 wrote it: index records ``(1, name, state)``, no change time."""
    db = plyvel.DB(str(path), create_if_missing=True)
    try:
        db.put(b"\x00layout", b"1")
        db.put(b"\x01order-1\x00\x00in", b"input")
        db.put(b"\x04order-1\x00\x00", pack((1, "order", "sleeping")))
        db.put(b"\x05sleeping\x00\x00order-1\x00\x00", b"")
        db.put(b"\x04order-2\x00\x00", pack((1, "order", "completed")))
        db.put(b"\x05completed\x00\x00order-2\x00\x00", b"")
    finally:
        db.close()


async def test_layout_1_is_upgraded_in_place_when_opened(tmp_path: Path) -> None:
    _write_layout_1(tmp_path)
    async with LevelDBStore(tmp_path, sync=False) as store:
        assert store._db.get(b"\x00layout") == LAYOUT_VERSION == b"2"
        assert await store.workflow_info("order-1") == ("order", "sleeping")
        assert await store.list_workflows("sleeping") == ["order-1"]
        row = await store.workflow_row("order-1")
        assert row is not None and (row.state, row.updated_at) == ("sleeping", 0.0)
        assert await store.driver("order-1").list(b"") == [(b"in", b"input")]
        # Old rows read as changed at 0.0: anything the store changes now lists first.
        await store.create_workflow("order-3", "order", [], time.time() + 60)
        rows = await store.workflow_rows(name="order")
        assert [r.workflow_id for r in rows] == ["order-3", "order-1", "order-2"]
        lease = await store.claim("order-2", "w", 30.0, "order")
        assert lease is not None
        await store.finish_run(lease, [], "completed", None)
        assert (await store.workflow_rows(limit=1))[0].workflow_id == "order-2"
    async with LevelDBStore(tmp_path, sync=False) as store:  # once upgraded, opened as is
        assert [r.workflow_id for r in await store.workflow_rows()] == [
            "order-2",
            "order-3",
            "order-1",
        ]


async def test_an_unknown_layout_is_refused(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path), create_if_missing=True)
    db.put(b"\x00layout", b"9")
    db.close()
    with pytest.raises(StorageError, match="layout version b'9' is not supported"):
        LevelDBStore(tmp_path)
    plyvel.DB(str(tmp_path)).close()  # the refused open released the directory's lock


async def test_a_layout_1_database_that_cannot_be_upgraded_stays_closed(tmp_path: Path) -> None:
    _write_layout_1(tmp_path)
    db = plyvel.DB(str(tmp_path))
    db.put(b"\x04broken\x00\x00", b"\xff")  # a damaged index record
    db.close()
    with pytest.raises(CorruptedRecordError):
        LevelDBStore(tmp_path)
    db = plyvel.DB(str(tmp_path))  # unlocked, and left as it was: still layout 1
    assert db.get(b"\x00layout") == b"1"
    db.close()


async def test_a_damaged_index_record_is_reported(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path, sync=False) as store:
        store._db.put(b"\x04bad\x00\x00", pack((2, "order", "pending", b"short")))
        with pytest.raises(CorruptedRecordError, match="not version 1 or 2"):
            await store.workflow_row("bad")
        with pytest.raises(CorruptedRecordError):
            await store.workflow_rows()


async def test_updated_at_and_cancel_survive_reopen(tmp_path: Path) -> None:
    now = time.time()
    async with LevelDBStore(tmp_path) as store:
        await store.create_workflow("wf", "order", [(b"in", b"1")], now + 60)
        await store.post_message("wf", b"m", b"hello", now - 1)
        await store.cancel("wf", [(b"state", b"cancelled")])
        before = await store.workflow_row("wf")
    async with LevelDBStore(tmp_path) as store:
        assert await store.workflow_row("wf") == before
        assert before is not None and before.state == "cancelled" and before.wake_at is None
        assert before.updated_at >= now
        assert await store.driver("wf").list(b"") == [
            (b"in", b"1"),
            (b"m", b"hello"),
            (b"state", b"cancelled"),
        ]
        assert await store.list_workflows("cancelled") == ["wf"]
        assert await store.list_workflows("pending") == []


async def test_claim_registration_survives_reopen(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path) as store:
        lease = await store.claim("wf", "w", 30.0, "order", now=1000.0)
        assert lease is not None
    async with LevelDBStore(tmp_path) as store:
        row = await store.workflow_row("wf")
        assert row is not None and (row.name, row.state, row.updated_at) == (
            "order",
            "pending",
            1000.0,
        )
        # Leases live in memory: a reopened store holds none, so it is not running.
        assert await store.claim("wf", "w2", 30.0, "order") is not None


@pytest.mark.parametrize(("sync", "in_thread"), [(True, False), (True, True), (False, False)])
async def test_claim_post_message_and_cancel_write_one_batch_each(
    tmp_path: Path, sync: bool, in_thread: bool
) -> None:
    async with LevelDBStore(tmp_path, sync=sync, fsync_in_thread=in_thread) as store:
        batches: list[bool] = []
        real = store._db

        class Spy:
            def write_batch(self, **kwargs: bool) -> object:
                batches.append(kwargs.get("sync", False))
                return real.write_batch(**kwargs)

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        store._db = Spy()
        try:
            lease = await store.claim("wf", "w", 30.0, "order")
            assert lease is not None
            await store.post_message("wf", b"m", b"x", time.time())
            await store.cancel("wf", [(b"state", b"cancelled")])
        finally:
            store._db = real
        assert batches == [sync] * 3


async def test_closed_store_refuses_the_new_calls(tmp_path: Path) -> None:
    store = LevelDBStore(tmp_path)
    await store.close()
    for call in (
        store.claim("wf", "w", 30.0, "order"),
        store.post_message("wf", b"m", b"x", 1.0),
        store.cancel("wf", [(b"state", b"cancelled")]),
        store.workflow_rows(),
        store.workflow_row("wf"),
    ):
        with pytest.raises(StorageError, match="closed"):
            await call
    assert store._leases.free("wf", time.time()), "a claim that failed holds no lease"


async def test_no_claim_while_a_cancel_is_written_in_its_thread(tmp_path: Path) -> None:
    async with LevelDBStore(tmp_path, fsync_in_thread=True) as store:
        now = time.time()
        await store.create_workflow("wf", "order", [], now - 5)
        lease = await store.claim("wf", "w1", 30.0, "order")
        assert lease is not None
        writing, landed = threading.Event(), threading.Event()
        real = store._db

        class Batch:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

            def write(self) -> None:
                writing.set()
                landed.wait(5)  # the fsync of the cancel, held open
                self.inner.write()

        class Spy:
            def write_batch(self, **kwargs: Any) -> Any:
                return Batch(real.write_batch(**kwargs))

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        store._db = Spy()
        claimed: list[object] = []

        async def claim() -> None:
            claimed.append(await store.claim("wf", "w3", 30.0, "order"))

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(store.cancel, "wf", [(b"state", b"cancelled")])
                with anyio.fail_after(5):
                    while not writing.is_set():
                        await anyio.sleep(0.001)
                # The alarm is still due on disk, and the holder's lease is revoked.
                assert "wf" not in {c.workflow_id for c in await store.claim_due("w2", 30, 10)}
                assert await store.renew(lease, 30.0) is None
                group.start_soon(claim)
                await anyio.sleep(0.05)
                assert claimed == [], "claim returned while the cancel was being written"
                landed.set()
        finally:
            store._db = real
        assert claimed and claimed[0] is not None, "the claim waited for the cancel, then took it"
        assert await store.workflow_info("wf") == ("order", "cancelled")
        assert await store.due_alarms(now=now + 60) == []
