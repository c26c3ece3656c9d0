"""Order-preserving tuple encoding and the key layout of one workflow's namespace.

Drivers compare keys as raw bytes, so the encoding is built so that byte order equals tuple
order: a driver's sorted ``list`` returns history in location order and a key prefix selects
exactly one subtree. Each element starts with a type code; the codes rank bytes < str <
tuple < int.

============  =====================================================================
element       encoding
============  =====================================================================
bytes         0x01, bytes with 0x00 escaped as 0x00 0xFF, terminator 0x00
str           0x02, UTF-8 escaped like bytes, terminator 0x00
tuple         0x05, elements (nested), terminator 0x00
int 0         0x14
int > 0       0x14 + n, n big-endian bytes (n = 1..8)
int < 0       0x14 - n, n bytes of the one's complement (n = 1..8)
============  =====================================================================

Key layout (every key is an encoded tuple whose first element is a ``Prefix``):

=======================  ==========================================================
key                      value
=======================  ==========================================================
(NAMES, index)           an interned operation name (str)
(HISTORY, *location)     the entry recorded at that location (kind, position, data)
(METADATA, *location)    attempts, status, last error, retry time of that entry
(MESSAGES, ns, nonce)    a message not yet consumed: name, payload, sent time
(FIELDS, field)          one workflow field (``Field``)
=======================  ==========================================================

A location is a tuple of name indices and loop-iteration markers; a marker is the 1-tuple
``(iteration,)`` so that all iterations of one loop sort by number under the loop's key.
"""

from __future__ import annotations

import functools
from enum import IntEnum
from typing import TypeAlias

KeyElement: TypeAlias = "int | str | bytes | tuple[KeyElement, ...]"

_BYTES = 0x01
_STR = 0x02
_TUPLE = 0x05
_INT_ZERO = 0x14
_MAX_INT_BYTES = 8
_INT_LIMIT = 1 << (8 * _MAX_INT_BYTES)


class Prefix(IntEnum):
    """First element of every key: which table of the namespace it belongs to."""

    NAMES = 1
    HISTORY = 2
    METADATA = 3
    MESSAGES = 4
    FIELDS = 5


class Field(IntEnum):
    """Workflow-level fields stored under ``(FIELDS, field)``."""

    STATE = 1
    INPUT = 2
    OUTPUT = 3
    ERROR = 4
    NAME = 5
    ROLLBACK_ERROR = 7  # 6 was a version field that was never written
    TRACE = 8  # the trace context runs continue (W3C trace-context headers); engine.tracing


def _escape(raw: bytes) -> bytes:
    return raw.replace(b"\x00", b"\x00\xff")


def _encode_into(out: bytearray, value: KeyElement) -> None:
    if isinstance(value, bool):
        raise TypeError("bool is not a key element; use int")
    if isinstance(value, int):
        if value == 0:
            out.append(_INT_ZERO)
            return
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise ValueError(f"key integer {value} does not fit in {_MAX_INT_BYTES} bytes")
        magnitude = abs(value)
        size = (magnitude.bit_length() + 7) // 8
        if value > 0:
            out.append(_INT_ZERO + size)
            out += magnitude.to_bytes(size, "big")
        else:
            out.append(_INT_ZERO - size)
            out += ((1 << (8 * size)) - 1 - magnitude).to_bytes(size, "big")
    elif isinstance(value, str):
        out.append(_STR)
        out += _escape(value.encode("utf-8"))
        out.append(0x00)
    elif isinstance(value, bytes | bytearray | memoryview):
        out.append(_BYTES)
        out += _escape(bytes(value))
        out.append(0x00)
    elif isinstance(value, tuple):
        out.append(_TUPLE)
        for item in value:
            _encode_into(out, item)
        out.append(0x00)
    else:
        raise TypeError(f"unsupported key element type: {type(value).__name__}")


def pack(elements: tuple[KeyElement, ...]) -> bytes:
    """Encode a tuple of key elements; byte order of results equals tuple order."""
    out = bytearray()
    for element in elements:
        _encode_into(out, element)
    return bytes(out)


