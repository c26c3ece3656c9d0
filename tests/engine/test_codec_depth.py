"""The codec's nesting limit: deep values are refused with a clear error, never a crash.

A tuple is an extension record whose payload is a msgpack document of its own; packing and
unpacking them recursively overflowed the C stack for a tuple ~200 levels deep, killing
every process that loaded the record. The end-to-end tests run in a child process so they
survive the crash they look for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import codec
from engine.errors import CorruptedRecordError, SerializationError

LIMIT = codec.MAX_DEPTH
REPO = Path(__file__).resolve().parents[2]


def nested(kinds: Sequence[str], leaf: object = 1) -> object:
    """A value with one container per kind, outermost first ("list", "tuple", "dict")."""
    value = leaf
    for kind in reversed(kinds):
        value = [value] if kind == "list" else (value,) if kind == "tuple" else {"k": value}
    return value


def packed(kinds: Sequence[str]) -> bytes:
    """The record of ``nested(kinds)``, built with msgpack alone (not through the codec)."""
    body = msgpack.packb(1)
    for kind in reversed(kinds):
        if kind == "list":
            body = b"\x91" + body  # an array of one
        elif kind == "dict":
            body = b"\x81" + msgpack.packb("k") + body  # a map of one
        else:
            body = msgpack.packb(msgpack.ExtType(1, b"\x91" + body))  # a tuple of one
    return bytes([codec.FORMAT_VERSION]) + body


def tuples(depth: int) -> object:
    return nested(["tuple"] * depth)


def assert_same_shape(decoded: object, value: object) -> None:
    """Equal, and every container of the same type, level by level (no recursion)."""
    assert decoded == value
    pairs = [(decoded, value)]
    while pairs:
        got, want = pairs.pop()
        assert type(got) is type(want)
        if isinstance(want, dict):
            assert isinstance(got, dict)
            pairs.extend(zip(list(got), list(want), strict=True))
            pairs.extend((got[k], want[k]) for k in want)
        elif isinstance(want, (list, tuple)):
            assert isinstance(got, (list, tuple))
            pairs.extend(zip(got, want, strict=True))


# Encoding


@pytest.mark.parametrize(
    "kinds",
    [
        ["tuple"] * (LIMIT + 1),
        ["tuple"] * 250,
        ["tuple"] * 5_000,
        ["list"] * LIMIT + ["tuple"],
        ["dict"] * LIMIT + ["tuple"],
        ["tuple"] + ["list"] * LIMIT,
        ["tuple"] + ["dict"] * LIMIT,
        ["tuple", "list", "dict"] * 34,
        ["list", "tuple", "list"] * 1_000,
    ],
    ids=lambda kinds: f"{len(kinds)}:{'/'.join(dict.fromkeys(kinds))}",
)
def test_a_value_with_a_tuple_past_the_limit_is_refused(kinds: list[str]) -> None:
    with pytest.raises(SerializationError) as info:
        codec.encode(nested(kinds), "workflow 'w' input")
    message = str(info.value)
    assert message.startswith("workflow 'w' input cannot be stored: ")
    assert f"a value nested {len(kinds)} levels deep" in message
    assert "(supported: None, bool, int (64-bit), float, str, bytes, list, tuple and dict, " in (
        message
    )
    assert f"nested at most {LIMIT} levels deep)" in message


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_lists_and_dicts_past_msgpacks_bound_are_refused_with_their_depth(kind: str) -> None:
    with pytest.raises(SerializationError, match="a value nested 5000 levels deep"):
        codec.encode(nested([kind] * 5_000), "v")


def test_a_value_without_tuples_is_left_to_msgpacks_own_bound() -> None:
    # Documented on MAX_DEPTH: a value with no tuple is not walked, so not held to it.
    value = nested(["list", "dict"] * LIMIT)
    assert_same_shape(codec.decode(codec.encode(value, "v"), "v"), value)


@pytest.mark.parametrize("shape", ["list", "tuple"])
def test_a_value_that_contains_itself_is_refused(shape: str) -> None:
    inner: list[object] = []
    inner.append(inner)
    value = (inner,) if shape == "tuple" else inner
    with pytest.raises(SerializationError, match="a value that contains itself"):
        codec.encode(value, "v")


def test_a_tuple_as_a_dict_key_counts_its_levels() -> None:
    at_limit = {tuples(LIMIT - 1): "v"}
    assert_same_shape(codec.decode(codec.encode(at_limit, "v"), "v"), at_limit)
    with pytest.raises(SerializationError, match=f"nested {LIMIT + 1} levels deep"):
        codec.encode({tuples(LIMIT): "v"}, "v")


# At the limit


@pytest.mark.parametrize(
    "kinds",
    [
        ["tuple"] * LIMIT,
        ["list"] * (LIMIT - 1) + ["tuple"],
        ["tuple"] + ["dict"] * (LIMIT - 1),
        (["tuple", "list", "dict"] * LIMIT)[:LIMIT],
    ],
    ids=["tuples", "lists-then-tuple", "tuple-then-dicts", "mixed"],
)
def test_a_value_exactly_at_the_limit_round_trips_with_its_shape(kinds: list[str]) -> None:
    value = nested(kinds)
    record = codec.encode(value, "v")
    assert record == packed(kinds)  # the wire format of earlier versions, byte for byte
    assert_same_shape(codec.decode(record, "v"), value)


def test_tuples_keep_their_shape_wherever_they_sit() -> None:
    value = {
        "pairs": [(i, str(i)) for i in range(50)],
        (1, (2, b"\x00")): [{"t": ((), ([],), {"k": (None,)})}],
        "deep": nested(["tuple", "list"] * 20, leaf=(1, [2, (3,)])),
    }
    assert_same_shape(codec.decode(codec.encode(value, "v"), "v"), value)


# Decoding


@pytest.mark.parametrize(
    "kinds",
    [
        ["tuple"] * (LIMIT + 1),
        ["tuple"] * 250,
        ["tuple"] * 5_000,
        ["list"] * LIMIT + ["tuple"],
        ["tuple"] + ["dict"] * LIMIT,
        ["tuple", "list"] * 1_000,
    ],
    ids=lambda kinds: f"{len(kinds)}:{'/'.join(dict.fromkeys(kinds))}",
)
def test_a_stored_record_past_the_limit_is_refused(kinds: list[str]) -> None:
    with pytest.raises(CorruptedRecordError) as info:
        codec.decode(packed(kinds), "workflow 'w' input")
    message = str(info.value)
    assert message.startswith("workflow 'w' input: damaged record")
    assert f"nested more than {LIMIT} levels deep" in message


def test_a_stored_tuple_key_past_the_limit_is_refused() -> None:
    key = packed(["tuple"] * LIMIT)[1:]
    raw = bytes([codec.FORMAT_VERSION]) + b"\x81" + key + msgpack.packb("v")
    with pytest.raises(CorruptedRecordError, match=f"nested more than {LIMIT} levels deep"):
        codec.decode(raw, "record")


def test_stored_lists_past_msgpacks_bound_are_refused() -> None:
    with pytest.raises(CorruptedRecordError, match="record"):
        codec.decode(bytes([codec.FORMAT_VERSION]) + b"\x91" * 5_000 + b"\x01", "record")


@pytest.mark.parametrize("payload", [msgpack.packb(5), msgpack.packb({"a": 1}), b"\xc1"])
def test_a_stored_tuple_that_is_not_a_list_is_refused(payload: bytes) -> None:
    raw = bytes([codec.FORMAT_VERSION]) + msgpack.packb([msgpack.ExtType(1, payload)])
    with pytest.raises(CorruptedRecordError, match="record"):
        codec.decode(raw, "record")


# The exact boundary, for any mixture

kind_lists = st.lists(
    st.sampled_from(["list", "tuple", "dict"]), min_size=LIMIT - 2, max_size=LIMIT + 2
) | st.lists(st.sampled_from(["list", "tuple", "dict"]), max_size=8)


@settings(max_examples=60, deadline=None)
@given(kind_lists)
def test_a_value_with_a_tuple_is_stored_and_read_exactly_up_to_the_limit(
    kinds: list[str],
) -> None:
    fits = "tuple" not in kinds or len(kinds) <= LIMIT
    value = nested(kinds)
    if fits:
        assert codec.encode(value, "v") == packed(kinds)
        assert_same_shape(codec.decode(packed(kinds), "v"), value)
    else:
        with pytest.raises(SerializationError, match=f"nested {len(kinds)} levels deep"):
            codec.encode(value, "v")
        with pytest.raises(CorruptedRecordError, match=f"more than {LIMIT} levels"):
            codec.decode(packed(kinds), "v")


# No recursion, no shared state


def test_threads_encode_and_decode_at_once() -> None:
    values = [
        {"i": 1, "sku": "SKU-1"},
        tuples(LIMIT),
        nested(["list", "tuple"] * (LIMIT // 2)),
        [(i, (i,)) for i in range(200)],
    ]
    records = [codec.encode(value, "v") for value in values]
    too_deep = tuples(LIMIT + 1)
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for round_ in range(40):
                index = (seed + round_) % len(values)
                assert codec.encode(values[index], "v") == records[index]
                assert_same_shape(codec.decode(records[index], "v"), values[index])
                with pytest.raises(SerializationError):
                    codec.encode(too_deep, "v")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# In a child process: a crash shows as a signal, not as a dead test run

NO_RECURSION = """
import sys
import threading

