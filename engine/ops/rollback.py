"""``ctx.rollback_checkpoint`` and running compensations when a workflow fails for good.

Handlers are closures in the user's code, so they cannot be read from the store: every run
re-registers them as its steps replay. When the workflow fails unrecoverably, the handlers
registered so far run in reverse completion order (the step's completion number ``s``), and
each handler's completion is flushed to the step's metadata (``rbd``) before the next one
starts, so a crash or eviction mid-rollback resumes with the remaining handlers only.
Only steps whose history is retained are compensated (not race losers, not trimmed loop
iterations): exactly the handlers any later run would register again.
"""

from __future__ import annotations

import anyio

from engine.errors import error_record
from engine.keys import Location
from engine.records import CheckpointEntry, Metadata
from engine.run import ErrorEvent, Run
from engine.site import S, Site
from engine.state import WorkflowState


class RollbackContext:
    """Passed to each rollback handler as ``rctx``: ``await handler(rctx, output)``.

    ``output`` is the compensated step's recorded output, exactly what the step returned.

    Attributes:
        workflow_id: the id of the workflow being rolled back.
        location: the path of the step being compensated (``charge``,
            ``prepare/stock/reserve``, ``pages/~3/fetch``).
    """

    def __init__(self, run: Run, location: Location) -> None:
        self._run = run
        self.workflow_id = run.workflow_id
        self.location = run.path(location)

    @property
    def aborted(self) -> anyio.Event:
        """An ``anyio.Event`` set when the run is evicted or the workflow cancelled."""
        return self._run.aborted

    def is_evicted(self) -> bool:
        """Whether the run was evicted or the workflow cancelled (``aborted`` is set)."""
        return self._run.aborted.is_set()


async def run_checkpoint(site: Site[S]) -> None:
    with site:
        if site.storage.owed:
            await site.storage.flush()  # an earlier step's output lands first
        if site.node.entry is None:
            site.record(CheckpointEntry(site.pos))
        site.run.checkpoint_seen = True


async def run_handlers(run: Run) -> BaseException | None:
    """Run every not-yet-completed handler, newest first; return the first failure or None."""
    storage = run.storage
    storage.set_state(WorkflowState.ROLLING_BACK)
    await storage.flush()  # also pays an owed step output: it lands before any handler runs
    for handler in sorted(run.rollback_handlers, key=lambda h: h.seq, reverse=True):
        node = storage.node(handler.location)
        if node.entry is None:
            # Its history was removed (a race loser, a trimmed loop iteration): a later run
            # could not register it again, so it is not run on this one either.
            continue
        meta = node.meta or Metadata()
        if meta.compensated:
            continue
        run.scheduler.check_stop()
        try:
            await handler.handler(RollbackContext(run, handler.location), handler.output)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            storage.set_rollback_error(error_record(exc))
            await run.emit_error(
                ErrorEvent(run.workflow_id, run.path(handler.location), "rollback", 1, exc)
            )
            return exc
        meta.compensated = True
        storage.record_meta(handler.location, node, meta)
        await storage.flush()
    return None
