"""The parts every store shares (``drivers._common``), and the one fencing pattern."""

from __future__ import annotations

import time

import pytest

from drivers._common import ErrorMap, check_writes, latest_writes, prefix_end
from drivers.memory import MemoryDriver, MemoryStore
from engine.errors import LeaseLostError, SerializationError, StorageError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"ab\xff", b"ac"),
        (b"a\xff\xff", b"b"),
        (b"\x00", b"\x01"),
        (b"", None),
        (b"\xff", None),
        (b"\xff\xff", None),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end


def test_latest_writes_keeps_the_last_write_of_each_key() -> None:
    writes = [(b"a", b"1"), (bytearray(b"b"), None), (b"a", None), (b"b", bytearray(b"2"))]
    folded = latest_writes(writes)  # type: ignore[arg-type]
    assert folded == {b"a": None, b"b": b"2"}
    assert all(type(key) is bytes for key in folded) and type(folded[b"b"]) is bytes


def test_check_writes_types_and_limits() -> None:
    check_writes("x store", [(b"k", b"v"), (bytearray(b"k"), None)], 1, 1, 4)
    with pytest.raises(TypeError, match="keys are bytes, got str"):
        check_writes("x store", [("k", b"v")])
    with pytest.raises(TypeError, match="values are bytes or None, got int"):
        check_writes("x store", [(b"k", 1)])
    with pytest.raises(SerializationError, match=r"x store: key b'kk' is 2 bytes.* 1 bytes"):
        check_writes("x store", [(b"kk", b"")], max_key=1)
    with pytest.raises(SerializationError, match=r"x store: value of key b'k' is 3 bytes"):
        check_writes("x store", [(b"k", b"")] * 3 + [(b"k", b"vvv")], max_value=2)
    with pytest.raises(SerializationError, match=r"x store: batch of 3 writes holds 6 bytes"):
        check_writes("x store", [(b"k", b"v")] * 3, max_batch=5)


def test_error_map_turns_only_its_types_into_storage_errors() -> None:
    map_errors = ErrorMap("x store", KeyError, OSError)
    failed = pytest.raises(StorageError, match="x store get failed: KeyError")
    with failed as caught, map_errors("get"):
        raise KeyError("k")
    assert caught.value.operation == "get" and isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(ValueError), map_errors("get"):
        raise ValueError("not the client's")
    lost = map_errors.lease_lost("batch", "wf")
    assert isinstance(lost, LeaseLostError) and "batch of workflow 'wf'" in str(lost)


async def test_memory_driver_takes_one_shape_with_or_without_a_store() -> None:
    alone = MemoryDriver(worker_poll_interval=0.5)
    await alone.set(b"k", b"v")
    assert (alone.worker_poll_interval, await alone.list(b"")) == (0.5, [(b"k", b"v")])
    store = MemoryStore(worker_poll_interval=0.25)
    assert MemoryDriver(store, "wf").worker_poll_interval == 0.25
    with pytest.raises(TypeError, match="store's poll interval"):
        MemoryDriver(store, "wf", latency=0.1)
    await store.driver("wf").set_alarm("wf", time.time() - 1)
    [lease] = await store.claim_due("w1", 30.0, 10)
    fenced = store.fenced_driver(lease)
    assert type(fenced) is MemoryDriver
    await fenced.set(b"k", b"v")
    await store.release(lease)
    for write in (fenced.set(b"k", b"x"), fenced.batch([]), fenced.delete_range(b"b", b"a")):
        with pytest.raises(LeaseLostError, match="memory store"):
            await write
    assert await store.driver("wf").list(b"") == [(b"k", b"v")]
