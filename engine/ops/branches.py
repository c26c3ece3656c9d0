"""``ctx.join`` and ``ctx.race``: branches in one anyio task group, each in its own scope.

A branch's location is ``<join or race name>/<branch name>/...`` and it validates its own
history positionally. Branch tasks count as active in the scheduler while the parent is
blocked, so a waiting branch lets its siblings run on and the run yields only when every
branch is waiting (with the earliest deadline as the alarm).

join: every branch settles; per-branch status is recorded (a replayed branch that already
settled keeps its status, so a pure replay writes nothing); failures raise ``JoinError``
once nothing is left waiting. race: the first branch to complete wins; the decision and the
winner's value are flushed at once and the losers are cancelled through anyio cancellation,
their partial history deleted in the same batch. A branch whose code diverged from history
raises ``HistoryDivergedError`` itself, for join and race alike: it is not a branch failure
another branch could win over, and the runner never compensates a divergence. Replay of a
decided race returns the recorded winner without running branches, except that a winner
holding steps with rollback handlers is replayed (no step executes) so its handlers are
registered again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Generic, NamedTuple

import anyio

from engine.errors import (
    EvictedError,
    HistoryDivergedError,
    JoinError,
    RaceError,
    SuspendSignal,
    single,
)
from engine.records import JoinEntry, Metadata, RaceEntry, StepEntry
from engine.run import Run
from engine.site import S, Site
from engine.storage import Node


class RaceResult(NamedTuple):
    """What ``ctx.race`` returns: the winning branch's name and its value."""

    winner: str
    """The name of the branch that completed first."""
    value: Any
    """What that branch returned (as stored)."""


def validate(
    run: Run, name: str, branches: Mapping[str, Callable[[Any], Awaitable[Any]]], kind: str
) -> None:
    """The branches of a join or race: a non-empty dict of name -> async fn(ctx)."""
    where = f"workflow {run.workflow_id!r} {kind} {name!r}"
    if not isinstance(branches, Mapping) or not branches:
        raise ValueError(f"{where}: branches must be a non-empty dict of name -> async fn(ctx)")
    for branch, fn in branches.items():
        if not isinstance(branch, str) or not branch:
            raise ValueError(f"{where}: branch names must be non-empty strings, got {branch!r}")
        if not callable(fn):
            raise TypeError(f"{where}: branch {branch!r} must be an async callable fn(ctx)")


def _check_recorded(site: Site[S], entry: JoinEntry | RaceEntry, names: list[str]) -> None:
    if entry.branches != names:
        raise HistoryDivergedError(
            f"history diverged in {site.describe()}: history holds a "
            f"{site.kind} of branches {entry.branches}, the code asked for {names}"
        )


class _Branch(Generic[S]):
    def __init__(self, site: Site[S], name: str) -> None:
        self.index = site.storage.intern(name)
        self.location = (*site.location, self.index)
        self.node: Node = site.node.child(self.index)
        self.ctx: S = site.ctx.child(self.location, self.node, branch=True)


