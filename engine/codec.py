"""The only module that touches msgpack.

Every stored record is one format-version byte followed by a msgpack body, so a later
version can read (or refuse) what an earlier one wrote. User values keep their Python
shape across a round trip: tuples come back as tuples (msgpack extension type 1, whose
payload is the tuple's items packed as a list) and bytes as bytes. Decoding never evaluates
or unpickles anything.

A value without a tuple (nearly every record) is one call into msgpack each way. A tuple is
a msgpack document inside its parent's, so a value holding one is packed and unpacked by a
walk with an explicit stack, never by a msgpack hook calling msgpack, and held to
``MAX_DEPTH``. Nothing is kept between calls, so threads may encode and decode at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

import msgpack

from engine.errors import CorruptedRecordError, SerializationError

FORMAT_VERSION = 1
_VERSION_BYTE = bytes([FORMAT_VERSION])
_EXT_TUPLE = 1

MAX_DEPTH = 100
"""How many containers deep a value holding a tuple may nest; deeper is refused.

Every list, tuple and dict is one level on the way down to the deepest item: ``7`` is depth
0, ``[7]`` is 1, ``{"k": (7,)}`` is 2, and a dict's keys count like its values. The depth is
the whole record's: where the engine wraps a user value in a record of its own (a message,
a history entry), the wrapping takes a level or two of the limit.

Why tuples: msgpack has none, so each tuple is an extension record whose payload is a
msgpack document of its own. Unpacking those recursively (a msgpack hook calling msgpack
again, ~40 KiB of C stack a level) overflowed an 8 MiB stack at about 200 levels, killing
every process that loaded the record; packing them so hit RecursionError. A value holding a
tuple is therefore packed and unpacked by a walk with an explicit stack (the same small C
and Python stack whatever the input), which refuses the first container past this depth:
``encode`` raises ``SerializationError``, ``decode`` raises ``CorruptedRecordError``.

A value without any tuple is not walked (that would cost every step a pass over its value)
and so is not held to this limit: msgpack's C code packs and unpacks lists and dicts without
recursing through Python and bounds their depth itself. Its packer refuses more than 1,024
levels (511 before msgpack 1.2) and its unpacker more than 1,024; those refusals surface as
the same two errors. Any value within ``MAX_DEPTH`` round-trips.
"""

_SUPPORTED = "None, bool, int (64-bit), float, str, bytes, list, tuple and dict"
_LIMIT = f", nested at most {MAX_DEPTH} levels deep"
_CONTAINERS = (tuple, list, dict)
# What msgpack packs and unpacks by itself: a container holding only these needs no walk.
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_LIST, _DICT, _TUPLE = 0, 1, 2


class _TupleMet(Exception):
    """Stops the one-call path at the first tuple: the value takes the walk instead."""


class _TooDeep(Exception):
    """Stops a walk at the first container past ``MAX_DEPTH``."""


class _Payload:
    """A stored tuple's payload, unpacked when the decoding walk reaches it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _default(obj: object) -> Any:
    if isinstance(obj, tuple):
        raise _TupleMet
    # strict_types sends subclasses here; store them as their base type (an enum member
    # that is a str is stored as that str), so replay sees the same plain value.
    if isinstance(obj, str):
        return str.__str__(obj)  # the plain value, not the subclass's __str__ (Enum.__str__)
    for base in (int, float, bytes, list, dict):
        if isinstance(obj, base):
            return base(obj)  # type: ignore[arg-type]
    raise TypeError(f"an object of type {type(obj).__name__}")


def _tuple_met(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        raise _TupleMet
    raise ValueError(f"unknown msgpack extension type {code}")


def _defer(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return _Payload(data)
    raise ValueError(f"unknown msgpack extension type {code}")


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes, ext_hook: Callable[[int, bytes], Any]) -> Any:
    return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False)


