"""One workflow's state in memory: loaded once at run start, flushed as one batch per flush.

``load`` reads the whole namespace (one ``list``, or the rows a worker's claim already
read), checks every record's shape and builds typed records, so a damaged store fails the
run with ``CorruptedRecordError`` before any workflow code runs and before anything is
written. Every change is then queued as a pending write (key -> bytes, or ``None`` to
delete); ``flush`` sends all of them in ONE ``driver.batch`` call, and sends nothing when
nothing changed, so a pure replay never writes.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import anyio

import engine.storage.wire as wire
from engine import keys
from engine.driver import EngineDriver
from engine.errors import CorruptedRecordError, StorageError
from engine.keys import Field, Location, Prefix
from engine.location import NameRegistry
from engine.records import (
    MISSING,
    Entry,
    ErrorRecord,
    MessageRecord,
    Metadata,
    StepEntry,
    WorkflowFields,
)
from engine.state import WorkflowState
from engine.storage.tree import Node, walk

Writes = list[tuple[bytes, bytes | None]]
E = TypeVar("E", bound=Entry)

_HISTORY = keys.HISTORY_PREFIX
_METADATA = keys.METADATA_PREFIX


class Storage:
    """The loaded state of one workflow and the writes not yet flushed."""

    def __init__(self, driver: EngineDriver, workflow_id: str) -> None:
        self.driver = driver
        self.workflow_id = workflow_id
        self.names = NameRegistry()
        self.root = Node()
        self.fields = WorkflowFields()
        self._flushed_fields: dict[Field, Any] = {}
        self.messages: list[MessageRecord] = []
        self._consumed: set[bytes] = set()
        self.pending: dict[bytes, bytes | None] = {}
        # A step's output is pending and must land before anything else runs (ops.step).
        self.owed = False
        self.next_seq = 0
        self.seen_before = False  # the workflow had stored fields when this run loaded it
        self.saw_messages = False  # a message was in the store at some look during this run
        self.broken = False
        self.on_flushed: Callable[[], Awaitable[None]] | None = None
        self._in_flight = False
        self._flushed_event: anyio.Event | None = None  # made only when a flush must wait
        self._dirty_fields: set[Field] = set()
        self._known_names = 0  # names loaded: a location using a higher index is corrupted
        # The store's limit on one value: a record over it is refused as it is made.
        self.max_value_bytes: int | None = getattr(driver, "max_value_bytes", None)

    # Loading

    async def load(self, snapshot: Sequence[tuple[bytes, bytes]] | None = None) -> None:
        """Read the whole namespace with one ``list`` (or take ``snapshot``: the same rows,
        sorted by key like any ``list``, read by whoever claimed the workflow)."""
        try:
            rows = await self._list(b"") if snapshot is None else snapshot
            # Thousands of records become objects here at once, none of them in a cycle:
            # the collector's passes meanwhile (each walking every tracked object) would
            # cost more than the decoding itself, and find nothing.
            collecting = gc.isenabled()
            gc.disable()
            try:
                self._load(rows)
            finally:
                if collecting:
                    gc.enable()
        except CorruptedRecordError:
            self.broken = True  # never write over a store that could not be read
            raise

    def _load(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        # One list of everything (sorted by key, so each table is one run of rows), split by
        # table here: on a networked store that is one round trip and one statement. No
        # snapshot across runs is needed: while a run is going on the engine is the only
        # writer of everything but messages, which are read again before the run yields.
        where = _Where(self.workflow_id, self.names)
        table = _split_tables(rows)
        if table is None:
            where.at("record", next(k for k, _ in rows if k[:_PREFIX_LEN] not in _PREFIXES))
            raise CorruptedRecordError(f"{where()}: not a key this engine writes")
        try:
            where.family = "name"
            for key, raw in table[Prefix.NAMES]:
                where.key = key
                self.names.load(keys.parse_name_key(key), wire.parse_name(raw, where))
            self._known_names = len(self.names)
            where.family = "field"
            for key, raw in table[Prefix.FIELDS]:
                where.key = key
                self._load_field(keys.parse_field_key(key), raw, where)
            self._flushed_fields = dict(self._field_values())
            self.seen_before = self.fields.seen
            where.family = "history entry"
            next_seq = 0
            for key, raw in table[Prefix.HISTORY]:
                where.key = key
                entry = wire.parse_entry(raw, where)
                self._node_for_key(key).entry = entry
                if type(entry) is StepEntry and entry.seq is not None:
                    next_seq = max(next_seq, entry.seq + 1)
            self.next_seq = next_seq
            where.family = "metadata"
            for key, raw in table[Prefix.METADATA]:
                where.key = key
                node = self._node_for_key(key)
                node.meta = meta = wire.parse_metadata(raw, where)
                if meta.failed and meta.error is None and type(node.entry) is StepEntry:
                    raise ValueError(f"the step's status is {meta.status} with no error")
            where.family = "message"
            self._add_messages(table[Prefix.MESSAGES], where)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CorruptedRecordError(f"{where()}: {reason}") from None

    def _load_field(self, field: Field, raw: bytes, where: _Where) -> None:
        fields = self.fields
        if field is Field.STATE:
            fields.state = WorkflowState(wire.parse_string(raw, where))
        elif field is Field.NAME:
            fields.name = wire.parse_string(raw, where)
        elif field is Field.INPUT:
            fields.input = wire.parse_value(raw, where)
        elif field is Field.OUTPUT:
            fields.output = wire.parse_value(raw, where)
        elif field is Field.ERROR:
            fields.error = wire.parse_error(raw, where)
        elif field is Field.ROLLBACK_ERROR:
            fields.rollback_error = wire.parse_error(raw, where)
        else:
            fields.trace = wire.parse_trace(raw, where)

    def _field_values(self) -> Iterator[tuple[Field, Any]]:
        """The stored fields as (field, value), those present only."""
        fields = self.fields
        for field, value in (
            (Field.STATE, fields.state),
            (Field.NAME, fields.name),
            (Field.INPUT, fields.input),
            (Field.OUTPUT, fields.output),
            (Field.ERROR, fields.error),
            (Field.ROLLBACK_ERROR, fields.rollback_error),
            (Field.TRACE, fields.trace),
        ):
            if value is not None and value is not MISSING:
                yield field, value

    async def _list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return await self.driver.list(prefix)
        except Exception as exc:
            raise self._failed("list", exc)  # noqa: B904 - the cause is set in _failed

    async def refresh_messages(self) -> bool:
        """Pick up messages written since the last look; True when any arrived."""
        listed = await self._list(_MESSAGES)
        where = _Where(self.workflow_id, self.names, "message")
        try:
            return self._add_messages(listed, where)
        except CorruptedRecordError:
            self.broken = True
            raise
        except (ValueError, KeyError, TypeError) as exc:
            self.broken = True
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CorruptedRecordError(f"{where()}: {reason}") from None

    def _add_messages(self, listed: Sequence[tuple[bytes, bytes]], where: _Where) -> bool:
        self.saw_messages = self.saw_messages or bool(listed)
        # Called only after the read: two refreshes may run at once (a local send and a
        # wake-up), and a message must not be added twice.
        known = {m.key for m in self.messages} | self._consumed
        arrived = False
        for key, raw in listed:
            if key not in known:
                known.add(key)
                where.key = key
                self.messages.append(wire.parse_message(key, raw, where))
                arrived = True
        return arrived

    # History

    def intern(self, name: str) -> int:
        """Index of ``name``; a first use queues the name's record (it lands with the entry)."""
        index = self.names.by_name.get(name)
        if index is None:
            index = self.names.add(name)
            self.pending[keys.name_key(index)] = wire.name_bytes(name)
        return index

    def node(self, location: Location) -> Node:
        """The node at ``location`` (a detached empty one when nothing is recorded there)."""
        node = self.root
        for segment in location:
            child = node.children.get(segment)
            if child is None:
                return Node(segment)
            node = child
        return node

    def _node_for_key(self, key: bytes) -> Node:
        """The node of a loaded history or metadata key (its suffix is taken from the key)."""
        location = keys.parse_location(key, _PREFIX_LEN)
        known = self._known_names
        node = self.root
        if len(location) == 1:  # a top-level entry: most of them
            segment = location[0]
            if type(segment) is not int or segment >= known:
                raise ValueError(f"its location {location!r} uses a name that is not stored")
            child = node.children.get(segment)
            if child is None:
                child = node.children[segment] = Node(segment, key[_PREFIX_LEN:])
            return child
        for depth, segment in enumerate(location):
            if type(segment) is int:
                if segment >= known:
                    raise ValueError(f"its location uses name #{segment}, which is not stored")
            elif type(segment) is not tuple:
                raise ValueError(f"its location holds {segment!r}")
            child = node.children.get(segment)
            if child is None:
                if depth == len(location) - 1:
                    child = Node(segment, suffix=key[_PREFIX_LEN:])
                    node.children[segment] = child
                else:
                    child = node.child(segment)
            node = child
        return node

    def record(self, location: Location, scope: Node, node: Node, entry: E) -> E:
        """Queue ``entry`` at ``location`` in ``scope``; returns it holding its user values
        as replay will return them (they went through the codec)."""
        what = lambda: f"workflow {self.workflow_id!r} entry {self.names.render(location)}"  # noqa: E731
        raw = wire.entry_bytes(entry, what)
        if self.max_value_bytes is not None and len(raw) > self.max_value_bytes:
            wire.check_size(raw, self.max_value_bytes, what)
        if node.entry is None:
            scope.ordered().append(node)
        node.entry = entry
        self.pending[_HISTORY + node.suffix] = raw
        return entry

    def record_meta(self, location: Location, node: Node, meta: Metadata) -> None:
        node.meta = meta
        self.pending[_METADATA + node.suffix] = wire.metadata_bytes(
            meta, lambda: f"workflow {self.workflow_id!r} metadata {self.names.render(location)}"
        )

    def replayed(self, value: Any, what: Callable[[], str]) -> Any:
        """``value`` as a later run will see it (a loop's state between commits)."""
        return wire.replayed(value, what)

    def take_seq(self) -> int:
        """Next completion number: rollback runs handlers in reverse of this order."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def delete_subtree(self, parent: Node, segment: Any) -> None:
        """Forget a subtree and queue deletes for every key in it (same batch, so atomic)."""
        node = parent.children.pop(segment, None)
        if node is None:
            return
        if parent._ordered is not None and node.entry is not None:
            parent._ordered.remove(node)
        for sub in node.subtree():
            if sub.entry is not None:
                self.pending[_HISTORY + sub.suffix] = None
            if sub.meta is not None:
                self.pending[_METADATA + sub.suffix] = None

    def walk(self) -> Iterator[tuple[Location, Node]]:
        return walk((), self.root)

    # Fields and messages

    def set_state(self, state: WorkflowState) -> None:
        """Queue the state, or drop a queued one when it is back to the stored state."""
        self.fields.state = state
        self._set_field(Field.STATE, state, lambda: wire.value_bytes(state.value, "state"))

    def set_input(self, value: Any) -> Any:
        """Queue the input; returns it as every later run will see it."""
        what = f"workflow {self.workflow_id!r} input"
        raw = wire.value_bytes(value, what)
        wire.check_size(raw, self.max_value_bytes, what)
        self.fields.input = wire.parse_value(raw, "input")
        self._queue_field(Field.INPUT, raw)
        return self.fields.input

    def set_output(self, value: Any) -> Any:
        """Queue the output; returns it as every later run will see it. An unserializable
        value raises here, before anything is queued."""
        what = f"workflow {self.workflow_id!r} output"
        raw = wire.value_bytes(value, what)
        wire.check_size(raw, self.max_value_bytes, what)
        self.fields.output = wire.parse_value(raw, "output")
        self._queue_field(Field.OUTPUT, raw)
        return self.fields.output

    def set_error(self, error: ErrorRecord | None) -> None:
        self.fields.error = error
        self._set_error_field(Field.ERROR, error)

    def set_rollback_error(self, error: ErrorRecord | None) -> None:
        self.fields.rollback_error = error
        self._set_error_field(Field.ROLLBACK_ERROR, error)

    def set_trace(self, carrier: dict[str, str]) -> None:
        """Queue the trace context later runs continue (see ``engine.tracing``)."""
        self.fields.trace = carrier
        self._set_field(Field.TRACE, carrier, lambda: wire.trace_bytes(carrier))

    def _set_error_field(self, field: Field, error: ErrorRecord | None) -> None:
        if error is None:
            self._queue_field(field, None)
        else:
            self._set_field(field, error, lambda: wire.error_bytes(error, field.name.lower()))

    def _set_field(self, field: Field, value: Any, encode: Callable[[], bytes]) -> None:
        key = keys.field_key(field)
        if self._flushed_fields.get(field, MISSING) == value:
            self.pending.pop(key, None)
            self._dirty_fields.discard(field)
        else:
            self._dirty_fields.add(field)
            self.pending[key] = encode()

    def _queue_field(self, field: Field, raw: bytes | None) -> None:
        self.pending[keys.field_key(field)] = raw
        self._dirty_fields.add(field)

    def discard_pending(self) -> None:
        """Drop every write not yet flushed (a run that must leave the store as it was)."""
        self.pending.clear()
        self._dirty_fields.clear()
        self.owed = False

    def consume(self, message: MessageRecord) -> None:
        self.messages.remove(message)
        self._consumed.add(message.key)
        self.pending[message.key] = None

    # Writing

    async def flush(self, last: Callable[[Writes], Awaitable[None]] | None = None) -> None:
        """Write every pending change in one atomic batch; nothing pending means no call.

        Flushes of one run are serialized (a later one waits for the one in flight, then
        sends whatever is pending by then) so writes reach the store in the order made.
        ``last`` sends the run's final writes instead of ``driver.batch``, called even when
        nothing is pending (it records the run's outcome too).
        """
        while self._in_flight:
            if self._flushed_event is None:
                self._flushed_event = anyio.Event()
            await self._flushed_event.wait()
        if self.broken:
            raise StorageError(
                type(self.driver).__name__,
                "batch",
                RuntimeError("an earlier call of this run failed"),
            )
        if not self.pending and last is None:
            return
        writes = list(self.pending.items())
        fields = self._dirty_fields
        self.pending, self._dirty_fields = {}, set()
        owed, self.owed = self.owed, False
        self._in_flight = True
        try:
            send = self.driver.batch if last is None else last
            try:
                await send(writes)
            except Exception as exc:
                raise self._failed("batch", exc)  # noqa: B904 - the cause is set in _failed
        except anyio.get_cancelled_exc_class():
            # Cancelled mid-batch (a race decided, a run ending): whether it landed is
            # unknown, and since a batch only sets or deletes keys, sending it again is
            # harmless. Queue it back under anything written since.
            for key, value in writes:
                self.pending.setdefault(key, value)
            self._dirty_fields |= fields
            self.owed = self.owed or owed
            raise
        finally:
            self._in_flight = False
            if self._flushed_event is not None:
                self._flushed_event.set()
                self._flushed_event = None
        if fields:
            current = dict(self._field_values())
            for field in fields:
                if field in current:
                    self._flushed_fields[field] = current[field]
                else:
                    self._flushed_fields.pop(field, None)
        if self.on_flushed is not None:
            await self.on_flushed()

    def _failed(self, operation: str, exc: Exception) -> StorageError:
        """A driver call failed: nothing more is written by this run (the store may hold
        part of what it meant), and the error names the store and the operation."""
        self.broken = True
        if isinstance(exc, StorageError):
            return exc
        error = StorageError(type(self.driver).__name__, operation, exc)
        error.__cause__ = exc  # as ``raise error from exc``
        return error


_MESSAGES = keys.prefix_key(Prefix.MESSAGES)
_TABLE_ORDER = sorted(Prefix, key=keys.prefix_key)
_PREFIXES = {keys.prefix_key(prefix) for prefix in Prefix}
_PREFIX_LEN = len(_HISTORY)
assert all(len(key) == _PREFIX_LEN for key in _PREFIXES)
_TABLES_END = keys.prefix_end(keys.prefix_key(_TABLE_ORDER[-1]))


def _split_tables(
    rows: Sequence[tuple[bytes, bytes]],
) -> dict[Prefix, Sequence[tuple[bytes, bytes]]] | None:
    """Each table's rows out of a sorted namespace; None if a row is in no known table."""
    starts = [bisect.bisect_left(rows, (keys.prefix_key(p),)) for p in _TABLE_ORDER]
    end = bisect.bisect_left(rows, (_TABLES_END,))
    if starts[0] != 0 or end != len(rows):
        return None
    bounds = [*starts, end]
    return {p: rows[bounds[i] : bounds[i + 1]] for i, p in enumerate(_TABLE_ORDER)}


class _Where:
    """Names the record being read, built only if reading fails (load is a hot path)."""

    __slots__ = ("family", "key", "names", "workflow_id")

    def __init__(self, workflow_id: str, names: NameRegistry, family: str = "record") -> None:
        self.workflow_id = workflow_id
        self.names = names
        self.family = family
        self.key = b""

    def at(self, family: str, key: bytes) -> None:
        self.family, self.key = family, key

    def __call__(self) -> str:
        return f"workflow {self.workflow_id!r} {self.family} {self._place()}"

    def _place(self) -> str:
        try:
            elements = keys.unpack(self.key)
        except ValueError:
            return f"at key {self.key!r}"
        location = elements[1:]
        if self.family in ("history entry", "metadata") and all(
            type(s) is int or (type(s) is tuple and len(s) == 1 and type(s[0]) is int)
            for s in location
        ):
            return f"at {self.names.render(location)} (key {elements})"  # type: ignore[arg-type]
        return f"at key {elements}"