class _Outcomes:
    """How the branches of one join or race ended."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}
        self.suspended = False
        self.stopped = False
        self.diverged: HistoryDivergedError | None = None

    def raise_signals(self) -> None:
        if self.diverged is not None:
            # The code no longer matches history: that is not a branch failing (a race must
            # not let another branch win over it), and the runner must see the divergence
            # itself, which it never compensates.
            raise self.diverged
        if self.stopped:
            raise EvictedError("the workflow was evicted or cancelled")
        if self.suspended:
            raise SuspendSignal()


async def _run_branch(
    branch: _Branch[S], fn: Callable[[S], Awaitable[Any]], outcomes: _Outcomes, name: str
) -> bool:
    """Run one branch to its end; True when it completed."""
    try:
        value = await fn(branch.ctx)
        branch.ctx.end_scope()
    except SuspendSignal:
        outcomes.suspended = True
    except EvictedError:
        outcomes.stopped = True
    except HistoryDivergedError as exc:
        outcomes.diverged = outcomes.diverged or exc
        outcomes.errors[name] = exc
    except Exception as exc:
        outcomes.errors[name] = exc
    else:
        outcomes.values[name] = value
        return True
    return False


async def run_join(site: Site[S], fns: dict[str, Callable[[S], Awaitable[Any]]]) -> dict[str, Any]:
    with site:
        if site.storage.owed:
            await site.storage.flush()  # an earlier step's output lands first
        return await _join(site, fns)


async def _join(site: Site[S], fns: dict[str, Callable[[S], Awaitable[Any]]]) -> dict[str, Any]:
    run = site.run
    names = list(fns)
    entry = site.node.entry
    if isinstance(entry, JoinEntry):
        _check_recorded(site, entry, names)
    else:
        site.record(JoinEntry(site.pos, names))
    outcomes = _Outcomes()

    def set_status(branch: _Branch[S], status: str) -> None:
        # Each branch's status is its own small metadata record (no record means pending),
        # so a status change costs the same however many branches the join has.
        if branch.node.meta is None or branch.node.meta.status != status:
            run.storage.record_meta(branch.location, branch.node, Metadata(status))

    async def branch_task(name: str) -> None:
        try:
            branch = _Branch(site, name)
            if branch.node.meta is None:
                # Only a first start changes the status: replaying a settled branch must not
                # rewrite it (a pure replay writes nothing).
                set_status(branch, "running")
            completed = await _run_branch(branch, fns[name], outcomes, name)
            if completed:
                set_status(branch, "completed")
            elif name in outcomes.errors:
                set_status(branch, "failed")
        finally:
            run.scheduler.leave()

    await _in_task_group(run, names, branch_task)
    outcomes.raise_signals()
    if outcomes.errors:
        raise JoinError(
            f"{site.describe()}: {len(outcomes.errors)} of {len(names)} branches failed: "
            + "; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in outcomes.errors.items()),
            outcomes.errors,
        )
    return {name: outcomes.values[name] for name in names}


async def run_race(site: Site[S], fns: dict[str, Callable[[S], Awaitable[Any]]]) -> RaceResult:
    with site:
        if site.storage.owed:
            await site.storage.flush()  # an earlier step's output lands first
        return await _race(site, fns)


async def _race(site: Site[S], fns: dict[str, Callable[[S], Awaitable[Any]]]) -> RaceResult:
    run = site.run
    names = list(fns)
    entry = site.node.entry
    if isinstance(entry, RaceEntry):
        _check_recorded(site, entry, names)
        if entry.winner is not None:
            return await _replay_winner(site, entry, fns)
    else:
        site.record(RaceEntry(site.pos, names))
    outcomes = _Outcomes()
    winner: list[str] = []

    activity = _Activity(run)

    async def branch_task(name: str, cancel: anyio.CancelScope) -> None:
        try:
            if await _run_branch(_Branch(site, name), fns[name], outcomes, name) and not winner:
                winner.append(name)
                # The parent resumes now: it counts as active again before the winner's task
                # leaves, so the losers still parked while their cancellation is delivered can
                # never look like "every task waits" and suspend the run on a loser's deadline.
                activity.resume_parent()
                cancel.cancel()
            elif outcomes.diverged is not None:
                cancel.cancel()
        finally:
            run.scheduler.leave()

    await _in_task_group(run, names, branch_task, pass_scope=True, activity=activity)
    if not winner:
        outcomes.raise_signals()
        raise RaceError(
            f"{site.describe()}: every branch failed: "
            + "; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in outcomes.errors.items()),
            outcomes.errors,
        )
    name = winner[0]
    decided = site.record(RaceEntry(site.pos, names, name, outcomes.values[name]))
    for loser in names:
        if loser != name:  # deleted in the batch that records the decision
            run.storage.delete_subtree(site.node, run.storage.intern(loser))
    await run.storage.flush()
    return RaceResult(name, decided.value)


async def _replay_winner(
    site: Site[S], entry: RaceEntry, fns: dict[str, Callable[[S], Awaitable[Any]]]
) -> RaceResult:
    name = entry.winner
    assert name is not None
    branch = _Branch(site, name)
    if any(
        isinstance(node.entry, StepEntry) and node.entry.seq is not None
        for node in branch.node.subtree()
    ):
        await fns[name](branch.ctx)  # every step replays; only rollback handlers are re-registered
    return RaceResult(name, entry.value)


class _Activity:
    """Whether the parent of a join or race counts as active in the scheduler."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.parent_active = True

    def park_parent(self) -> None:
        if self.parent_active:
            self.parent_active = False
            self._run.scheduler.leave()

    def resume_parent(self) -> None:
        if not self.parent_active:
            self.parent_active = True
            self._run.scheduler.enter()


async def _in_task_group(
    run: Run,
    names: list[str],
    task: Callable[..., Coroutine[Any, Any, None]],
    pass_scope: bool = False,
    activity: _Activity | None = None,
) -> None:
    """Run one task per branch while the parent counts as blocked, not active."""
    activity = activity or _Activity(run)
    run.scheduler.enter(len(names))
    activity.park_parent()
    try:
        async with anyio.create_task_group() as tg:
            for name in names:
                # An explicit task name also spares anyio from building one per branch.
                if pass_scope:
                    tg.start_soon(task, name, tg.cancel_scope, name=f"branch {name}")
                else:
                    tg.start_soon(task, name, name=f"branch {name}")
    except BaseExceptionGroup as group:
        raise single(group) from None
    finally:
        activity.resume_parent()
