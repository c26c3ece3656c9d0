"""The codec: versioned records, shapes preserved, clear errors, nothing evaluated."""

from __future__ import annotations

import pickle
from datetime import datetime
from enum import Enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec
from engine.errors import CorruptedRecordError, SerializationError

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text() | st.integers(-(2**63), 2**63 - 1), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(values)
def test_values_come_back_with_their_shape(value: object) -> None:
    decoded = codec.decode(codec.encode(value, "v"), "v")
    assert decoded == value
    assert type(decoded) is type(value)


def test_tuples_and_bytes_stay_tuples_and_bytes_when_nested() -> None:
    value = {"t": (1, (2, b"\x00"), [3, (4,)]), "b": b"\xff"}
    decoded = codec.decode(codec.encode(value, "v"), "v")
    assert decoded == value
    assert type(decoded["t"]) is tuple and type(decoded["t"][1]) is tuple
    assert type(decoded["t"][2][1]) is tuple and type(decoded["b"]) is bytes


def test_every_record_starts_with_the_format_version() -> None:
    assert codec.encode("x", "v")[0] == codec.FORMAT_VERSION


def test_a_str_enum_is_stored_as_its_plain_value() -> None:
    class Color(str, Enum):  # noqa: UP042 - the Enum.__str__ case is the point
        RED = "red"

    decoded = codec.decode(codec.encode({"c": Color.RED}, "v"), "v")
    assert decoded == {"c": "red"} and type(decoded["c"]) is str


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(datetime(2026, 1, 1), "datetime"), ({1, 2}, "set"), (2**70, "64-bit"), (object(), "object")],
)
def test_unserializable_values_name_what_and_why(value: object, fragment: str) -> None:
    with pytest.raises(SerializationError) as info:
        codec.encode({"nested": [value]}, "workflow 'w' step 'charge' output")
    message = str(info.value)
    assert "workflow 'w' step 'charge' output cannot be stored" in message and fragment in message


@pytest.mark.parametrize("raw", [b"", b"\x09\x01", b"\x01\xc1", b"\x01\x92\x01"])
def test_damaged_or_foreign_records_raise_a_clear_error(raw: bytes) -> None:
    with pytest.raises(CorruptedRecordError, match="record 'k'"):
        codec.decode(raw, "record 'k'")


def test_pickle_payloads_are_never_unpickled() -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    with pytest.raises(CorruptedRecordError):
        codec.decode(bytes([codec.FORMAT_VERSION]) + pickle.dumps(Boom()), "record")