from engine import codec


def nested(depth):
    value = 1
    for level in range(depth):
        value = (value,) if level % 3 == 0 else [value] if level % 3 == 1 else {"k": value}
    return value


value = nested(codec.MAX_DEPTH)
record = codec.encode(value, "v")
results = []


def run():
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 30)  # far fewer frames than levels
    try:
        results.append(codec.encode(value, "v"))
        results.append(codec.decode(record, "v"))
    except BaseException as exc:
        results.append(exc)
    finally:
        sys.setrecursionlimit(old)


threading.stack_size(256 * 1024)  # the old recursive decode needed ~40 KiB per tuple level
thread = threading.Thread(target=run)
thread.start()
thread.join()
print("same" if results == [record, value] else f"different: {results!r:.300}")
"""


def test_encoding_and_decoding_need_no_stack_per_level() -> None:
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_RECURSION)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, f"child died ({child.returncode}): {child.stderr[-2000:]}"
    assert child.stdout == "same\n", child.stdout + child.stderr


CHILD = """
import sys

import anyio
import msgpack

from drivers.memory import MemoryDriver, MemoryStore
from engine import (
    CorruptedRecordError, SerializationError, keys, run_workflow, start_workflow,
)

DEPTH = int(sys.argv[2])


def deep_tuple():
    value = 1
    for _ in range(DEPTH):
        value = (value,)
    return value


