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
from typing import Any, NamedTuple

from engine.records import IterationEntry, LoopEntry
from engine.run import Run
from engine.site import S, Site
from engine.storage import Node


class LoopResult(NamedTuple):
    """What a loop body returns; build it with ``Loop.continue_`` or ``Loop.break_``."""

    done: bool
    """True to end the loop."""
    value: Any
    """The next iteration's state, or (``done``) the loop's result."""


class Loop:
    """What a loop body returns: ``Loop.continue_(state)`` or ``Loop.break_(value)``."""

    @staticmethod
    def continue_(state: Any = None) -> LoopResult:
        """Go on with another iteration, passing it ``state`` (any storable value)."""
        return LoopResult(False, state)

    @staticmethod
    def break_(value: Any = None) -> LoopResult:
        """End the loop: ``await ctx.loop(...)`` returns ``value``."""
        return LoopResult(True, value)


@dataclass(frozen=True)
class LoopOptions:
    commit_interval: int
    history_every: int
    history_keep: int


def validate(
    run: Run,
    name: str,
    commit_interval: int,
    history_every: int | None,
    history_keep: int | None,
) -> LoopOptions:
    """The options of ``ctx.loop``, checked; raises naming the workflow and the loop."""
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
    return LoopOptions(commit_interval, every, keep)


Body = Callable[[S, Any], Awaitable[LoopResult]]


async def run_loop(site: Site[S], body: Body[S], initial_state: Any, options: LoopOptions) -> Any:
    with site:
        if site.storage.owed:
            await site.storage.flush()  # an earlier step's output lands first
        return await _loop(site, body, initial_state, options)


async def _loop(site: Site[S], body: Body[S], initial_state: Any, options: LoopOptions) -> Any:
    run = site.run
    storage = run.storage
    entry = site.node.entry
    if isinstance(entry, LoopEntry):
        await _replay_compensable(site, body, before=entry.iteration)
        if entry.done:
            return entry.result
        iteration, state = entry.iteration, entry.state
    else:
        iteration = 0
        state = site.record(LoopEntry(site.pos, 0, state=initial_state)).state
    while True:
        marker = (iteration,)
        iteration_node = site.node.child(marker)
        iteration_ctx = site.ctx.child((*site.location, marker), iteration_node)
        registered = len(run.rollback_handlers)
        result = await body(iteration_ctx, state)
        if not isinstance(result, LoopResult):
            raise TypeError(
                f"{site.describe()} iteration {iteration}: the body must return "
                f"Loop.continue_(state) or Loop.break_(value), got {result!r}"
            )
        iteration_ctx.end_scope()
        if len(run.rollback_handlers) > registered and iteration_node.entry is None:
            _record_input_state(site, marker, iteration_node, state)
        iteration += 1
        if result.done:
            done = site.record(LoopEntry(site.pos, iteration, True, result=result.value))
            _trim(site, iteration - options.history_keep)
            await storage.flush()
            return done.result
        if iteration % options.commit_interval == 0:
            state = site.record(LoopEntry(site.pos, iteration, state=result.value)).state
            if iteration % options.history_every == 0:
                _trim(site, iteration - options.history_keep)
            await storage.flush()
        else:
            # Between commits the state is not written, but it is passed on exactly as a
            # replay from the last commit would pass it.
            state = storage.replayed(result.value, lambda: f"{site.describe()} state")


def _record_input_state(site: Site[S], marker: tuple[int], node: Node, state: Any) -> None:
    """Keep the state an iteration started from when it registered rollback handlers.

    A later run resumes the loop at its last commit (or returns a finished loop's value)
    without running earlier iterations, so their handlers, which are closures in the user's
    code, would never be registered again. With the input state kept, those retained
    iterations are replayed (no step executes) and their handlers registered; the entry is
    trimmed with the rest of the iteration's history.
    """
    location = (*site.location, marker)
    site.storage.record(location, site.node, node, IterationEntry(marker[0], state))


async def _replay_compensable(site: Site[S], body: Body[S], before: int) -> None:
    """Replay the retained iterations below ``before`` that registered rollback handlers."""
    kept = sorted(
        (segment, node)
        for segment, node in site.node.children.items()
        if isinstance(segment, tuple)
        and segment[0] < before
        and isinstance(node.entry, IterationEntry)
    )
    for segment, node in kept:
        assert isinstance(node.entry, IterationEntry)
        iteration_ctx = site.ctx.child((*site.location, segment), node)
        await body(iteration_ctx, node.entry.state)
        iteration_ctx.end_scope()


def _trim(site: Site[S], before: int) -> None:
    """Delete the history of iterations numbered below ``before``."""
    storage = site.storage
    for segment in list(site.node.children):
        if isinstance(segment, tuple) and segment[0] < before:
            storage.delete_subtree(site.node, segment)
