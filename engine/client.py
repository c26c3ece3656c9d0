"""``Client``: reach workflows by id from an app, without their function or input.

``client.handle(id)`` is a ``WorkflowHandle`` that never runs the workflow: it sends
messages, cancels, recovers and reads it like any handle, and its ``result(timeout=...)``
waits, woken by the store's notifications (pub/sub, LISTEN/NOTIFY, in-process events; a
poll only where a store has none), until the workflow completed, failed or was cancelled,
wherever it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio

from engine.describe import (
    WorkflowDescription,
    WorkflowInfo,
    fields_of,
    history,
    waiting_for,
)
from engine.driver import EngineDriver, is_wake_source
from engine.errors import rebuild_error
from engine.handle import WorkflowHandle
from engine.runner import RunSpec
from engine.start import StartedWorkflow, start_workflow
from engine.state import WorkflowResult, WorkflowState
from engine.storage import Storage, commands
from engine.store import WorkerStore, WorkflowRow


class Client:
    """An app's way to its workflows in ``store`` (any store that keeps an index).

    It knows workflows by id alone (neither their function nor their input) and never runs
    them. Every store of ``drivers`` works.

    Args:
        store: the store the workers use.
    """

    def __init__(self, store: WorkerStore) -> None:
        self.store = store

    async def start(self, name: str, workflow_id: str, input: Any) -> StartedWorkflow:
        """Record ``name`` and ``input`` for ``workflow_id`` and make it due now, for any
        Worker serving ``name``; idempotent per id (``start_workflow``).

        Args:
            name: the registered workflow name.
            workflow_id: the new workflow's id.
            input: its input, any storable value.

        Returns:
            The workflow's id and registered name, and whether this call created it.

        Raises:
            ValueError: ``name`` is empty, or the store cannot hold ``workflow_id``.
            SerializationError: ``input`` cannot be stored.
            StorageError: the store failed; nothing was written.
        """
        return await start_workflow(self.store, name, workflow_id, input)

    def handle(self, workflow_id: str) -> ClientHandle:
        """A handle on ``workflow_id`` that never runs it; no I/O.

        Args:
            workflow_id: the workflow's id; it need not exist yet.

        Returns:
            A handle whose ``result(timeout=...)`` waits for the workflow's end.
        """
        return ClientHandle(workflow_id, self.store.driver(workflow_id))

    async def list(
        self, *, state: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowInfo]:
        """Workflows in the store, most recently updated first; filtered by ``state``
        (``running``: a run holds it now) and registered ``name``.

        Args:
            state: only workflows in this state (a ``WorkflowState`` value); None for all.
            name: only workflows registered under this name; None for all.
            limit: the most workflows returned. Default ``100``.

        Returns:
            One ``WorkflowInfo`` per workflow, however it was started.

        Raises:
            ValueError: ``state`` is not a ``WorkflowState`` value.
            StorageError: the store failed.
        """
        if state is not None:
            WorkflowState(state)  # a ValueError names the unknown state
        rows = await self.store.workflow_rows(state=state, name=name, limit=limit)
        return [_info(row) for row in rows]

    async def describe(self, workflow_id: str) -> WorkflowDescription:
        """State, input, output, error, what it waits for, and its history in recorded
        order; ``KeyError`` for a workflow the store does not hold.

        Reads the workflow's whole namespace once, read-only.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The workflow's description, ``history`` in the order it was recorded.

        Raises:
            KeyError: the store holds no workflow ``workflow_id``.
            CorruptedRecordError: a stored record cannot be read.
            StorageError: the store failed.
        """
        row = await self.store.workflow_row(workflow_id)
        storage = Storage(self.store.driver(workflow_id), workflow_id)
        await storage.load()
        if row is None and not storage.fields.seen:
            raise KeyError(f"no workflow {workflow_id!r} in this store")
        info = _info(row) if row is not None else _unindexed(workflow_id, storage)
        input_value, output, error = fields_of(storage)
        return WorkflowDescription(
            info.workflow_id,
            info.name,
            info.state,
            info.wake_at,
            info.updated_at,
            input_value,
            output,
            error,
            waiting_for(storage) if info.state == WorkflowState.SLEEPING else None,
            history(storage),
        )


class ClientHandle(WorkflowHandle[Any]):
    """A ``WorkflowHandle`` that never runs the workflow; ``result`` waits for its end.

    ``message``, ``wake``, ``cancel``, ``recover``, ``get_state``, ``get_output`` and
    ``get_error`` work as on any handle; ``evict`` does nothing (there is no run here), and
    ``async with`` raises ``TypeError``. Made by ``Client.handle``.
    """

    def __init__(self, workflow_id: str, driver: EngineDriver) -> None:
        super().__init__(RunSpec(workflow_id, _never, None, driver, "yield", None, None))

    async def result(self, timeout: float | None = None) -> WorkflowResult[Any]:
        """Wait until the workflow completed (its result), failed (raises as a later run
        would) or was cancelled; ``TimeoutError`` after ``timeout`` seconds.

        Woken by the store when a run ends (Redis pub/sub, PostgreSQL LISTEN/NOTIFY,
        in-process events); a store without wake-ups is polled every
        ``worker_poll_interval``. A workflow that only sleeps or waits has not ended.

        Args:
            timeout: seconds to wait at most; None (the default) waits for ever.

        Returns:
            A result in state ``completed`` (with ``output``) or ``cancelled``.

        Raises:
            TimeoutError: the workflow did not end within ``timeout`` seconds.
            WorkflowError: the workflow failed: its recorded error, an engine error as its
                own type (``StepExhaustedError``, ``CriticalError``, ...), any other as
                ``WorkflowFailedError``.
            StorageError: the store failed.
        """
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            async with self._wakeups() as wakeups:
                while True:
                    # Looked at only once listening: an end between the two is not missed.
                    state = await self.get_state()
                    if state == WorkflowState.COMPLETED:
                        output = await self.get_output()
                        return WorkflowResult(self.workflow_id, state, output=output)
                    if state == WorkflowState.CANCELLED:
                        return WorkflowResult(self.workflow_id, state)
                    if state == WorkflowState.FAILED:
                        record = await commands.read_error(self._driver, self.workflow_id)
                        if record is not None:
                            raise rebuild_error(record)
                    await wakeups()
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _wakeups(self) -> AsyncIterator[Any]:
        """A callable that returns at the workflow's next notification (or poll)."""
        driver = self._driver
        if not is_wake_source(driver):

            async def poll() -> None:
                await anyio.sleep(driver.worker_poll_interval)

            yield poll
            return
        async with driver.subscribe() as stream:
            iterator = stream.__aiter__()

            async def next_wakeup() -> None:
                await iterator.__anext__()

            yield next_wakeup

    async def __aenter__(self) -> ClientHandle:
        raise TypeError(f"workflow {self.workflow_id!r}: a client handle never runs it")


STEERING = ("message", "wake", "cancel", "recover")


async def steer(client: Client, workflow_id: str, action: str, *args: Any) -> WorkflowState:
    """Run one steering method of a handle (``STEERING``) on a workflow the store holds;
    its state afterwards. The CLI's and the dashboard's buttons go through here.

    Raises ``KeyError`` for an id the store does not hold: steering never creates one.
    """
    if action not in STEERING:
        raise ValueError(f"workflow {workflow_id!r}: cannot {action!r}; one of {STEERING}")
    await client.describe(workflow_id)
    handle = client.handle(workflow_id)
    await getattr(handle, action)(*args)
    return await handle.get_state()


def _info(row: WorkflowRow) -> WorkflowInfo:
    return WorkflowInfo(
        row.workflow_id, row.name, WorkflowState(row.state), row.wake_at, row.updated_at
    )


def _unindexed(workflow_id: str, storage: Storage) -> WorkflowInfo:
    """A workflow run on a bare driver before the store kept an index of it."""
    state = storage.fields.state or WorkflowState.PENDING
    return WorkflowInfo(workflow_id, storage.fields.name or "", state, None, 0.0)


async def _never(ctx: Any, value: Any) -> Any:
    raise AssertionError("a client handle never runs the workflow")
