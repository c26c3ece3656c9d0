"""``ctx.loop``: durable iterations with committed state and bounded history.

Iteration ``i`` runs in the scope ``<loop>/~i``. Every ``commit_interval`` iterations the loop
entry records the next iteration number and the state, and every ``history_every``
iterations (a multiple of ``commit_interval``, so trimming only happens at a commit) the
history of iterations older than the last ``history_keep`` is deleted in the same batch.
After a crash the loop restarts from the last commit, and the iterations since then replay
their recorded steps, which are never trimmed because trimming only removes iterations
before a commit. The keys in the store stay bounded however many iterations run.

An iteration that registered rollback handlers also keeps the state it started from, so a
later run can replay it (nothing executes) and register its handlers again even though the
loop resumes past it or has finished.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from engine import codec
from engine.run import Run
from engine.storage import Node

if TYPE_CHECKING:
    from engine.context import Site, WorkflowContext


class LoopResult(NamedTuple):
    done: bool
    value: Any


class Loop:
    """What a loop body returns: ``Loop.continue_(state)`` or ``Loop.break_(value)``."""

    @staticmethod
    def continue_(state: Any = None) -> LoopResult:
        return LoopResult(False, state)

    @staticmethod
    def break_(value: Any = None) -> LoopResult:
        return LoopResult(True, value)


@dataclass(frozen=True)
class LoopOptions:
    commit_interval: int
    history_every: int
    history_keep: int

    @classmethod
    def checked(
        cls,
        run: Run,
        name: str,
        commit_interval: int,
        history_every: int | None,
        history_keep: int | None,
    ) -> LoopOptions:
        where = f"workflow {run.workflow_id!r} loop {name!r}"
        every = commit_interval if history_every is None else history_every
        keep = commit_interval if history_keep is None else history_keep
        for label, value, low in (
            ("commit_interval", commit_interval, 1),
            ("history_every", every, 1),
            ("history_keep", keep, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{where}: {label} must be an int >= {low}, got {value!r}")
        if every % commit_interval != 0:
            raise ValueError(
                f"{where}: history_every ({every}) must be a multiple of commit_interval "
                f"({commit_interval}); trimming between commits could delete the history of "
                "iterations a crash would replay"
            )
        return cls(commit_interval, every, keep)


async def run_loop(
    site: Site,
    body: Callable[[WorkflowContext, Any], Awaitable[LoopResult]],
    initial_state: Any,
    options: LoopOptions,
) -> Any:
    run = site.run
    what = run.describe(site.location)
    entry = site.node.entry
    if entry is not None:
        await _replay_compensable(site, body, before=entry["i"])
    if entry is not None and entry.get("d"):
        return codec.decode(entry["o"], f"{what} result")
    if entry is not None:
        iteration = entry["i"]
        encoded_state = entry["st"]
    else:
        iteration = 0
        encoded_state = codec.encode(initial_state, f"{what} state")
        site.record({"i": 0, "st": encoded_state, "d": False})
    state = codec.decode(encoded_state, f"{what} state")
    while True:
        marker = (iteration,)
        iteration_node = site.node.child(marker)
        iteration_ctx = site.ctx.child((*site.location, marker), iteration_node)
        registered = len(run.rollback_handlers)
        result = await body(iteration_ctx, state)
        if not isinstance(result, LoopResult):
            raise TypeError(
                f"{what} iteration {iteration}: the body must return Loop.continue_(state) or "
                f"Loop.break_(value), got {result!r}"
            )
        iteration_ctx.end_scope()
        if len(run.rollback_handlers) > registered and iteration_node.entry is None:
            _record_input_state(site, marker, iteration_node, encoded_state)
        iteration += 1
        encoded = codec.encode(result.value, f"{what} {'result' if result.done else 'state'}")
        if result.done:
            site.record({"i": iteration, "d": True, "o": encoded})
            _trim(site, iteration - options.history_keep)
            await run.storage.flush()
            return codec.decode(encoded, f"{what} result")
        encoded_state = encoded
        state = codec.decode(encoded, f"{what} state")
        if iteration % options.commit_interval == 0:
            site.record({"i": iteration, "st": encoded, "d": False})
            if iteration % options.history_every == 0:
                _trim(site, iteration - options.history_keep)
            await run.storage.flush()


def _record_input_state(site: Site, marker: tuple[int], node: Node, encoded_state: bytes) -> None:
    """Keep the state an iteration started from when it registered rollback handlers.

    A later run resumes the loop at its last commit (or returns a finished loop's value)
    without running earlier iterations, so their handlers, which are closures in the user's
    code, would never be registered again. With the input state kept, those retained
    iterations are replayed (no step executes) and their handlers registered; the entry is
    trimmed with the rest of the iteration's history.
    """
    entry = {"k": "iteration", "p": marker[0], "st": encoded_state}
    site.run.storage.record_entry((*site.location, marker), site.node, node, entry)


async def _replay_compensable(
    site: Site, body: Callable[[WorkflowContext, Any], Awaitable[LoopResult]], before: int
) -> None:
    """Replay the retained iterations below ``before`` that registered rollback handlers."""
    what = site.run.describe(site.location)
    kept = sorted(
        (segment, node)
        for segment, node in site.node.children.items()
        if isinstance(segment, tuple)
        and segment[0] < before
        and node.entry is not None
        and "st" in node.entry
    )
    for segment, node in kept:
        iteration_ctx = site.ctx.child((*site.location, segment), node)
        await body(iteration_ctx, codec.decode(node.entry["st"], f"{what} state"))  # type: ignore[index]
        iteration_ctx.end_scope()


def _trim(site: Site, before: int) -> None:
    """Delete the history of iterations numbered below ``before``."""
    storage = site.run.storage
    for segment in list(site.node.children):
        if isinstance(segment, tuple) and segment[0] < before:
            storage.delete_subtree(site.node, segment)
