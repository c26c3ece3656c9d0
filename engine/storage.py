"""One workflow's state in memory: loaded once at run start, flushed as one batch per flush.

History is held as a tree of nodes mirroring locations, so a scope's entries can be read in
recorded order and a whole subtree (a race loser, trimmed loop iterations) can be dropped
with its keys enumerated into the same atomic batch. Every change is queued as a pending
write (key -> encoded bytes, or ``None`` to delete); ``flush`` sends all of them in ONE
``driver.batch`` call, and sends nothing when nothing changed, so a pure replay never writes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine import codec, keys
from engine.driver import EngineDriver
from engine.errors import CorruptedRecordError, StorageError
from engine.keys import Field, Location, Prefix
from engine.location import NameRegistry


@dataclass
class Node:
    """One location: its recorded entry and metadata (if any) and its child locations."""

    segment: Any = None
    entry: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    children: dict[Any, Node] = field(default_factory=dict)
    _ordered: list[Node] | None = None

    def child(self, segment: Any) -> Node:
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = Node(segment)
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
        self.next_seq = 0
        self.broken = False
        self.on_flushed: Callable[[], Awaitable[None]] | None = None
        self._lock = anyio.Lock()

    # Loading

    async def load(self) -> None:
        """Read everything with one ``list`` per key prefix."""
        for key, raw in await self._call("list", self.driver.list(keys.prefix_key(Prefix.NAMES))):
            self.names.load(keys.parse_name_key(key), self._decode(raw, key))
        for key, raw in await self._call("list", self.driver.list(keys.prefix_key(Prefix.FIELDS))):
            self.fields[keys.parse_field_key(key)] = self._decode(raw, key)
        self._flushed_fields = dict(self.fields)
        for key, raw in await self._call("list", self.driver.list(keys.prefix_key(Prefix.HISTORY))):
            entry = self._decode(raw, key)
            self.node(keys.parse_location_key(key), create=True).entry = entry
            self.next_seq = max(self.next_seq, entry.get("s", -1) + 1)
        for key, raw in await self._call(
            "list", self.driver.list(keys.prefix_key(Prefix.METADATA))
        ):
            self.node(keys.parse_location_key(key), create=True).meta = self._decode(raw, key)
        await self.refresh_messages()

    async def refresh_messages(self) -> bool:
        """Pick up messages written since the last look; True when any arrived."""
        known = {m.key for m in self.messages} | self._consumed
        listed = await self._call("list", self.driver.list(keys.prefix_key(Prefix.MESSAGES)))
        arrived = False
        for key, raw in listed:
            if key not in known:
                record = self._decode(raw, key)
                self.messages.append(Message(key, record["n"], record["d"], record["t"]))
                arrived = True
        return arrived

    def _decode(self, raw: bytes, key: bytes) -> Any:
        try:
            return codec.decode(raw, f"workflow {self.workflow_id!r} record {_describe_key(key)}")
        except CorruptedRecordError:
            self.broken = True  # never write over a store we could not read
            raise

    # History tree

    def node(self, location: Location, create: bool = False) -> Node:
        node = self.root
        for segment in location:
            child = node.children.get(segment)
            if child is None:
                if not create:
                    return Node(segment)
                child = node.children[segment] = Node(segment)
            node = child
        return node

    def record_entry(
        self, location: Location, scope: Node, node: Node, entry: dict[str, Any]
    ) -> None:
        """Queue ``entry`` at ``location``; ``scope`` is the parent whose order it joins."""
        is_new = node.entry is None
        node.entry = entry
        if is_new:
            scope.ordered().append(node)
        self.pending[keys.history_key(location)] = codec.encode(
            entry, f"workflow {self.workflow_id!r} entry {self.names.render(location)}"
        )

    def record_meta(self, location: Location, node: Node, meta: dict[str, Any]) -> None:
        node.meta = meta
        self.pending[keys.metadata_key(location)] = codec.encode(
            meta, f"workflow {self.workflow_id!r} metadata {self.names.render(location)}"
        )

    def take_seq(self) -> int:
        """Next completion number: rollback runs handlers in reverse of this order."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def delete_subtree(self, location: Location, parent: Node, segment: Any) -> None:
        """Forget a subtree and queue deletes for every key in it (same batch, so atomic)."""
        node = parent.children.pop(segment, None)
        if node is None:
            return
        if parent._ordered is not None and node.entry is not None:
            parent._ordered.remove(node)
        for sub_location, sub in _walk(location, node):
            if sub.entry is not None:
                self.pending[keys.history_key(sub_location)] = None
            if sub.meta is not None:
                self.pending[keys.metadata_key(sub_location)] = None

    def walk(self) -> Iterator[tuple[Location, Node]]:
        return _walk((), self.root)

    # Fields and messages

    def set_field(self, name: Field, value: Any) -> None:
        """Queue a field write, or drop a queued one when the value is back to the stored one."""
        self.fields[name] = value
        key = keys.field_key(name)
        if name in self._flushed_fields and self._flushed_fields[name] == value:
            self.pending.pop(key, None)
        else:
            self.pending[key] = codec.encode(
                value, f"workflow {self.workflow_id!r} {name.name.lower()}"
            )

    def delete_field(self, name: Field) -> None:
        self.fields.pop(name, None)
        self.pending[keys.field_key(name)] = None

    def consume(self, message: Message) -> None:
        self.messages.remove(message)
        self._consumed.add(message.key)
        self.pending[message.key] = None

    # Writing

    async def flush(self) -> None:
        """Write every pending change in one atomic batch; nothing pending means no call."""
        async with self._lock:
            if self.broken:
                raise StorageError(
                    type(self.driver).__name__,
                    "batch",
                    RuntimeError("an earlier call of this run failed"),
                )
            if not self.pending:
                return
            writes = list(self.pending.items())
            self.pending = {}
            self.broken = True  # until the batch is known to have landed
            # Shielded: a batch that started must finish, or whether it landed is unknown.
            # Cancellation (a race decided, a run ending) takes effect right after it.
            with anyio.CancelScope(shield=True):
                await self._call("batch", self.driver.batch(writes))
            self.broken = False
            for key, value in writes:
                if key.startswith(_FIELDS_PREFIX):
                    field_name = keys.parse_field_key(key)
                    if value is None:
                        self._flushed_fields.pop(field_name, None)
                    else:
                        self._flushed_fields[field_name] = self.fields.get(field_name)
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


_FIELDS_PREFIX = keys.prefix_key(Prefix.FIELDS)


def _walk(location: Location, node: Node) -> Iterator[tuple[Location, Node]]:
    yield location, node
    for segment, child in node.children.items():
        yield from _walk((*location, segment), child)


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
