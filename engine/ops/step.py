"""``ctx.step``: run a function once, record its output, retry with deterministic backoff.

Write path of one executed step: call ``fn``; encode the output (through the codec, so the
first run returns exactly what replay will); queue the entry (and metadata when earlier
attempts failed); flush, which sends that plus anything else pending in one batch. Outside
join and race branches (where nothing else of the run executes) the flush is *owed*
instead: the next operation pays it before it starts, and the run's end merges it into its
last write, so a workflow's final step and its completion are one batch. Replay finds the
entry marked done and decodes the recorded output without calling ``fn``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from inspect import CO_COROUTINE
from types import CoroutineType, FunctionType
from typing import Any, TypeGuard, TypeVar

import anyio
import anyio.to_thread

from engine.constants import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
)
from engine.errors import (
    CriticalError,
    RollbackCheckpointError,
    RollbackError,
    SerializationError,
    StepExhaustedError,
    StepTimeoutError,
    error_record,
    rebuild_error,
)
from engine.records import Metadata, StepEntry
from engine.run import ErrorEvent, RollbackHandler, Run
from engine.site import S, Site
from engine.timeouts import TimedOut
from engine.tracing import StepTrace

T = TypeVar("T")
Compensation = Callable[[Any, Any], Awaitable[None]]


@dataclass(slots=True)
class StepOptions:
    max_retries: int
    backoff_base: float
    backoff_max: float
    timeout: float
    ephemeral: bool
    rollback: Compensation | None

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1``: base * 2^(attempt-1), capped; no jitter."""
        return float(min(self.backoff_base * (2 ** (attempt - 1)), self.backoff_max))


_DEFAULTS = StepOptions(
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
    False,
    None,
)
_EPHEMERAL_DEFAULTS = StepOptions(
    DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_BACKOFF_BASE,
    DEFAULT_RETRY_BACKOFF_MAX,
    DEFAULT_STEP_TIMEOUT,
    True,
    None,
)


def validate(
    run: Run,
    name: str,
    fn: object,
    max_retries: int,
    backoff_base: float,
    backoff_max: float,
    timeout: float,
    ephemeral: bool,
    rollback: Compensation | None,
) -> StepOptions:
    """The options of ``ctx.step``, checked; raises naming the workflow and the step."""
    # Checked on every call, so the happy path is a few type tests and no strings.
    if (
        max_retries is DEFAULT_MAX_RETRIES
        and backoff_base is DEFAULT_RETRY_BACKOFF_BASE
        and backoff_max is DEFAULT_RETRY_BACKOFF_MAX
        and timeout is DEFAULT_STEP_TIMEOUT
        and rollback is None
        and callable(fn)
    ):
        return _EPHEMERAL_DEFAULTS if ephemeral else _DEFAULTS
    problem: str | None = None
    if not callable(fn):
        problem = f"fn must be a zero-argument callable, got {fn!r}"
    elif type(max_retries) is not int or max_retries < 0:
        problem = f"max_retries must be an int >= 0, got {max_retries!r}"
    elif rollback is not None and not callable(rollback):
        problem = "rollback must be an async callable (rctx, output)"
    else:
        for label, value in (
            ("retry_backoff_base", backoff_base),
            ("retry_backoff_max", backoff_max),
            ("timeout", timeout),
        ):
            if type(value) not in (int, float) or not value >= 0:  # NaN fails >= too
                problem = f"{label} must be a number >= 0, got {value!r}"
    if problem is not None:
        error = TypeError if "callable" in problem else ValueError
        raise error(f"workflow {run.workflow_id!r} step {name!r}: {problem}")
    return StepOptions(
        max_retries,
        float(backoff_base),
        float(backoff_max),
        float(timeout),
        ephemeral,
        rollback,
    )


