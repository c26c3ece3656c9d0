"""One workflow's state in memory: loaded once at run start, flushed as one batch per flush.

History is held as a tree of nodes mirroring locations, so a scope's entries can be read in
recorded order and a whole subtree (a race loser, trimmed loop iterations) can be dropped
with its keys enumerated into the same atomic batch. Every change is queued as a pending
write (key -> encoded bytes, or ``None`` to delete); ``flush`` sends all of them in ONE
``driver.batch`` call, and sends nothing when nothing changed, so a pure replay never writes.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from engine import codec, keys
from engine.driver import EngineDriver
from engine.errors import CorruptedRecordError, StorageError
from engine.keys import Field, Location, Prefix
from engine.location import NameRegistry

Writes = list[tuple[bytes, bytes | None]]


class Node:
    """One location: its recorded entry and metadata (if any) and its child locations."""

    __slots__ = ("_ordered", "children", "entry", "meta", "segment", "suffix")

    def __init__(self, segment: Any = None, suffix: bytes = b"") -> None:
        self.segment = segment
        self.suffix = suffix  # the encoded location: key = table prefix + suffix
        self.entry: dict[str, Any] | None = None
        self.meta: dict[str, Any] | None = None
        self.children: dict[Any, Node] = {}
        self._ordered: list[Node] | None = None

    def child(self, segment: Any) -> Node:
        node = self.children.get(segment)
        if node is None:
            node = Node(segment, suffix=self.suffix + keys.encode_segment(segment))
            self.children[segment] = node
        return node

    def ordered(self) -> list[Node]:
        """Child entries of this scope in recorded order (by their stored position)."""
        if self._ordered is None:
            self._ordered = sorted(
                (c for c in self.children.values() if c.entry is not None),
                key=lambda c: c.entry["p"],  # type: ignore[index]
            )
        return self._ordered


@dataclass
class Message:
    key: bytes
    name: str
    data: Any
    sent_at: float


class Storage:
    """The loaded state of one workflow and the writes not yet flushed."""

    def __init__(self, driver: EngineDriver, workflow_id: str) -> None:
        self.driver = driver
        self.workflow_id = workflow_id
        self.names = NameRegistry()
        self.root = Node()
        self.fields: dict[Field, Any] = {}
        self._flushed_fields: dict[Field, Any] = {}
        self.messages: list[Message] = []
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

    # Loading

    async def load(self, snapshot: Sequence[tuple[bytes, bytes]] | None = None) -> None:
        """Read the whole namespace with one ``list`` (or take ``snapshot``: the same rows,
        sorted by key like any ``list``, read by whoever claimed the workflow)."""
        try:
            rows = await self._list(b"") if snapshot is None else snapshot
            self._load(rows)
        except CorruptedRecordError:
            self.broken = True  # never write over a store that could not be read
            raise

    def _load(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        # One list of everything (sorted by key, so each table is one run of rows), split by
        # table here: on a networked store that is one round trip and one statement. No
        # snapshot across runs is needed: while a run is going on the engine is the only
        # writer of everything but messages, which are read again before the run yields.
        table = _split_tables(rows)
        record = _RecordNote(self.workflow_id)
        if table is None:
            record.key = next(k for k, _ in rows if k[:_PREFIX_LEN] not in _TABLE_PREFIXES)
            raise CorruptedRecordError(f"{record()}: not a key this engine writes")
        decode = codec.decode
        for key, raw in table[Prefix.NAMES]:
            record.key = key
            self.names.load(keys.parse_name_key(key), decode(raw, record))
        for key, raw in table[Prefix.FIELDS]:
            record.key = key
            self.fields[keys.parse_field_key(key)] = decode(raw, record)
        self._flushed_fields = dict(self.fields)
        self.seen_before = bool(self.fields)
        next_seq = 0
        for key, raw in table[Prefix.HISTORY]:
            record.key = key
            entry = decode(raw, record)
            self._node_for_key(key).entry = entry
            seq = entry.get("s")
            if seq is not None and seq >= next_seq:
                next_seq = seq + 1
        self.next_seq = next_seq
        for key, raw in table[Prefix.METADATA]:
            record.key = key
            self._node_for_key(key).meta = decode(raw, record)
        self._add_messages(table[Prefix.MESSAGES])

    async def _list(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        listed: list[tuple[bytes, bytes]] = await self._call("list", self.driver.list(prefix))
        return listed

    async def refresh_messages(self) -> bool:
        """Pick up messages written since the last look; True when any arrived."""
        return self._add_messages(await self._list(keys.prefix_key(Prefix.MESSAGES)))

    def _add_messages(self, listed: Sequence[tuple[bytes, bytes]]) -> bool:
        self.saw_messages = self.saw_messages or bool(listed)
        # Called only after the read: two refreshes may run at once (a local send and a
        # wake-up), and a message must not be added twice.
        known = {m.key for m in self.messages} | self._consumed
        record = _RecordNote(self.workflow_id)
        arrived = False
        for key, raw in listed:
            if key not in known:
                known.add(key)
                record.key = key
                message = codec.decode(raw, record)
                self.messages.append(Message(key, message["n"], message["d"], message["t"]))
                arrived = True
        return arrived

    # History tree

    def node(self, location: Location, create: bool = False) -> Node:
        node = self.root
        for segment in location:
            child = node.children.get(segment)
            if child is None:
                if not create:
                    return Node(segment)
                child = node.child(segment)
            node = child
        return node

    def _node_for_key(self, key: bytes) -> Node:
        """The node of a loaded history or metadata key (its suffix is taken from the key)."""
        location = keys.parse_location_key(key)
        last = location[-1]
        parent = self.node(location[:-1], create=True) if len(location) > 1 else self.root
        node = parent.children.get(last)
        if node is None:
            node = parent.children[last] = Node(last, suffix=key[len(keys.HISTORY_PREFIX) :])
        return node

    def record_entry(
        self, location: Location, scope: Node, node: Node, entry: dict[str, Any]
    ) -> None:
        """Queue ``entry`` at ``location``; ``scope`` is the parent whose order it joins."""
        encoded = codec.encode(
            entry, lambda: f"workflow {self.workflow_id!r} entry {self.names.render(location)}"
        )
        self.record_encoded_entry(location, scope, node, entry, encoded)

    def record_encoded_entry(
        self, location: Location, scope: Node, node: Node, entry: dict[str, Any], encoded: bytes
    ) -> None:
        """Like ``record_entry`` for an entry its operation already encoded."""
        if node.entry is None:
            scope.ordered().append(node)
        node.entry = entry
        self.pending[keys.HISTORY_PREFIX + node.suffix] = encoded

    def record_meta(
        self, location: Location, node: Node, meta: dict[str, Any], encoded: bytes | None = None
    ) -> None:
        """Queue ``meta`` at ``location`` (``encoded``: its record, when already made)."""
        node.meta = meta
        if encoded is None:
            encoded = codec.encode(
                meta,
                lambda: f"workflow {self.workflow_id!r} metadata {self.names.render(location)}",
            )
        self.pending[keys.METADATA_PREFIX + node.suffix] = encoded

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
        for _, sub in _walk((), node):
            if sub.entry is not None:
                self.pending[keys.HISTORY_PREFIX + sub.suffix] = None
            if sub.meta is not None:
                self.pending[keys.METADATA_PREFIX + sub.suffix] = None

    def walk(self) -> Iterator[tuple[Location, Node]]:
        return _walk((), self.root)

    # Fields and messages

    def set_field(self, name: Field, value: Any) -> None:
        """Queue a field write, or drop a queued one when the value is back to the stored one."""
        self.fields[name] = value
        key = keys.field_key(name)
        if name in self._flushed_fields and self._flushed_fields[name] == value:
            self.pending.pop(key, None)
            self._dirty_fields.discard(name)
        else:
            self._dirty_fields.add(name)
            self.pending[key] = codec.encode(
                value, lambda: f"workflow {self.workflow_id!r} {name.name.lower()}"
            )

    def set_value_field(self, name: Field, value: Any) -> Any:
        """Queue a user value (input, output) and return it as replay will see it.

        Encoded once: an unserializable value raises here, before anything is queued.
        """
        encoded = codec.encode(value, lambda: f"workflow {self.workflow_id!r} {name.name.lower()}")
        stored = codec.decode(encoded, name.name.lower())
        self.fields[name] = stored
        self.pending[keys.field_key(name)] = encoded
        self._dirty_fields.add(name)
        return stored

    def delete_field(self, name: Field) -> None:
        self.fields.pop(name, None)
        self.pending[keys.field_key(name)] = None
        self._dirty_fields.add(name)

    def consume(self, message: Message) -> None:
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
            await self._call("batch", send(writes))
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
        for name in fields:
            if name in self.fields:
                self._flushed_fields[name] = self.fields[name]
            else:
                self._flushed_fields.pop(name, None)
        if self.on_flushed is not None:
            await self.on_flushed()

    async def _call(self, operation: str, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except StorageError:
            self.broken = True
            raise
        except Exception as exc:
            self.broken = True
            raise StorageError(type(self.driver).__name__, operation, exc) from exc


def _walk(location: Location, node: Node) -> Iterator[tuple[Location, Node]]:
    yield location, node
    for segment, child in node.children.items():
        yield from _walk((*location, segment), child)


_TABLE_ORDER = sorted(Prefix, key=keys.prefix_key)
_TABLE_PREFIXES = {keys.prefix_key(prefix) for prefix in Prefix}
_PREFIX_LEN = len(keys.HISTORY_PREFIX)
assert all(len(key) == _PREFIX_LEN for key in _TABLE_PREFIXES)
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


class _RecordNote:
    """Names the record being decoded, built only if decoding fails (load is a hot path)."""

    __slots__ = ("key", "workflow_id")

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.key = b""

    def __call__(self) -> str:
        return f"workflow {self.workflow_id!r} record {_describe_key(self.key)}"


def _describe_key(key: bytes) -> str:
    try:
        return repr(keys.unpack(key))
    except ValueError:
        return repr(key)


def new_message_key() -> bytes:
    """Fresh key for a message: send time orders messages FIFO, the nonce keeps senders apart."""
    return keys.message_key(time.time_ns(), random.getrandbits(62))


def encode_message(name: str, data: Any, workflow_id: str) -> bytes:
    return codec.encode(
        {"n": name, "d": data, "t": time.time()}, f"workflow {workflow_id!r} message {name!r}"
    )
