"""Typed records to stored bytes and back: the codec meets the records here, and only here.

Every stored value is one codec record (a format-version byte and msgpack) holding a small
map with short keys; this module owns that mapping for each record kind and checks the shape
of everything it reads. A parser raises ``ValueError`` (or ``KeyError``, ``TypeError``) on a
record it cannot read; the loader turns that into ``CorruptedRecordError`` naming the
workflow, the record's family and where it is, so bad data never reaches an operation.

=============  ===============================================================================
entry kind     map (besides ``k`` the kind and ``p`` the position in its scope)
=============  ===============================================================================
step           ``d`` done, ``o`` output (when done), ``rb`` + ``s`` completion number
               (a step with a rollback handler)
sleep          ``w`` wake time, ``d`` done
message        ``dl`` deadline or None, ``d`` done, ``m`` payloads (when done), ``nm`` the
               names waited for (absent: any)
join           ``b`` branch names
race           ``b`` branch names, ``w`` winner or None, ``o`` winner's value (a nested record)
loop           ``i`` next iteration, ``d`` done, ``st`` state / ``o`` result (nested records)
iteration      ``st`` the state it started from (a nested record)
removed        ``ot`` the original kind
checkpoint     nothing more
=============  ===============================================================================

Metadata: ``st`` status, ``a`` attempts, ``r`` retry time, ``err`` error, ``rbd`` compensated.
Messages: ``n`` name, ``d`` payload, ``t`` send time. Errors: ``type``, ``module``,
``message``, ``traceback``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import codec
from engine.codec import Description
from engine.errors import SerializationError
from engine.records import (
    BRANCH_STATUSES,
    REMOVABLE,
    STEP_STATUSES,
    CheckpointEntry,
    Entry,
    ErrorRecord,
    IterationEntry,
    JoinEntry,
    LoopEntry,
    MessageEntry,
    MessageRecord,
    Metadata,
    RaceEntry,
    RemovedEntry,
    SleepEntry,
    StepEntry,
)

_STATUSES = STEP_STATUSES | BRANCH_STATUSES


def _int(value: Any, label: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{label} must be an int >= 0, got {value!r}")
    return value


def _bool(value: Any, label: str) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{label} must be a bool, got {value!r}")
    return value


def _time(value: Any, label: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) not in (float, int):
        raise ValueError(f"{label} must be a number, got {value!r}")
    return value


def _str(value: Any, label: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{label} must be a string, got {value!r}")
    return value


def _names(value: Any, label: str) -> list[str]:
    if type(value) is not list or not all(type(name) is str for name in value):
        raise ValueError(f"{label} must be a list of names, got {value!r}")
    return value


def _nested(raw: Any, label: str, what: Description) -> Any:
    """A user value stored as its own codec record inside an entry (race, loop)."""
    if type(raw) is not bytes:
        raise ValueError(f"{label} must be an encoded record, got {type(raw).__name__}")
    return codec.decode(raw, what)


def _map(record: Any) -> dict[Any, Any]:
    if type(record) is not dict:
        raise ValueError(f"expected a map, got {type(record).__name__}")
    return record


# Entries: bytes -> record


def _step(m: dict[Any, Any], pos: int, what: Description) -> StepEntry:
    done = _bool(m["d"], "d")
    seq = m.get("s")
    if seq is not None:
        _int(seq, "s")
    return StepEntry(pos, done, m["o"] if done else None, seq)


def _sleep(m: dict[Any, Any], pos: int, what: Description) -> SleepEntry:
    return SleepEntry(pos, _time(m["w"], "w"), _bool(m["d"], "d"))


def _message(m: dict[Any, Any], pos: int, what: Description) -> MessageEntry:
    done = _bool(m["d"], "d")
    payloads = m["m"] if done else None
    if done and type(payloads) is not list:
        raise ValueError(f"m must be a list of payloads, got {payloads!r}")
    names = m.get("nm")
    if names is not None:
        _names(names, "nm")
    return MessageEntry(pos, _time(m["dl"], "dl", optional=True), done, payloads, names)


def _join(m: dict[Any, Any], pos: int, what: Description) -> JoinEntry:
    return JoinEntry(pos, _names(m["b"], "b"))


def _race(m: dict[Any, Any], pos: int, what: Description) -> RaceEntry:
    branches = _names(m["b"], "b")
    winner = m.get("w")
    if winner is None:
        return RaceEntry(pos, branches)
    if winner not in branches:
        raise ValueError(f"winner {winner!r} is not one of the branches {branches}")
    return RaceEntry(pos, branches, winner, _nested(m["o"], "o", what))


def _loop(m: dict[Any, Any], pos: int, what: Description) -> LoopEntry:
    iteration = _int(m["i"], "i")
    if _bool(m["d"], "d"):
        return LoopEntry(pos, iteration, True, result=_nested(m["o"], "o", what))
    return LoopEntry(pos, iteration, False, state=_nested(m["st"], "st", what))


def _iteration(m: dict[Any, Any], pos: int, what: Description) -> IterationEntry:
    return IterationEntry(pos, _nested(m["st"], "st", what))


def _removed(m: dict[Any, Any], pos: int, what: Description) -> RemovedEntry:
    original = m["ot"]
    if original not in REMOVABLE:
        raise ValueError(f"ot must be one of {', '.join(REMOVABLE)}, got {original!r}")
    return RemovedEntry(pos, original)


def _checkpoint(m: dict[Any, Any], pos: int, what: Description) -> CheckpointEntry:
    return CheckpointEntry(pos)


_ENTRY_PARSERS: dict[Any, Callable[[dict[Any, Any], int, Description], Entry]] = {
    "step": _step,
    "sleep": _sleep,
    "message": _message,
    "join": _join,
    "race": _race,
    "loop": _loop,
    "iteration": _iteration,
    "removed": _removed,
    "checkpoint": _checkpoint,
}


def parse_entry(raw: bytes, what: Description) -> Entry:
    """The history entry in ``raw``; ``what`` names it for ``CorruptedRecordError``."""
    m = codec.decode(raw, what)
    if type(m) is dict and m.get("k") == "step":
        # Most entries are steps and a load reads them all: the checks of _step, inlined.
        pos, done, seq = m.get("p"), m.get("d"), m.get("s")
        if (
            type(pos) is int
            and pos >= 0
            and type(done) is bool
            and (seq is None or (type(seq) is int and seq >= 0))
        ):
            return StepEntry(pos, done, m["o"] if done else None, seq)
    m = _map(m)
    kind = m.get("k")
    parser = _ENTRY_PARSERS.get(kind) if type(kind) is str else None
    if parser is None:
        raise ValueError(f"unknown entry kind {kind!r}")
    return parser(m, _int(m["p"], "p"), what)


# Entries: record -> bytes. Each user value goes through the codec on the first run too,
# and the record is given back holding it as replay will see it.


def entry_bytes(entry: Entry, what: Description) -> bytes:
    """Encode ``entry``; its user values are replaced by what replay will return."""
    m: dict[str, Any] = {"k": entry.kind, "p": entry.pos}
    if type(entry) is StepEntry:
        m["d"] = entry.done
        if entry.seq is not None:
            m["rb"] = True
            m["s"] = entry.seq
        if not entry.done:
            return codec.encode(m, what)
        m["o"] = entry.output
        raw = codec.encode(m, what)
        entry.output = codec.decode(raw, what)["o"]
        return raw
    if type(entry) is SleepEntry:
        m["w"] = entry.wake_at
        m["d"] = entry.done
    elif type(entry) is MessageEntry:
        m["dl"] = entry.deadline
        m["d"] = entry.done
        if entry.names is not None:
            m["nm"] = entry.names
        if entry.done:
            m["m"] = entry.payloads  # consumed payloads, already as stored
    elif type(entry) is JoinEntry:
        m["b"] = entry.branches
    elif type(entry) is RaceEntry:
        m["b"] = entry.branches
        m["w"] = entry.winner
        if entry.winner is not None:
            m["o"], entry.value = _round_trip(entry.value, what)
    elif type(entry) is LoopEntry:
        m["i"] = entry.iteration
        m["d"] = entry.done
        if entry.done:
            m["o"], entry.result = _round_trip(entry.result, what)
        else:
            m["st"], entry.state = _round_trip(entry.state, what)
    elif type(entry) is IterationEntry:
        m["st"] = codec.encode(entry.state, what)
    elif type(entry) is RemovedEntry:
        m["ot"] = entry.original_type
    return codec.encode(m, what)


def check_size(raw: bytes, limit: int | None, what: Description) -> None:
    """``SerializationError`` when a record is over the store's ``max_value_bytes``: refused
    as it is made (never retried: it would be as big again), not by the store mid-write."""
    if limit is not None and len(raw) > limit:
        raise SerializationError(
            f"{codec.describe(what)} cannot be stored: it is {len(raw)} bytes, over the "
            f"store's limit of {limit} bytes"
        )


def _round_trip(value: Any, what: Description) -> tuple[bytes, Any]:
    raw = codec.encode(value, what)
    return raw, codec.decode(raw, what)


def replayed(value: Any, what: Description) -> Any:
    """``value`` as replay will return it (tuples stay tuples, str enums become str)."""
    return codec.decode(codec.encode(value, what), what)


# Metadata


def parse_metadata(raw: bytes, what: Description) -> Metadata:
    m = _map(codec.decode(raw, what))
    status = m.get("st")
    if status is not None and status not in _STATUSES:
        raise ValueError(f"unknown status {status!r}")
    error = m.get("err")
    return Metadata(
        status,
        _int(m.get("a", 0), "a"),
        _time(m.get("r"), "r", optional=True),
        None if error is None else _error(error),
        _bool(m.get("rbd", False), "rbd"),
    )


def metadata_bytes(meta: Metadata, what: Description) -> bytes:
    m: dict[str, Any] = {}
    if meta.status is not None:
        m["st"] = meta.status
    if meta.attempts:
        m["a"] = meta.attempts
    if meta.retry_at is not None:
        m["r"] = meta.retry_at
    if meta.error is not None:
        m["err"] = error_map(meta.error)
    if meta.compensated:
        m["rbd"] = True
    return codec.encode(m, what)


# Errors, names, messages and fields


def _error(raw: Any) -> ErrorRecord:
    m = _map(raw)
    return ErrorRecord(
        _str(m["type"], "error type"),
        _str(m.get("module", ""), "error module"),
        _str(m["message"], "error message"),
        _str(m.get("traceback", ""), "error traceback"),
    )


def error_map(error: ErrorRecord) -> dict[str, str]:
    return {
        "type": error.type,
        "module": error.module,
        "message": error.message,
        "traceback": error.traceback,
    }


def parse_error(raw: bytes, what: Description) -> ErrorRecord:
    return _error(codec.decode(raw, what))


def error_bytes(error: ErrorRecord, what: Description) -> bytes:
    return codec.encode(error_map(error), what)


def parse_name(raw: bytes, what: Description) -> str:
    name = codec.decode_text(raw, what)
    if type(name) is not str or not name:
        raise ValueError(f"a name must be a non-empty string, got {name!r}")
    return name


def name_bytes(name: str) -> bytes:
    return codec.encode_text(name, "name registry entry")


def parse_message(key: bytes, raw: bytes, what: Description) -> MessageRecord:
    m = _map(codec.decode(raw, what))
    return MessageRecord(key, _str(m["n"], "n"), m["d"], _time(m["t"], "t"))


def message_bytes(name: str, data: Any, sent_at: float, what: Description) -> bytes:
    return codec.encode({"n": name, "d": data, "t": sent_at}, what)


MAX_TRACE_HEADERS = 8  # traceparent and tracestate are all W3C trace context defines
MAX_TRACE_HEADER_CHARS = 1024


def parse_trace(raw: bytes, what: Description) -> dict[str, str]:
    """Stored trace-context headers: a small map of short strings (anything else is damage)."""
    carrier = _map(codec.decode(raw, what))
    if len(carrier) > MAX_TRACE_HEADERS:
        raise ValueError(f"a trace context holds at most {MAX_TRACE_HEADERS} headers")
    for key, value in carrier.items():
        _str(key, "a trace header name")
        if len(_str(value, "a trace header")) > MAX_TRACE_HEADER_CHARS:
            raise ValueError(f"trace header {key!r} is over {MAX_TRACE_HEADER_CHARS} characters")
    return carrier


def trace_bytes(carrier: dict[str, str]) -> bytes:
    return codec.encode(carrier, "trace context")


def parse_string(raw: bytes, what: Description) -> str:
    return _str(codec.decode_text(raw, what), "the field")


def value_bytes(value: Any, what: Description) -> bytes:
    return codec.encode(value, what)


def parse_value(raw: bytes, what: Description) -> Any:
    return codec.decode(raw, what)
