"""The tuple encoding: round trip, and byte order equal to tuple order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import keys
from engine.keys import Field, Prefix

ints = st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1)
scalars = st.one_of(ints, st.text(), st.binary())
elements = st.recursive(
    scalars, lambda inner: st.tuples(inner) | st.lists(inner, max_size=3).map(tuple), max_leaves=8
)
key_tuples = st.lists(elements, max_size=4).map(tuple)

_RANK = {bytes: 0, str: 1, tuple: 2, int: 3}  # the type codes' order: 0x01 < 0x02 < 0x05 < ints


def sort_key(value: Any) -> Any:
    """Python ordering of key tuples as the encoding defines it across types."""
    if isinstance(value, tuple):
        return (_RANK[tuple], [sort_key(v) for v in value])
    if isinstance(value, str):
        return (_RANK[str], value.encode("utf-8"))
    return (_RANK[type(value)], value)


@given(key_tuples)
def test_round_trip(value: tuple[Any, ...]) -> None:
    assert keys.unpack(keys.pack(value)) == value


@given(key_tuples, key_tuples)
def test_byte_order_equals_tuple_order(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    ka, kb = [sort_key(x) for x in a], [sort_key(x) for x in b]
    pa, pb = keys.pack(a), keys.pack(b)
    assert (pa < pb) == (ka < kb)
    assert (pa == pb) == (ka == kb)


@given(st.lists(ints, min_size=1, max_size=3).map(tuple), ints)
def test_a_tuple_is_a_byte_prefix_of_its_extensions(prefix: tuple[int, ...], extra: int) -> None:
    assert keys.pack((*prefix, extra)).startswith(keys.pack(prefix))


def test_iteration_markers_sort_numerically_under_their_loop() -> None:
    loop = (Prefix.HISTORY, 7)
    encoded = [keys.pack((*loop, (i,), 0)) for i in (0, 1, 2, 9, 10, 255, 256, 70000)]
    assert encoded == sorted(encoded)
    assert all(k.startswith(keys.pack(loop)) for k in encoded)


def test_negative_and_boundary_ints() -> None:
    values = [-(2**64) + 1, -(2**32), -256, -255, -1, 0, 1, 255, 256, 2**32, 2**64 - 1]
    encoded = [keys.pack((v,)) for v in values]
    assert encoded == sorted(encoded)
    assert [keys.unpack(k)[0] for k in encoded] == values


def test_bytes_with_zero_and_ff_keep_their_order() -> None:
    values = [b"", b"\x00", b"\x00\x00", b"\x00\xff", b"\x01", b"\xff", b"\xff\x00", b"\xff\xff"]
    encoded = [keys.pack((v,)) for v in values]
    assert encoded == sorted(encoded)
    assert [keys.unpack(k)[0] for k in encoded] == values


def test_out_of_range_and_unsupported_elements_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        keys.pack((2**64,))
    with pytest.raises(TypeError, match="float"):
        keys.pack((1.5,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        keys.pack((True,))
    with pytest.raises(ValueError, match="malformed|unknown"):
        keys.unpack(b"\x02abc")


def test_layout_builders_and_parsers_pair_up() -> None:
    location = (3, (12,), 5)
    start = len(keys.HISTORY_PREFIX)
    assert keys.parse_location(keys.history_key(location), start) == location
    assert keys.parse_location(keys.metadata_key(location), start) == location
    assert keys.parse_name_key(keys.name_key(41)) == 41
    assert keys.parse_field_key(keys.field_key(Field.OUTPUT)) is Field.OUTPUT
    assert keys.history_key(location).startswith(keys.prefix_key(Prefix.HISTORY))
    assert keys.prefix_end(b"ab\xff") == b"ac"
    with pytest.raises(ValueError):
        keys.prefix_end(b"\xff\xff")
