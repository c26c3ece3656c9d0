"""The object a workflow receives: a location cursor over one scope, one method per operation.

The guards every operation needs are written once in ``_begin``, and they run when the
operation is *called*, before it is awaited: a bad name, a name used twice, an operation
started while the previous one in the same scope was not awaited, or a mismatch with the
history recorded at this position all raise before any of the operation's code runs. Each
operation's logic lives in its own module (``engine.ops``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
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


class WorkflowContext:
    """What a workflow function receives: one scope of a workflow and its operations.

    A workflow's body, each branch of a join or race and each loop iteration get a context
    of their own. Every operation takes a name, unique in its scope, and is checked against
    history when it is *called*, before it is awaited: a non-string or empty name raises
    ``ValueError``, a name used twice in the scope or an operation that does not match what
    history holds at this position raises ``HistoryDivergedError``, and an operation started
    while the previous one of the scope was not awaited raises ``EntryInProgressError``.
    The attributes ``run``, ``scope``, ``scope_node`` and ``in_branch`` and the methods
    ``child``, ``end_scope`` and ``release`` are the engine's own plumbing.
    """

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
    def queue(self) -> queue.Queue:
        """The workflow's message queue: ``await ctx.queue.next(...)`` waits for messages."""
        return queue.Queue(self.run, self._begin)

    @property
    def workflow_id(self) -> str:
        """The id of the workflow this context runs."""
        return self.run.workflow_id

    @property
    def aborted(self) -> anyio.Event:
        """An ``anyio.Event`` set when the run is evicted or the workflow cancelled.

        Pass it to long-running work inside a step so it can stop early; the run itself
        stops at its next operation either way.
        """
        return self.run.aborted

    def is_evicted(self) -> bool:
        """Whether the run was evicted or the workflow cancelled (``aborted`` is set)."""
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

        A failed attempt is retried after ``min(retry_backoff_base * 2 ** (n - 1),
        retry_backoff_max)`` seconds (``n`` the attempt that failed; no jitter), in memory
        when that is no longer than the store's ``worker_poll_interval``, otherwise by
        ending the run (yield mode) with an alarm at the retry time.

        Args:
            name: the step's name, unique in its scope.
            fn: a callable taking no arguments (use a lambda or ``functools.partial``).
            max_retries: retries after the first attempt, an ``int >= 0``: ``0`` means one
                attempt, ``1`` two attempts, the default ``3`` four.
            retry_backoff_base: seconds before the first retry, a number ``>= 0``
                (``0``: retry at once). Default ``0.1``.
            retry_backoff_max: the longest wait between two attempts, a number ``>= 0``.
                Default ``30.0``.
            timeout: seconds each attempt may take, a number ``>= 0``; ``0`` (or ``inf``)
                means no timeout. Default ``30.0``. An async ``fn`` is cancelled at its next
                ``await`` past the deadline; a sync one's thread cannot be stopped, is
                abandoned, and what it returns later is discarded.
            ephemeral: when True, the step's record is written with the run's next write
                instead of before the next operation (a crash before then runs it again).
            rollback: an async handler ``handler(rctx, output)`` that undoes the step if the
                workflow later fails: ``rctx`` is a ``RollbackContext``, ``output`` what
                this step returned. Needs a ``rollback_checkpoint`` earlier in the run.

        Returns:
            What ``fn`` returned (awaited, if it returned an awaitable), as stored: the
                first run returns exactly what replay returns (tuples and bytes preserved).

        Raises:
            TypeError: when called, if ``fn`` or ``rollback`` is not callable.
            ValueError: when called, for an option out of range, or an empty or non-string
                ``name``.
            HistoryDivergedError: when called, if ``name`` is used twice in this scope or
                history holds another operation at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
            StepExhaustedError: every one of the ``1 + max_retries`` attempts failed; the
                last error is its ``__cause__`` on the run where it happened.
            StepTimeoutError: an attempt ran longer than ``timeout``; never retried.
            CriticalError: ``fn`` raised it (or a subclass); never retried.
            RollbackError: ``fn`` raised it; never retried.
            SerializationError: the output cannot be stored (not msgpack data, or over the
                store's ``max_value_bytes``); never retried.
            RollbackCheckpointError: ``rollback`` is given and no checkpoint came before
                the step in this run; ``fn`` is not called.
            WorkflowFailedError: on replay, a step that failed with an error that is not one
                of the engine's is raised again as this, carrying its type name and message.
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
        """Wait ``seconds``: in memory when short, otherwise by yielding until an alarm.

        The wake time is recorded when the sleep first starts, so a restart never stretches
        it. In yield mode a sleep no longer than the store's ``worker_poll_interval`` waits
        in memory and a longer one ends the run with an alarm at the wake time; in live mode
        the run waits in memory, its alarm armed.

        Args:
            name: the sleep's name, unique in its scope.
            seconds: how long, a finite number ``>= 0``.

        Raises:
            ValueError: when called, if ``seconds`` is not a finite number ``>= 0``, or
                for an empty or non-string ``name``.
            HistoryDivergedError: when called, if ``name`` is used twice in this scope or
                history holds another operation at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
        sleep.validate(self.run, name, seconds, "seconds")
        return sleep.run_sleep(self._begin(name, "sleep"), seconds=seconds)

    def sleep_until(self, name: str, timestamp: float) -> Coroutine[Any, Any, None]:
        """Wait until the Unix time ``timestamp`` (a past time returns at once).

        Waits like ``sleep``, for an absolute time (``time.time()`` seconds).

        Args:
            name: the sleep's name, unique in its scope.
            timestamp: the wake time, a finite Unix time in seconds.

        Raises:
            ValueError: when called, if ``timestamp`` is not a finite number, or for an
                empty or non-string ``name``.
            HistoryDivergedError: when called, if ``name`` is used twice in this scope or
                history holds another operation at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
        sleep.validate(self.run, name, timestamp, "timestamp")
        return sleep.run_sleep(self._begin(name, "sleep"), until=timestamp)

    def join(
        self, name: str, branches_: Mapping[str, Callable[[WorkflowContext], Awaitable[Any]]]
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """Run every branch concurrently, each in its own scope; all settle.

        A branch that waits lets the others run on; the run yields only when every branch
        waits, with the earliest deadline as its alarm.

        Args:
            name: the join's name, unique in its scope.
            branches_: branch name -> ``async def branch(bctx)``, where ``bctx`` is a
                context for the branch's scope (``name/branch/...``).

        Returns:
            Each branch's return value, by branch name, in the order given.

        Raises:
            ValueError: when called, if ``branches_`` is not a non-empty dict or a branch
                name is not a non-empty string, or for an empty or non-string ``name``.
            TypeError: when called, if a branch is not callable.
            JoinError: once every branch settled, if any failed; ``errors`` maps each
                failed branch to its error.
            HistoryDivergedError: a branch's code does not match its history, or the
                branch names differ from the recorded ones (also when called, as for any
                operation).
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
        branches.validate(self.run, name, branches_, "join")
        return branches.run_join(self._begin(name, "join"), dict(branches_))

    def race(
        self, name: str, branches_: Mapping[str, Callable[[WorkflowContext], Awaitable[Any]]]
    ) -> Coroutine[Any, Any, RaceResult]:
        """Run every branch concurrently; the first to complete wins, the rest are cancelled.

        The decision and the winner's value are written at once, and the losers' history
        is deleted in the same write (their rollback handlers never run). A later run
        returns the recorded winner without running the branches.

        Args:
            name: the race's name, unique in its scope.
            branches_: branch name -> ``async def branch(bctx)``, where ``bctx`` is a
                context for the branch's scope (``name/branch/...``).

        Returns:
            A ``RaceResult(winner, value)``: the winning branch's name and return value.

        Raises:
            ValueError: when called, if ``branches_`` is not a non-empty dict or a branch
                name is not a non-empty string, or for an empty or non-string ``name``.
            TypeError: when called, if a branch is not callable.
            RaceError: every branch failed; ``errors`` maps each branch to its error.
            HistoryDivergedError: a branch's code does not match its history, or the
                branch names differ from the recorded ones (also when called, as for any
                operation).
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
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
        """Iterate ``run`` durably; returns the value of ``Loop.break_``.

        Iteration ``i`` runs in the scope ``name/~i``. Every ``commit_interval`` iterations
        the loop records the next iteration number and the state; a crash resumes at the
        last commit, replaying the recorded steps of the iterations since. Every
        ``history_every`` iterations the history of iterations older than the last
        ``history_keep`` is deleted, so history stays bounded however long the loop runs.

        Args:
            name: the loop's name, unique in its scope.
            run: ``async def body(lctx, state)`` returning ``Loop.continue_(next_state)`` or
                ``Loop.break_(value)``; ``lctx`` is the iteration's context.
            state: the first iteration's state (any storable value).
            commit_interval: iterations between two commits of the state, an ``int >= 1``.
                Default ``20``.
            history_every: iterations between two trims of old history, an ``int >= 1``
                and a multiple of ``commit_interval``; None means ``commit_interval``.
            history_keep: how many of the latest iterations keep their history, an
                ``int >= 0``; None means ``commit_interval``.

        Returns:
            The ``value`` of the ``Loop.break_(value)`` that ended the loop.

        Raises:
            ValueError: when called, for an option out of range or a ``history_every``
                that is not a multiple of ``commit_interval``, or for an empty or
                non-string ``name``.
            TypeError: an iteration's body returned something other than a ``LoopResult``.
            HistoryDivergedError: when called, if ``name`` is used twice in this scope or
                history holds another operation at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
        options = loop.validate(self.run, name, commit_interval, history_every, history_keep)
        return loop.run_loop(self._begin(name, "loop"), run, state, options)

    def rollback_checkpoint(self, name: str) -> Coroutine[Any, Any, None]:
        """Enable rollback handlers for the steps after this point.

        A step with a ``rollback`` handler needs a checkpoint earlier in the same run, or
        awaiting it raises ``RollbackCheckpointError``.

        Args:
            name: the checkpoint's name, unique in its scope.

        Raises:
            ValueError: when called, for an empty or non-string ``name``.
            HistoryDivergedError: when called, if ``name`` is used twice in this scope or
                history holds another operation at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
        return rollback.run_checkpoint(self._begin(name, "checkpoint"))

    def removed(self, name: str, original_type: str) -> Coroutine[Any, Any, None]:
        """Stand in for an operation deleted from the code, holding its history position.

        On a workflow that recorded the deleted operation, this takes its place (its record
        is kept and ignored); on a new workflow it records a placeholder, so both histories
        match the code from then on.

        Args:
            name: the deleted operation's name.
            original_type: its kind: ``"step"``, ``"sleep"``, ``"message"``, ``"join"``,
                ``"race"`` or ``"loop"``.

        Raises:
            ValueError: when called, for another ``original_type``, or an empty or
                non-string ``name``.
            HistoryDivergedError: when called, if history holds an operation of another
                name or kind at this position.
            EntryInProgressError: when called, if the previous operation of this scope was
                not awaited.
        """
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