def _pack_walking(value: object) -> bytes:
    """Pack a value that holds a tuple, each tuple into its extension record once its items
    are packed, innermost first.

    The containers being copied are an explicit stack, so nothing recurses, and the first
    container deeper than ``MAX_DEPTH`` raises ``_TooDeep``. The caller's containers are
    copied, never changed; one holding only scalars is taken as it is.
    """
    scalars, flat = _SCALARS, _SCALARS.issuperset  # flat(map(type, ...)) runs at C speed
    done: list[Any] = []
    stack: list[tuple[int, Iterator[Any], list[Any]]] = [(_LIST, iter((value,)), done)]
    while stack:
        _, items, out = stack[-1]
        for item in items:
            cls = type(item)
            if cls in scalars or not isinstance(item, _CONTAINERS) or cls is msgpack.ExtType:
                out.append(item)  # ExtType: a tuple that msgpack packs itself
                continue
            if len(stack) > MAX_DEPTH:
                raise _TooDeep
            if isinstance(item, tuple):
                if flat(map(type, item)):
                    out.append(msgpack.ExtType(_EXT_TUPLE, _pack(list(item))))
                    continue
                stack.append((_TUPLE, iter(item), []))
            elif isinstance(item, list):
                if flat(map(type, item)):
                    out.append(item)
                    continue
                stack.append((_LIST, iter(item), []))
            else:
                if flat(map(type, item)) and flat(map(type, item.values())):
                    out.append(item)
                    continue
                stack.append((_DICT, chain.from_iterable(item.items()), []))
            break
        else:
            kind, _, out = stack.pop()
            if not stack:
                break
            if kind == _TUPLE:
                stack[-1][2].append(msgpack.ExtType(_EXT_TUPLE, _pack(out)))
            elif kind == _DICT:
                stack[-1][2].append(dict(zip(out[::2], out[1::2], strict=True)))
            else:
                stack[-1][2].append(out)
    return _pack(done[0])


def _unpack_walking(body: bytes) -> Any:
    """Unpack a record that holds a tuple: each payload is unpacked when the walk reaches
    it, and its tuple built once its items are final.

    The containers being filled in are an explicit stack, so nothing recurses, and the
    first container deeper than ``MAX_DEPTH`` raises ``_TooDeep``. Lists and dicts are
    fresh from msgpack, so they are changed in place; one holding only scalars is skipped.
    """
    scalars, flat, unpackb = _SCALARS, _SCALARS.issuperset, msgpack.unpackb
    root = [_unpack(body, _defer)]
    # (kind, (slot, child) pairs, container, where a finished tuple or dict goes)
    stack: list[tuple[int, Iterator[tuple[Any, Any]], Any, Any, Any]] = [
        (_LIST, enumerate(root), root, None, None)
    ]
    while stack:
        kind, slots, container, parent, key = stack[-1]
        for slot, child in slots:
            cls = type(child)
            if cls in scalars or (cls is not _Payload and cls is not list and cls is not dict):
                continue
            if len(stack) > MAX_DEPTH:
                raise _TooDeep
            if cls is _Payload:
                items = unpackb(child.data, ext_hook=_defer, raw=False, strict_map_key=False)
                if type(items) is not list:
                    raise ValueError(f"a tuple stored as {type(items).__name__}")
                if flat(map(type, items)):
                    container[slot] = tuple(items)
                    continue
                stack.append((_TUPLE, enumerate(items), items, container, slot))
            elif cls is list:
                if flat(map(type, child)):
                    continue
                stack.append((_LIST, enumerate(child), child, None, None))
            elif flat(map(type, child)):  # a dict whose keys are plain: fill its values in
                if flat(map(type, child.values())):
                    continue
                stack.append((_LIST, iter(child.items()), child, None, None))
            else:  # a tuple among its keys: refill it once keys and values are built
                pairs = list(chain.from_iterable(child.items()))
                stack.append((_DICT, enumerate(pairs), pairs, child, None))
            break
        else:
            stack.pop()
            if kind == _TUPLE:
                parent[key] = tuple(container)
            elif kind == _DICT:
                parent.clear()
                parent.update(zip(container[::2], container[1::2], strict=True))
    return root[0]


