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
from typing import TYPE_CHECKING, Any

import anyio

from engine import codec
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
from engine.run import ErrorEvent, RollbackHandler, Run

if TYPE_CHECKING:
    from engine.context import Site


@dataclass(slots=True)
class StepOptions:
    max_retries: int
    backoff_base: float
    backoff_max: float
    timeout: float
    ephemeral: bool
    rollback: Callable[[Any, Any], Awaitable[None]] | None

    @classmethod
    def checked(
        cls,
        run: Run,
        name: str,
        fn: object,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
        timeout: float,
        ephemeral: bool,
        rollback: Callable[[Any, Any], Awaitable[None]] | None,
    ) -> StepOptions:
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
        return cls(
            max_retries,
            float(backoff_base),
            float(backoff_max),
            float(timeout),
            ephemeral,
            rollback,
        )

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


async def run_step(site: Site, fn: Callable[[], Any], options: StepOptions) -> Any:
    run = site.run
    node = site.node
    entry = node.entry
    if entry is not None and entry.get("d"):
        value = entry["o"]  # decoded with the entry when the run loaded history
        if options.rollback is not None:
            # A step recorded before its handler was added to the code has no completion
            # number; it counts as the oldest, compensated last.
            _register_rollback(run, site, entry.get("s", -1), options.rollback, value)
        return value
    meta = dict(node.meta or {})
    if meta.get("st") in ("exhausted", "failed"):
        # A failure recorded by an earlier run: raise it again so replay goes the same way.
        raise rebuild_error(meta["err"])
    if options.rollback is not None and not run.checkpoint_seen:
        raise RollbackCheckpointError(
            f"{run.describe(site.location)}: the step registers a rollback handler but no "
            "ctx.rollback_checkpoint(...) comes before it"
        )

    def what() -> str:
        return run.describe(site.location) + " output"

    while True:
        if meta.get("r") is not None:
            await run.scheduler.wait(deadline=meta["r"])
        run.scheduler.check_stop()
        attempt = meta.get("a", 0) + 1
        try:
            value = await _attempt(fn, options.timeout, run, site)
            done: dict[str, Any] = {"k": "step", "p": site.pos, "d": True, "o": value}
            if options.rollback is not None:
                # Only compensable steps need their completion number: it orders rollback.
                done["rb"] = True
                done["s"] = run.storage.take_seq()  # a failed encode wastes one: harmless
            encoded = codec.encode(done, what)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            meta = await _record_failure(site, options, attempt, exc)
            continue
        # The output returned is the one decoded from the record, exactly what replay returns.
        done = codec.decode(encoded, what)
        run.storage.record_encoded_entry(site.location, site.ctx.scope_node, node, done, encoded)
        if meta:
            run.storage.record_meta(site.location, node, {"st": "completed", "a": attempt})
        if not options.ephemeral:
            if not site.ctx.in_branch:
                # Nothing else of this run can be executing: the write can wait for what
                # comes next, which pays it before starting (or merges it into the run's
                # last write). A crash before then runs this step again, as it would had
                # the flush failed; nothing that follows it runs before the write lands.
                # In a branch, a sibling's step may be under way, so it is written now.
                run.storage.owed = True
            else:
                await run.storage.flush()
        value = done["o"]
        if options.rollback is not None:
            _register_rollback(run, site, done["s"], options.rollback, value)
        return value


async def _attempt(fn: Callable[[], Any], timeout: float, run: Run, site: Site) -> Any:
    result = fn()
    if not inspect.isawaitable(result):
        return result
    if timeout <= 0:
        return await result
    with anyio.move_on_after(timeout):
        return await result
    raise StepTimeoutError(f"{run.describe(site.location)}: the step ran longer than {timeout}s")


async def _record_failure(
    site: Site, options: StepOptions, attempt: int, exc: Exception
) -> dict[str, Any]:
    """Persist a failed attempt; return the metadata to retry with, or raise the failure."""
    run = site.run
    if site.node.entry is None:
        # The step's place in history is recorded with its first failure (a success records
        # the finished entry directly), so the next run finds it at the same position.
        site.record({"d": False})
    retryable = not isinstance(exc, CriticalError | RollbackError | SerializationError)
    will_retry = retryable and attempt <= options.max_retries
    retry_at = time.time() + options.backoff(attempt) if will_retry else None
    failure: BaseException = exc
    if retryable and not will_retry:
        failure = StepExhaustedError(
            f"{run.describe(site.location)}: the step failed {attempt} times, last with "
            f"{type(exc).__name__}: {exc}"
        )
        failure.__cause__ = exc
    status = "retrying" if will_retry else ("exhausted" if retryable else "failed")
    meta = {"st": status, "a": attempt, "r": retry_at, "err": error_record(failure)}
    run.storage.record_meta(site.location, site.node, meta)
    await run.storage.flush()
    await run.emit_error(
        ErrorEvent(run.workflow_id, site.path, "step", attempt, exc, will_retry, retry_at)
    )
    if not will_retry:
        raise failure
    return meta


def _register_rollback(
    run: Run, site: Site, seq: int, handler: Callable[[Any, Any], Awaitable[None]], output: Any
) -> None:
    run.rollback_handlers.append(RollbackHandler(seq, site.location, handler, output))
