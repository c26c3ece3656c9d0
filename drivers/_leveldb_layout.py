"""The LevelDB store's byte layout: its tables, how ids and wake times are encoded, and the
writes that move an alarm or an index entry (the table is in ``drivers/leveldb.py``).

Everything here works on a plyvel database, snapshot or write batch passed in, so the store
decides where it runs (on the loop, or in a thread for a synced write).

Layout versions: 1 kept index records ``(1, name, state)``; 2 adds when the index last
changed the workflow, ``(2, name, state, t)``. ``upgrade`` takes a version-1 database to
version 2 in one write batch when it is opened (its records read as changed at 0.0).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from typing import Any, NamedTuple, cast

from drivers._common import prefix_end
from engine.errors import CorruptedRecordError
from engine.keys import pack, unpack

STORE = "leveldb store"
LAYOUT_VERSION = b"2"
INDEX_VERSION = 2
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


class Indexed(NamedTuple):
    """A workflow's index record: registered name, recorded state, last change (epoch s)."""

    name: str
    state: str
    updated_at: float


def index_moves(
    wid: bytes, name: str, state: str, old_state: str | None, updated_at: float
) -> Changes:
    """The writes that record ``state`` (changed at ``updated_at``) in the index, moving it
    out of ``old_state``."""
    moves: Changes = []
    if old_state is not None and old_state != state:
        moves.append((table_key(Table.STATE, encode_id(old_state), wid), None))
    record = pack((INDEX_VERSION, name, state, encode_time(updated_at)))
    moves.append((table_key(Table.INDEX, wid), record))
    moves.append((table_key(Table.STATE, encode_id(state), wid), b""))
    return moves


def parse_index(raw: bytes | None) -> Indexed | None:
    return None if raw is None else _parse_record(raw)


def _parse_record(raw: bytes) -> Indexed:
    """An index record of version 2, or of version 1 (read as changed at 0.0)."""
    try:
        version, name, state, *rest = unpack(raw)
    except ValueError as exc:
        raise CorruptedRecordError(f"{STORE}: workflow index record {raw!r} is damaged") from exc
    if isinstance(name, str) and isinstance(state, str):
        if version == 1 and not rest:
            return Indexed(name, state, 0.0)
        if version == INDEX_VERSION and len(rest) == 1:
            (changed,) = rest
            if isinstance(changed, bytes) and len(changed) == 8:
                return Indexed(name, state, decode_time(changed))
    raise CorruptedRecordError(f"{STORE}: workflow index record {raw!r} is not version 1 or 2")


def scan_index(db: Any) -> Iterator[tuple[str, Indexed]]:
    """Every workflow of the index, in id order: one prefix scan."""
    prefix = table_key(Table.INDEX)
    with db.iterator(prefix=prefix) as items:
        for k, raw in items:
            yield decode_id(k[len(prefix) :]), _parse_record(raw)


def read_alarm(db: Any, wid: bytes) -> float | None:
    raw = db.get(table_key(Table.ALARM_OF, wid))
    return None if raw is None else decode_time(raw)


def upgrade(db: Any, found: bytes, sync: bool) -> bool:
    """Take a database of layout ``found`` to ``LAYOUT_VERSION`` in one write batch; False if
    ``found`` is a layout this code cannot upgrade."""
    if found != b"1":
        return False
    meta = table_key(Table.META, b"layout")
    changes: Changes = [(meta, LAYOUT_VERSION)]
    for workflow_id, indexed in scan_index(db):
        wid = encode_id(workflow_id)
        changes += index_moves(wid, indexed.name, indexed.state, indexed.state, 0.0)
    fill_batch(db.write_batch(sync=sync), changes).write()
    return True