def _depth(value: object) -> int | None:
    """How many containers deep ``value`` nests, or None when it contains itself."""
    deepest = 0
    open_ids: list[int] = []
    on_path: set[int] = set()
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            if isinstance(item, _CONTAINERS) and type(item) is not msgpack.ExtType:
                if id(item) in on_path:
                    return None
                on_path.add(id(item))
                open_ids.append(id(item))
                children = item.items() if isinstance(item, dict) else (item,)
                stack.append(chain.from_iterable(children))
                deepest = max(deepest, len(stack) - 1)
                break
        else:
            stack.pop()
            if open_ids:
                on_path.discard(open_ids.pop())
    return deepest


def _nesting(value: object) -> str:
    depth = _depth(value)
    if depth is None:
        return "a value that contains itself"
    return f"a value nested {depth} levels deep"


Description = str | Callable[[], str]


def describe(what: Description) -> str:
    """The text of a description (a callable is called)."""
    return what if isinstance(what, str) else what()


def encode(value: object, what: Description) -> bytes:
    """Encode one record; ``what`` names the value for the error (workflow, step, field).

    ``what`` may be a zero-argument callable: the hot path then never builds the text.
    """
    try:
        try:
            return _VERSION_BYTE + _pack(value)
        except _TupleMet:
            return _VERSION_BYTE + _pack_walking(value)
    except _TooDeep:
        problem, limit = _nesting(value), _LIMIT
    except OverflowError:
        problem, limit = "an int outside the 64-bit range", ""
    except (TypeError, ValueError, RecursionError) as exc:
        problem, limit = str(exc), ""
        # msgpack's own bound on nested lists and dicts ("recursion limit exceeded"), or its
        # pure-Python fallback recursing: say how deep, as for a tuple.
        if isinstance(exc, RecursionError) or "recursion limit" in problem:
            problem, limit = _nesting(value), _LIMIT
    raise SerializationError(
        f"{describe(what)} cannot be stored: {problem} is not serializable "
        f"(supported: {_SUPPORTED}{limit})"
    )


def encode_text(text: str, what: Description) -> bytes:
    """``encode`` for a string (a name, a state): a short ASCII one is written straight,
    sparing a call into msgpack; the bytes are the same."""
    if len(text) < 32 and text.isascii() and type(text) is str:
        return bytes((FORMAT_VERSION, 0xA0 + len(text))) + text.encode()
    return encode(text, what)


def decode_text(raw: bytes, what: Description) -> Any:
    """``decode`` for a record that usually holds a short string (a name, a state): one of
    up to 31 UTF-8 bytes is read straight off the record, sparing a call into msgpack;
    anything else is decoded as usual (and checked by the caller)."""
    # msgpack's fixstr: one byte 0xA0 + length, then the text (the record: 2 + length bytes)
    if (
        len(raw) >= 2
        and raw[0] == FORMAT_VERSION
        and 0xA0 <= raw[1] <= 0xBF
        and len(raw) == 2 + raw[1] - 0xA0
    ):
        try:
            return raw[2:].decode()
        except UnicodeDecodeError:
            pass
    return decode(raw, what)


def decode(raw: bytes, what: Description) -> Any:
    """Decode one record made by ``encode``; ``what`` names it for the error."""
    if not raw or raw[0] != FORMAT_VERSION:
        found = f"format version {raw[0]}" if raw else "an empty record"
        raise CorruptedRecordError(
            f"{describe(what)}: found {found}, this engine reads format version {FORMAT_VERSION}"
        )
    body = raw[1:]
    try:
        try:
            return _unpack(body, _tuple_met)
        except _TupleMet:
            return _unpack_walking(body)
    except _TooDeep:
        problem = f"nested more than {MAX_DEPTH} levels deep, the most this engine reads"
    except Exception as exc:  # msgpack raises several unrelated types on damaged input
        problem = f"{type(exc).__name__}: {exc}"
    raise CorruptedRecordError(f"{describe(what)}: damaged record ({problem})")
