"""The only module that touches msgpack.

Every stored record is one format-version byte followed by a msgpack body, so a later
version can read (or refuse) what an earlier one wrote. User values keep their Python
shape across a round trip: tuples come back as tuples (msgpack extension type 1) and bytes as
bytes. Decoding never evaluates or unpickles anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from engine.errors import CorruptedRecordError, SerializationError

FORMAT_VERSION = 1
_VERSION_BYTE = bytes([FORMAT_VERSION])
_EXT_TUPLE = 1
_SUPPORTED = "None, bool, int (64-bit), float, str, bytes, list, tuple and dict"


def _default(obj: object) -> Any:
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _pack(list(obj)))
    # strict_types sends subclasses here; store them as their base type (an enum member
    # that is a str is stored as that str), so replay sees the same plain value.
    if isinstance(obj, str):
        return str.__str__(obj)  # the plain value, not the subclass's __str__ (Enum.__str__)
    for base in (int, float, bytes, list, dict):
        if isinstance(obj, base):
            return base(obj)  # type: ignore[arg-type]
    raise TypeError(f"an object of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(_unpack(data))
    raise ValueError(f"unknown msgpack extension type {code}")


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


Description = str | Callable[[], str]


def _describe(what: Description) -> str:
    return what if isinstance(what, str) else what()


def encode(value: object, what: Description) -> bytes:
    """Encode one record; ``what`` names the value for the error (workflow, step, field).

    ``what`` may be a zero-argument callable: the hot path then never builds the text.
    """
    try:
        return _VERSION_BYTE + _pack(value)
    except OverflowError:
        problem = "an int outside the 64-bit range"
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    raise SerializationError(
        f"{_describe(what)} cannot be stored: {problem} is not serializable "
        f"(supported: {_SUPPORTED})"
    )


def decode(raw: bytes, what: Description) -> Any:
    """Decode one record made by ``encode``; ``what`` names it for the error."""
    if not raw or raw[0] != FORMAT_VERSION:
        found = f"format version {raw[0]}" if raw else "an empty record"
        raise CorruptedRecordError(
            f"{_describe(what)}: found {found}, this engine reads format version {FORMAT_VERSION}"
        )
    try:
        return _unpack(raw[1:])
    except Exception as exc:  # msgpack raises several unrelated types on damaged input
        raise CorruptedRecordError(
            f"{_describe(what)}: damaged record ({type(exc).__name__}: {exc})"
        ) from None
