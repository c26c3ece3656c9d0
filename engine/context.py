"""The object a workflow receives: a location cursor over one scope, one method per operation.

The guards every operation needs are written once in ``_begin``, and they run when the
operation is *called*, before it is awaited: a bad name, a name used twice, an operation
started while the previous one in the same scope was not awaited, or a mismatch with the
history recorded at this position all raise before any of the operation's code runs. Each
operation's logic lives in its own module (``engine.ops``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar, overload

import anyio

from engine.constants import (
    DEFAULT_LOOP_COMMIT_INTERVAL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
)
from engine.errors import EntryInProgressError, HistoryDivergedError
from engine.keys import Location
from engine.ops import branches, loop, queue, removed, rollback, sleep, step
from engine.ops.branches import RaceResult
from engine.ops.loop import LoopResult
from engine.run import Run
from engine.site import Site
from engine.storage import Node

T = TypeVar("T")


class Queue:
    """``ctx.queue``: waits for messages sent with ``handle.message(name, data)``."""

    def __init__(self, ctx: WorkflowContext) -> None:
        self._ctx = ctx

    def next(
        self,
        name: str,
        *,
        names: Sequence[str] | None = None,
        count: int = 1,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, list[Any]]:
        """Wait for ``count`` messages whose name is in ``names`` (any when None), FIFO."""
        ctx = self._ctx
        wanted = queue.validate(ctx.run, name, names, count, timeout)
        return queue.run_next(ctx._begin(name, "message"), wanted, count, timeout)


class WorkflowContext:
    """One scope of a workflow (the body, a branch, a loop iteration) and its cursor."""

    def __init__(
        self, run: Run, scope: Location, scope_node: Node, in_branch: bool = False
    ) -> None:
        self.run = run
        self.scope = scope
        self.scope_node = scope_node
        self.in_branch = in_branch  # inside a join or race branch: siblings may run beside it
        self._cursor = 0
        self._used: set[str] = set()
        self._busy: Site[WorkflowContext] | None = None  # the operation in flight
        self._recorded: list[Node] | None = None  # the scope's recorded entries, in order

    @property
    def queue(self) -> Queue:
        """``ctx.queue.next(...)``: made on use, as most scopes never wait for messages."""
        return Queue(self)

    @property
    def workflow_id(self) -> str:
        return self.run.workflow_id

    @property
    def aborted(self) -> anyio.Event:
        """Set on eviction or cancellation; pass it to long-running work inside steps."""
        return self.run.aborted

    def is_evicted(self) -> bool:
        return self.run.aborted.is_set()

    # Operations

    @overload
    def step(  # an async body: the result is what it returns, awaited
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        timeout: float = DEFAULT_STEP_TIMEOUT,
        ephemeral: bool = False,
        rollback: Callable[[Any, T], Awaitable[None]] | None = None,
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def step(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        timeout: float = DEFAULT_STEP_TIMEOUT,
        ephemeral: bool = False,
        rollback: Callable[[Any, T], Awaitable[None]] | None = None,
    ) -> Coroutine[Any, Any, T]: ...

    def step(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_base: float = DEFAULT_RETRY_BACKOFF_BASE,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        timeout: float = DEFAULT_STEP_TIMEOUT,
        ephemeral: bool = False,
        rollback: Callable[[Any, Any], Awaitable[None]] | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn`` once and record its output; on replay return the recorded output.

        A sync ``fn`` runs in a worker thread (it never blocks the event loop, and its
        ``timeout`` holds); an async one, or one returning an awaitable, is awaited on the
        loop. Typed for both: ``await ctx.step("charge", lambda: charge(order_id))`` has the
        type ``charge`` returns, awaited or not.
        """
        options = step.validate(
            self.run,
            name,
            fn,
            max_retries,
            retry_backoff_base,
            retry_backoff_max,
            timeout,
            ephemeral,
            rollback,
        )
        return step.run_step(self._begin(name, "step"), fn, options)

    def sleep(self, name: str, seconds: float) -> Coroutine[Any, Any, None]:
        """Wait ``seconds``: in memory when short, otherwise by yielding until an alarm."""
        sleep.validate(self.run, name, seconds, "seconds")
        return sleep.run_sleep(self._begin(name, "sleep"), seconds=seconds)

    def sleep_until(self, name: str, timestamp: float) -> Coroutine[Any, Any, None]:
        """Wait until the Unix time ``timestamp`` (a past time returns at once)."""
        sleep.validate(self.run, name, timestamp, "timestamp")
        return sleep.run_sleep(self._begin(name, "sleep"), until=timestamp)

    def join(
        self, name: str, branches_: Mapping[str, Callable[[WorkflowContext], Awaitable[Any]]]
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """Run every branch concurrently, each in its own scope; all settle."""
        branches.validate(self.run, name, branches_, "join")
        return branches.run_join(self._begin(name, "join"), dict(branches_))

    def race(
        self, name: str, branches_: Mapping[str, Callable[[WorkflowContext], Awaitable[Any]]]
    ) -> Coroutine[Any, Any, RaceResult]:
        """Run every branch concurrently; the first to complete wins, the rest are cancelled."""
        branches.validate(self.run, name, branches_, "race")
        return branches.run_race(self._begin(name, "race"), dict(branches_))

    def loop(
        self,
        name: str,
        run: Callable[[WorkflowContext, Any], Awaitable[LoopResult]],
        *,
        state: Any = None,
        commit_interval: int = DEFAULT_LOOP_COMMIT_INTERVAL,
        history_every: int | None = None,
        history_keep: int | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Iterate ``run`` durably; returns the value of ``Loop.break_``."""
        options = loop.validate(self.run, name, commit_interval, history_every, history_keep)
        return loop.run_loop(self._begin(name, "loop"), run, state, options)

    def rollback_checkpoint(self, name: str) -> Coroutine[Any, Any, None]:
        """Enable rollback handlers for the steps after this point."""
        return rollback.run_checkpoint(self._begin(name, "checkpoint"))

    def removed(self, name: str, original_type: str) -> Coroutine[Any, Any, None]:
        """Stand in for an operation deleted from the code, holding its history position."""
        removed.validate(self.run, name, original_type)
        site = self._begin(name, "removed", accept=(original_type, "removed"))
        return removed.run_removed(site, original_type)

    # Guards, written once

    def _begin(
        self, name: str, kind: str, accept: tuple[str, ...] | None = None
    ) -> Site[WorkflowContext]:
        run = self.run
        if run.scheduler.stopped:
            run.scheduler.check_stop()
        if type(name) is not str or not name:
            raise ValueError(
                f"workflow {run.workflow_id!r}: a {kind} needs a non-empty string name, "
                f"got {name!r} in {run.path(self.scope)}"
            )
        if self._busy is not None:
            raise EntryInProgressError(
                f"workflow {run.workflow_id!r}: {kind} {name!r} started in {run.path(self.scope)} "
                f"while {self._busy_text()} was not awaited; await each operation before the next "
                "(use ctx.join for concurrency)"
            )
        storage = run.storage
        index = storage.names.by_name.get(name)
        if index is None:
            index = storage.intern(name)
        location = (*self.scope, index)
        if name in self._used:
            raise HistoryDivergedError(
                f"workflow {run.workflow_id!r}: the name {name!r} is used twice in "
                f"{run.path(self.scope)} (at {run.path(location)}); names must be unique per scope"
            )
        pos = self._cursor
        recorded = self._recorded
        if recorded is None:
            recorded = self._recorded = self.scope_node.ordered()
        if pos < len(recorded):
            held = recorded[pos]
            held_kind = held.entry.kind if held.entry else "?"
            if held.segment != index or (
                held_kind != kind and (accept is None or held_kind not in accept)
            ):
                raise HistoryDivergedError(
                    f"history diverged in workflow {run.workflow_id!r} at {run.path(location)}: "
                    f"history holds {held_kind} {storage.names.name(held.segment)!r} at position "
                    f"{pos} of {run.path(self.scope)}, the code asked for {kind} {name!r}"
                )
            node = held
        else:
            node = self.scope_node.child(index)
        self._cursor += 1
        self._used.add(name)
        self._busy = site = Site(self, name, kind, location, node, pos)
        return site

    def _busy_text(self) -> str:
        assert self._busy is not None
        return f"{self._busy.kind} {self._busy.name!r}"

    def release(self) -> None:
        """The operation in flight ended: the scope is free for its next one."""
        self._busy = None

    def child(self, scope: Location, scope_node: Node, branch: bool = False) -> WorkflowContext:
        """A context for a nested scope (branch or loop iteration) of the same run."""
        return WorkflowContext(self.run, scope, scope_node, self.in_branch or branch)

    def end_scope(self) -> None:
        """At a scope's normal end: every recorded entry must have been performed again."""
        run = self.run
        if self._busy is not None:
            raise EntryInProgressError(
                f"workflow {run.workflow_id!r}: {run.path(self.scope)} ended while "
                f"{self._busy_text()} was not awaited"
            )
        recorded = self.scope_node.ordered()
        if self._cursor < len(recorded):
            held = recorded[self._cursor]
            location = (*self.scope, held.segment)
            raise HistoryDivergedError(
                f"history diverged in workflow {run.workflow_id!r} at {run.path(location)}: "
                f"history holds {held.entry.kind if held.entry else '?'} "
                f"{run.storage.names.name(held.segment)!r} at position {self._cursor} of "
                f"{run.path(self.scope)}, the code ended the scope without it "
                "(use ctx.removed for a deleted operation)"
            )