def _read_escaped(data: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while True:
        end = data.index(b"\x00", pos)
        out += data[pos:end]
        if end + 1 < len(data) and data[end + 1] == 0xFF:
            out.append(0x00)
            pos = end + 2
        else:
            return bytes(out), end + 1


def _decode_one(data: bytes, pos: int) -> tuple[KeyElement, int]:
    code = data[pos]
    pos += 1
    if code == _BYTES:
        return _read_escaped(data, pos)
    if code == _STR:
        raw, pos = _read_escaped(data, pos)
        return raw.decode("utf-8"), pos
    if code == _TUPLE:
        items: list[KeyElement] = []
        while data[pos] != 0x00:
            item, pos = _decode_one(data, pos)
            items.append(item)
        return tuple(items), pos + 1
    if _INT_ZERO - _MAX_INT_BYTES <= code <= _INT_ZERO + _MAX_INT_BYTES:
        size = code - _INT_ZERO
        if size == 0:
            return 0, pos
        if size > 0:
            return int.from_bytes(data[pos : pos + size], "big"), pos + size
        size = -size
        raw_int = int.from_bytes(data[pos : pos + size], "big")
        return raw_int - ((1 << (8 * size)) - 1), pos + size
    raise ValueError(f"unknown key type code 0x{code:02x} at offset {pos - 1}")


def unpack(data: bytes) -> tuple[KeyElement, ...]:
    """Decode bytes made by ``pack``; raises ``ValueError`` on malformed input."""
    items: list[KeyElement] = []
    pos = 0
    try:
        while pos < len(data):
            item, pos = _decode_one(data, pos)
            items.append(item)
    except (IndexError, ValueError) as exc:  # ValueError covers a missing terminator
        raise ValueError(f"malformed key {data!r}: {exc}") from exc
    return tuple(items)


# Builders and parsers of the layout, in pairs.

Location: TypeAlias = "tuple[int | tuple[int], ...]"


def name_key(index: int) -> bytes:
    return NAMES_PREFIX + encode_segment(index)


def parse_name_key(key: bytes) -> int:
    """Index of a ``name_key``; raises ``ValueError`` for anything else."""
    if len(key) == _NAME_KEY_SMALL and key[_NAME_KEY_SMALL - 2] == _INT_ZERO + 1:
        return key[_NAME_KEY_SMALL - 1]  # one of the first 255 names: read straight off
    location = parse_location(key, len(NAMES_PREFIX))
    if len(location) != 1 or type(location[0]) is not int:
        raise ValueError(f"malformed name key {key!r}")
    return location[0]


def history_key(location: Location) -> bytes:
    return pack((Prefix.HISTORY, *location))


def metadata_key(location: Location) -> bytes:
    return pack((Prefix.METADATA, *location))


def encode_segment(segment: int | tuple[int]) -> bytes:
    """One location segment; a location's key is its prefix plus its segments, concatenated."""
    if type(segment) is int and 0 <= segment < 65536:  # a name index: the common case
        if segment < 256:
            return bytes((_INT_ZERO + 1, segment)) if segment else _ZERO_SEGMENT
        return bytes((_INT_ZERO + 2, segment >> 8, segment & 0xFF))
    return pack((segment,))


_ZERO_SEGMENT = bytes((_INT_ZERO,))


def parse_location(data: bytes, start: int = 0) -> Location:
    """Decode location segments from ``start`` (the location of a ``history_key`` or
    ``metadata_key`` starts after its table prefix): a fast path for what the engine writes
    (non-negative ints and 1-tuples of them), the general decoder for anything else."""
    end = len(data)
    if end - start == 2 and data[start] == _INT_ZERO + 1:
        return (data[start + 1],)  # one small name index: most history keys
    if end - start == 3 and data[start] == _INT_ZERO + 2:
        return ((data[start + 1] << 8) | data[start + 2],)  # one of the next 65,280 names
    if end - start == 4 and data[start] == data[start + 2] == _INT_ZERO + 1:
        return (data[start + 1], data[start + 3])
    out: list[int | tuple[int]] = []
    pos = start
    while pos < end:
        code = data[pos]
        if _INT_ZERO <= code <= _INT_ZERO + _MAX_INT_BYTES:
            size = code - _INT_ZERO
            out.append(int.from_bytes(data[pos + 1 : pos + 1 + size], "big"))
            pos += 1 + size
        elif code == _TUPLE and pos + 1 < end and _INT_ZERO <= data[pos + 1] <= _INT_ZERO + 8:
            size = data[pos + 1] - _INT_ZERO
            close = pos + 2 + size
            if close >= end or data[close] != 0x00:
                break
            out.append((int.from_bytes(data[pos + 2 : close], "big"),))
            pos = close + 1
        else:
            break
    if pos < end:
        return tuple(unpack(data[start:]))  # type: ignore[arg-type]
    return tuple(out)


def message_key(sent_ns: int, nonce: int) -> bytes:
    return pack((Prefix.MESSAGES, sent_ns, nonce))


@functools.cache
def field_key(field: Field) -> bytes:
    """Constant per field, and asked for several times a run: packed once."""
    return pack((Prefix.FIELDS, field))


def parse_field_key(key: bytes) -> Field:
    """The field of a ``field_key``; raises ``ValueError`` for an unknown one."""
    elements = unpack(key)
    if len(elements) != 2 or type(elements[1]) is not int:
        raise ValueError(f"malformed field key {key!r}")
    return Field(elements[1])


def prefix_key(prefix: Prefix) -> bytes:
    return pack((prefix,))


def prefix_end(prefix: bytes) -> bytes:
    """Smallest key greater than every key that starts with ``prefix`` (for ranges)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        raise ValueError("a prefix of only 0xFF bytes has no upper bound")
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


HISTORY_PREFIX = prefix_key(Prefix.HISTORY)
METADATA_PREFIX = prefix_key(Prefix.METADATA)
NAMES_PREFIX = prefix_key(Prefix.NAMES)
_NAME_KEY_SMALL = len(NAMES_PREFIX) + 2
