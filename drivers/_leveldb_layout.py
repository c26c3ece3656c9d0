"""The LevelDB store's byte layout: its tables, how ids and wake times are encoded, and the
writes that move an alarm or an index entry (the table is in ``drivers/leveldb.py``).

Everything here works on a plyvel database, snapshot or write batch passed in, so the store
decides where it runs (on the loop, or in a thread for a synced write).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, cast

from drivers._common import prefix_end
from engine.errors import CorruptedRecordError
from engine.keys import pack, unpack

STORE = "leveldb store"
LAYOUT_VERSION = b"1"
INDEX_VERSION = 1
Changes = list[tuple[bytes, bytes | None]]


class Table(IntEnum):
    """First byte of every key: which table of the database it belongs to."""

    META = 0x00
    DATA = 0x01
    ALARM_AT = 0x02
    ALARM_OF = 0x03
    INDEX = 0x04
    STATE = 0x05


def table_key(table: Table, *parts: bytes) -> bytes:
    return bytes([table]) + b"".join(parts)


def encode_id(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\x00", b"\x00\x01") + b"\x00\x00"


def decode_id(raw: bytes) -> str:  # ``raw`` ends with one ``encode_id`` encoding
    return raw[:-2].replace(b"\x00\x01", b"\x00").decode("utf-8")


def encode_time(wake_at: float) -> bytes:
    # IEEE 754 bits sort like the float once positives get the sign bit and negatives flip all.
    (bits,) = struct.unpack(">Q", struct.pack(">d", wake_at))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | (1 << 63)
    return struct.pack(">Q", bits)


def decode_time(raw: bytes) -> float:
    (bits,) = struct.unpack(">Q", raw)
    bits = bits & ~(1 << 63) if bits >> 63 else bits ^ 0xFFFFFFFFFFFFFFFF
    return cast(float, struct.unpack(">d", struct.pack(">Q", bits))[0])


def fill_batch(batch: Any, writes: Sequence[tuple[bytes, bytes | None]]) -> Any:
    """Add ``writes`` (``None`` deletes) to ``batch``, in order: a later write of a key wins."""
    for k, value in writes:
        if value is None:
            batch.delete(k)
        else:
            batch.put(k, value)
    return batch


def read_rows(db: Any, ns: bytes, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
    """A namespace's rows under ``prefix``, keys without the namespace (``driver.list``)."""
    cut = len(ns)
    with db.iterator(prefix=ns + prefix) as items:
        return [(k[cut:], value) for k, value in items]


def scan_due(
    db: Any, cutoff: float, limit: int, accept: Callable[[str], bool]
) -> list[tuple[str, float]]:
    """Up to ``limit`` accepted alarms due at ``cutoff``, earliest first: one range scan."""
    start = table_key(Table.ALARM_AT)
    found: list[tuple[str, float]] = []
    stop = prefix_end(start + encode_time(cutoff))
    with db.iterator(start=start, stop=stop, include_value=False) as keys:
        for k in keys:
            if len(found) >= limit:
                break
            workflow_id = decode_id(k[9:])
            if accept(workflow_id):
                found.append((workflow_id, decode_time(k[1:9])))
    return found


def alarm_moves(old: bytes | None, wid: bytes, wake_at: float | None) -> Changes:
    """The writes that move an alarm from ``old`` (its ALARM_OF value) to ``wake_at``."""
    new = None if wake_at is None else encode_time(wake_at)
    if new == old:
        return []
    moves: Changes = [] if old is None else [(table_key(Table.ALARM_AT, old, wid), None)]
    if new is None:
        return [*moves, (table_key(Table.ALARM_OF, wid), None)]
    return [
        *moves,
        (table_key(Table.ALARM_AT, new, wid), b""),
        (table_key(Table.ALARM_OF, wid), new),
    ]


def index_moves(wid: bytes, name: str, state: str, old_state: str | None) -> Changes:
    """The writes that record ``state`` in the index, moving it out of ``old_state``."""
    moves: Changes = []
    if old_state is not None and old_state != state:
        moves.append((table_key(Table.STATE, encode_id(old_state), wid), None))
    moves.append((table_key(Table.INDEX, wid), pack((INDEX_VERSION, name, state))))
    moves.append((table_key(Table.STATE, encode_id(state), wid), b""))
    return moves


def parse_index(raw: bytes | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    try:
        version, name, state = unpack(raw)
    except ValueError as exc:
        raise CorruptedRecordError(f"{STORE}: workflow index record {raw!r} is damaged") from exc
    if version != INDEX_VERSION or not isinstance(name, str) or not isinstance(state, str):
        raise CorruptedRecordError(f"{STORE}: workflow index record {raw!r} is not version 1")
    return name, state
