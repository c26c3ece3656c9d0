"""History held in memory as a tree of locations, mirroring the key layout.

A location's key is a byte prefix of its children's keys, so a scope (a branch, a loop
iteration) is a subtree: its entries can be read in recorded order, and the whole of it
dropped with its keys enumerated into one atomic batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine import keys
from engine.keys import Location
from engine.records import Entry, Metadata


class Node:
    """One location: its recorded entry and metadata (if any) and its child locations."""

    __slots__ = ("_ordered", "children", "entry", "meta", "segment", "suffix")

    def __init__(self, segment: Any = None, suffix: bytes = b"") -> None:
        self.segment = segment
        self.suffix = suffix  # the encoded location: key = table prefix + suffix
        self.entry: Entry | None = None
        self.meta: Metadata | None = None
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
                key=_position,
            )
        return self._ordered

    def subtree(self) -> Iterator[Node]:
        """This node and every node below it."""
        yield self
        for child in self.children.values():
            yield from child.subtree()


def _position(node: Node) -> int:
    assert node.entry is not None
    return node.entry.pos


def walk(location: Location, node: Node) -> Iterator[tuple[Location, Node]]:
    """Every node below ``node`` (itself included) with its location."""
    yield location, node
    for segment, child in node.children.items():
        yield from walk((*location, segment), child)
