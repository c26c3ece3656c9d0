"""``ctx.removed``: a placeholder that holds the position of an operation deleted from code."""

from __future__ import annotations

from engine.records import REMOVABLE, RemovedEntry
from engine.run import Run
from engine.site import S, Site


def validate(run: Run, name: str, original_type: str) -> None:
    """``original_type`` must be a kind that can be removed."""
    if original_type not in REMOVABLE:
        raise ValueError(
            f"workflow {run.workflow_id!r} removed {name!r}: original_type must be one of "
            f"{', '.join(REMOVABLE)}, got {original_type!r}"
        )


async def run_removed(site: Site[S], original_type: str) -> None:
    with site:
        if site.storage.owed:
            await site.storage.flush()  # an earlier step's output lands first
        # History from before the removal keeps its original entry (and its data); a fresh
        # run records a placeholder so positions stay the same for both.
        if site.node.entry is None:
            site.record(RemovedEntry(site.pos, original_type))