async def run_step(site: Site[S], fn: Callable[[], T | Awaitable[T]], options: StepOptions) -> T:
    try:  # ``with site:`` spelled out: this is the hottest path of a replay
        run = site.run
        storage = run.storage
        if storage.owed:
            await storage.flush()  # an earlier step's output lands first
        entry = site.node.entry
        if type(entry) is StepEntry and entry.done:
            if options.rollback is not None:
                # A step recorded before its handler was added to the code has no completion
                # number; it counts as the oldest, compensated last.
                _register_rollback(run, site, entry, options.rollback)
            return entry.output  # type: ignore[no-any-return]
        meta = site.node.meta
        if meta is not None and meta.failed and meta.error is not None:  # checked at load
            # A failure recorded by an earlier run: raise it again so replay goes the same way.
            raise rebuild_error(meta.error)
        if options.rollback is not None and not run.checkpoint_seen:
            raise RollbackCheckpointError(
                f"{site.describe()}: the step registers a rollback handler but no "
                "ctx.rollback_checkpoint(...) comes before it"
            )
        trace = run.trace
        # No ``with`` (an untraced step would pay two calls for it): the span, when there
        # is one, is ended by this ``try``.
        traced = None if trace is None else trace.step(site.name, site.path)
        try:
            while True:
                if meta is not None and meta.retry_at is not None:
                    await run.scheduler.wait(deadline=meta.retry_at)
                run.scheduler.check_stop()
                attempt = (meta.attempts if meta is not None else 0) + 1
                if traced is not None:
                    traced.attempt(attempt)
                try:
                    try:
                        if _is_async(fn):  # on the loop, as cheap as an await can be
                            value = await run.await_within(fn(), options.timeout)
                        else:
                            value = await _in_thread(fn, options.timeout, run)
                    except TimedOut:
                        raise StepTimeoutError(
                            f"{site.describe()}: the step ran longer than {options.timeout}s"
                        ) from None
                    # Only compensable steps need their completion number: it orders rollback
                    # (a failed encode wastes one: harmless).
                    seq = storage.take_seq() if options.rollback is not None else None
                    # The output returned is the one recorded, exactly what replay returns.
                    done = site.record(StepEntry(site.pos, True, value, seq))
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception as exc:
                    meta = await _record_failure(site, options, attempt, exc, traced)
                    continue
                if meta is not None:
                    storage.record_meta(site.location, site.node, Metadata("completed", attempt))
                if not options.ephemeral:
                    if not site.ctx.in_branch:
                        # Nothing else of this run can be executing: the write can wait for what
                        # comes next, which pays it before starting (or merges it into the run's
                        # last write). A crash before then runs this step again, as it would had
                        # the flush failed; nothing that follows it runs before the write lands.
                        # In a branch, a sibling's step may be under way, so it is written now.
                        storage.owed = True
                    else:
                        await storage.flush()
                if options.rollback is not None:
                    _register_rollback(run, site, done, options.rollback)
                if traced is not None:
                    traced.end(None)
                return done.output  # type: ignore[no-any-return]
        except BaseException as exc:
            if traced is not None:
                traced.end(exc)
            raise
    finally:
        site.ctx.release()


def _is_async(fn: Callable[[], Any]) -> TypeGuard[Callable[[], Awaitable[Any]]]:
    """An ``async def`` (or a partial or bound method of one); a plain function's flag is
    read directly, sparing the general check's unwrapping on the hot path."""
    if type(fn) is FunctionType:
        return bool(fn.__code__.co_flags & CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


async def _in_thread(fn: Callable[[], Any], timeout: float, run: Run) -> Any:
    """Call a sync ``fn`` in a worker thread under ``timeout``: it never blocks the loop,
    and its timeout holds (the thread cannot be stopped; what it returns after the timeout
    is discarded). Raises ``TimedOut``."""
    started = time.monotonic()
    # Boxed: a lambda returning a coroutine is called in the thread too, and trio refuses a
    # thread function whose result is a coroutine.
    (value,) = await run.await_within(
        anyio.to_thread.run_sync(_boxed, fn, abandon_on_cancel=True), timeout
    )
    if _awaitable(value):  # a sync callable that returned an awaitable (a lambda)
        left = timeout - (time.monotonic() - started) if timeout > 0 else 0.0
        return await run.await_within(value, max(left, 1e-9) if timeout > 0 else 0.0)
    return value


def _boxed(fn: Callable[[], Any]) -> tuple[Any]:
    return (fn(),)


def _awaitable(value: object) -> TypeGuard[Awaitable[Any]]:
    """Whether ``fn`` returned something to await; the type tests spare most values the
    slow ABC check of ``inspect.isawaitable``."""
    kind = type(value)
    return kind is CoroutineType or (kind not in _PLAIN and inspect.isawaitable(value))


_PLAIN = frozenset({dict, list, str, int, float, bool, type(None), tuple, bytes})


def _never_retried(exc: Exception) -> bool:
    """Errors a retry cannot help: the step's own verdicts, an unstorable output, and a
    recursion that blew the stack (it would blow it again)."""
    return isinstance(exc, CriticalError | RollbackError | SerializationError | RecursionError)


async def _record_failure(
    site: Site[S], options: StepOptions, attempt: int, exc: Exception, traced: StepTrace | None
) -> Metadata:
    """Persist a failed attempt; return the metadata to retry with, or raise the failure."""
    run = site.run
    if site.node.entry is None:
        # The step's place in history is recorded with its first failure (a success records
        # the finished entry directly), so the next run finds it at the same position.
        site.record(StepEntry(site.pos))
    retryable = not _never_retried(exc)
    will_retry = retryable and attempt <= options.max_retries
    retry_at = time.time() + options.backoff(attempt) if will_retry else None
    if will_retry and traced is not None:
        traced.retry(attempt, options.backoff(attempt), exc)
    failure: BaseException = exc
    if retryable and not will_retry:
        failure = StepExhaustedError(
            f"{site.describe()}: the step failed {attempt} times, last with "
            f"{type(exc).__name__}: {exc}"
        )
        failure.__cause__ = exc
    status = "retrying" if will_retry else ("exhausted" if retryable else "failed")
    meta = Metadata(status, attempt, retry_at, error_record(failure))
    run.storage.record_meta(site.location, site.node, meta)
    await run.storage.flush()
    await run.emit_error(
        ErrorEvent(run.workflow_id, site.path, "step", attempt, exc, will_retry, retry_at)
    )
    if not will_retry:
        raise failure
    return meta


def _register_rollback(run: Run, site: Site[S], entry: StepEntry, handler: Compensation) -> None:
    seq = -1 if entry.seq is None else entry.seq
    run.rollback_handlers.append(RollbackHandler(seq, site.location, handler, entry.output))
