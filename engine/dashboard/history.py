"""A workflow's history as the page shows it: a tree of scopes, and a timeline in order.

``Client.describe`` lists entries depth first with paths like ``pack/label/print`` (a join
``pack``, its branch ``label``, a step ``print``) or ``poll/~3/fetch`` (iteration 3 of a
loop). The tree nests them by path; a scope that has no entry of its own (a branch, an
iteration) still gets a node so what it holds nests under it.

The history records no clock times, so the timeline's axis is the order of operations, not
seconds: each operation takes one column after the one before it in its scope, and the
branches of a join or race start together in lanes of their own, so what ran side by side
is drawn side by side. Attempts and retries come from each step's record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.describe import HistoryEntry

MAX_ENTRIES = 1_000  # entries drawn on one page; a longer history says how many it left out

_CONCURRENT = ("join", "race")


@dataclass
class Node:
    """One segment of a path: an operation (``entry``) or a scope without an entry."""

    segment: str
    path: str
    entry: HistoryEntry | None = None
    children: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Lane:
    """A row of the timeline: the workflow body, one branch, or one loop's iterations."""

    label: str
    depth: int


@dataclass(frozen=True)
class Bar:
    """One operation on the timeline: ``start`` and ``span`` count columns from 0."""

    lane: int
    start: int
    span: int
    entry: HistoryEntry
    name: str

    @property
    def retries(self) -> int:
        return max(self.entry.attempts - 1, 0)

    @property
    def pips(self) -> list[str]:
        """One mark per attempt of a step, oldest first: ``failed``, ``ok`` or ``running``."""
        entry = self.entry
        if entry.kind != "step" or entry.attempts == 0:
            return []
        failed = ["failed"] * (entry.attempts - 1)
        if entry.status in ("completed", "recovered"):
            return [*failed, "ok"]
        if entry.status in ("retrying", "running"):
            return [*failed, "failed", "running"]
        return [*failed, "failed"]


@dataclass
class Timeline:
    lanes: list[Lane] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    columns: int = 0


def tree(history: list[HistoryEntry]) -> Node:
    """The entries nested by path under a root node (segment ``""``)."""
    root = Node("", "")
    nodes: dict[str, Node] = {"": root}
    for entry in history[:MAX_ENTRIES]:
        segments = entry.path.split("/")
        parent = root
        for depth in range(1, len(segments) + 1):
            path = "/".join(segments[:depth])
            node = nodes.get(path)
            if node is None:
                node = nodes[path] = Node(segments[depth - 1], path)
                parent.children.append(node)
            parent = node
        parent.entry = entry
    return root


def timeline(root: Node) -> Timeline:
    """The operations of ``root`` laid out in lanes and columns (see the module docstring)."""
    drawn = Timeline()
    drawn.lanes.append(Lane("workflow", 0))
    drawn.columns = max(_place(drawn, root.children, 0, 0, 0), 1)
    return drawn


def _place(drawn: Timeline, nodes: list[Node], lane: int, column: int, depth: int) -> int:
    """Lay ``nodes`` (one scope, in order) out on ``lane`` from ``column``; returns the column
    after the last one they take."""
    for node in nodes:
        entry = node.entry
        if entry is None:  # a scope without an entry of its own: its operations in order
            column = _place(drawn, node.children, lane, column, depth)
            continue
        start = column
        if entry.kind in _CONCURRENT and node.children:
            ends = [start + 1]
            for branch in node.children:
                ends.append(
                    _place(drawn, [branch], _lane(drawn, branch.path, depth + 1), start, depth + 1)
                )
            column = max(ends)
        elif entry.kind == "loop" and node.children:
            iterations = _lane(drawn, f"{node.path} iterations", depth + 1)
            column = max(_place(drawn, node.children, iterations, start, depth + 1), start + 1)
        else:
            column = start + 1
        drawn.bars.append(Bar(lane, start, column - start, entry, node.segment))
    return column


def _lane(drawn: Timeline, label: str, depth: int) -> int:
    drawn.lanes.append(Lane(label, depth))
    return len(drawn.lanes) - 1
