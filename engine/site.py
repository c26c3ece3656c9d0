"""Where one operation sits, and the little of its scope an operation needs.

Below both the context and the operations: the context builds a ``Site`` in its guards and
hands it to the operation, which records through it and opens nested scopes (branches, loop
iterations) through the ``Scope`` interface, never importing the context itself.
"""

from __future__ import annotations

from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from engine.keys import Location
from engine.records import Entry
from engine.run import Run
from engine.storage import Node, Storage

E = TypeVar("E", bound=Entry)


class Scope(Protocol):
    """One scope of a workflow (the body, a branch, a loop iteration), as operations see it."""

    run: Run
    scope: Location
    scope_node: Node
    in_branch: bool

    def child(self, scope: Location, scope_node: Node, branch: bool = False) -> Self: ...

    def end_scope(self) -> None: ...

    def release(self) -> None: ...


S = TypeVar("S", bound=Scope)


class Site(Generic[S]):
    """One operation: its scope, name, kind, location, node and position in the scope.

    Used as ``with site:`` around the operation's body, which frees the scope for its next
    operation however the body ends.
    """

    __slots__ = ("ctx", "kind", "location", "name", "node", "pos", "run")

    def __init__(self, ctx: S, name: str, kind: str, location: Location, node: Node, pos: int):
        self.ctx = ctx
        self.run = ctx.run
        self.name = name
        self.kind = kind
        self.location = location
        self.node = node
        self.pos = pos

    def __enter__(self) -> Site[S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ctx.release()

    @property
    def storage(self) -> Storage:
        return self.run.storage

    @property
    def path(self) -> str:
        return self.run.path(self.location)

    def describe(self) -> str:
        return self.run.describe(self.location)

    def record(self, entry: E) -> E:
        """Queue ``entry`` here; returns it holding its values as replay will."""
        return self.run.storage.record(self.location, self.ctx.scope_node, self.node, entry)
