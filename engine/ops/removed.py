"""``ctx.removed``: a placeholder that holds the position of an operation deleted from code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.run import Run

if TYPE_CHECKING:
    from engine.context import Site


def check(run: Run, name: str, original_type: str, allowed: tuple[str, ...]) -> None:
    if original_type not in allowed:
        raise ValueError(
            f"workflow {run.workflow_id!r} removed {name!r}: original_type must be one of "
            f"{', '.join(allowed)}, got {original_type!r}"
        )


async def run_removed(site: Site, original_type: str) -> None:
    # History from before the removal keeps its original entry (and its data); a fresh run
    # records a placeholder so positions stay the same for both.
    if site.node.entry is None:
        site.record({"ot": original_type})