def deep_record():
    # A message record whose data is a tuple DEPTH deep, made with msgpack alone.
    body = msgpack.packb(1)
    for _ in range(DEPTH):
        body = msgpack.packb(msgpack.ExtType(1, b"\\x91" + body))
    return b"\\x01\\x83\\xa1n\\xa1m\\xa1d" + body + b"\\xa1t" + msgpack.packb(0.0)


async def wf(ctx, _):
    return await ctx.queue.next("m")


async def main(case):
    try:
        if case == "start_workflow":
            await start_workflow(MemoryStore(), "wf", "w1", deep_tuple())
        elif case == "run_workflow":
            await run_workflow("w1", wf, deep_tuple(), MemoryDriver()).result()
        elif case == "message":
            await run_workflow("w1", wf, None, MemoryDriver()).message("m", deep_tuple())
        else:
            driver = MemoryDriver()
            await driver.batch([(keys.message_key(1, 2), deep_record())])
            print("returned", await run_workflow("w1", wf, None, driver).result())
            return
        print("accepted")
    except (SerializationError, CorruptedRecordError) as exc:
        print("caught", type(exc).__name__, exc)


anyio.run(main, sys.argv[1])
"""


def run_child(case: str, depth: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), case, str(depth)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("depth", [250, 5_000])
@pytest.mark.parametrize("case", ["start_workflow", "run_workflow", "message"])
def test_a_deep_tuple_given_to_the_engine_is_refused_not_stored(case: str, depth: int) -> None:
    child = run_child(case, depth)
    assert child.returncode == 0, f"child died ({child.returncode}): {child.stderr[-2000:]}"
    assert child.stdout.startswith("caught SerializationError "), child.stdout + child.stderr
    assert "levels deep is not serializable" in child.stdout


@pytest.mark.parametrize("depth", [250, 5_000])
def test_a_deep_stored_message_is_reported_not_a_crash(depth: int) -> None:
    child = run_child("stored", depth)
    assert child.returncode == 0, f"child died ({child.returncode}): {child.stderr[-2000:]}"
    assert child.stdout.startswith("caught CorruptedRecordError "), child.stdout + child.stderr
    assert f"nested more than {LIMIT} levels deep" in child.stdout
