"""OpenTelemetry: a span per run and per executed step, one trace per workflow, on every store.

The spans are read from the SDK's in-memory exporter, installed for the engine alone with
``engine.tracing.use_tracer_provider`` (a process's global provider can be set only once).
The global provider, and a trace continued by another process, are tested in child
processes at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from engine import Client, CriticalError, WorkflowContext, WorkflowState, run_workflow, tracing
from engine.errors import CorruptedRecordError, HistoryDivergedError
from engine.keys import Field, field_key
from tests.workers.helpers import running, wait_until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def _one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = _named(exporter, name)
    return span


async def order(ctx: WorkflowContext, order_id: str) -> str:
    cents = await ctx.step("charge", lambda: 4200)
    await ctx.sleep("cool-off", 0.05)
    await ctx.step("notify", lambda: f"{order_id}:{cents}")
    return "done"


async def test_a_run_and_each_executed_step_have_a_span(
    spans: InMemorySpanExporter, driver: Any, wid: str
) -> None:
    result = await run_workflow(wid, order, "o-1", driver, mode="live").result()
    assert result.state == WorkflowState.COMPLETED
    run = _one(spans, "workflow order")
    charge, notify = _one(spans, "step charge"), _one(spans, "step notify")
    assert run.attributes is not None and charge.attributes is not None
    assert dict(run.attributes) == {
        "workflow.id": wid,
        "workflow.name": "order",
        "workflow.outcome": "completed",
    }
    assert dict(charge.attributes) == {
        "workflow.id": wid,
        "workflow.name": "order",
        "workflow.path": "charge",
        "workflow.attempt": 1,
        "workflow.outcome": "ok",
    }
    for step in (charge, notify):
        assert step.parent is not None and step.parent.span_id == run.context.span_id
        assert step.context.trace_id == run.context.trace_id
    [sleep] = [event for event in run.events if event.name == "sleep"]
    assert sleep.attributes is not None and sleep.attributes["workflow.path"] == "cool-off"


async def test_later_runs_continue_the_trace_and_replayed_steps_have_no_span(
    spans: InMemorySpanExporter, store: Any, wid: str
) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> str:
        await ctx.step("before", lambda: 1)
        [data] = await ctx.queue.next("wait", names=["go"])
        await ctx.step("after", lambda: 2)
        return str(data)

    first = await run_workflow(wid, wf, None, store.driver(wid)).result()
    assert first.state == WorkflowState.SLEEPING
    [first_run] = _named(spans, "workflow wf")
    assert first_run.attributes is not None
    assert first_run.attributes["workflow.outcome"] == "sleeping"
    assert await store.driver(wid).get(field_key(Field.TRACE)) is not None

    handle = run_workflow(wid, wf, None, store.driver(wid))
    await handle.message("go", "x")
    assert (await handle.result()).output == "x"

    runs = _named(spans, "workflow wf")
    assert len(runs) == 2
    second = next(span for span in runs if span is not first_run)
    assert second.context.trace_id == first_run.context.trace_id
    assert second.parent is not None and second.parent.span_id == first_run.context.span_id
    assert len(_named(spans, "step before")) == 1  # replayed in the second run: no span
    after = _one(spans, "step after")
    assert after.parent is not None and after.parent.span_id == second.context.span_id


async def test_retries_are_events_on_one_step_span(
    spans: InMemorySpanExporter, driver: Any, wid: str
) -> None:
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"refused #{calls}")
        return "ok"

    async def wf(ctx: WorkflowContext, _: None) -> str:
        return await ctx.step("call", flaky, max_retries=3, retry_backoff_base=0.01)

    result = await run_workflow(wid, wf, None, driver).result()
    assert result.output == "ok" and calls == 3
    step = _one(spans, "step call")
    assert step.attributes is not None
    assert step.attributes["workflow.attempt"] == 3
    assert step.attributes["workflow.outcome"] == "ok"
    retries = [event for event in step.events if event.name == "retry"]
    assert [dict(event.attributes or {}) for event in retries] == [
        {
            "workflow.attempt": 1,
            "retry.delay_seconds": 0.01,
            "exception.type": "ConnectionError",
            "exception.message": "refused #1",
        },
        {
            "workflow.attempt": 2,
            "retry.delay_seconds": 0.02,
            "exception.type": "ConnectionError",
            "exception.message": "refused #2",
        },
    ]


async def test_a_failure_is_recorded_on_the_step_and_the_run(
    spans: InMemorySpanExporter, driver: Any, wid: str
) -> None:
    def refuse() -> None:
        raise CriticalError("card declined")

    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("charge", refuse)

    with pytest.raises(CriticalError, match="card declined"):
        await run_workflow(wid, wf, None, driver).result()
    step, run = _one(spans, "step charge"), _one(spans, "workflow wf")
    for span in (step, run):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None and span.attributes["workflow.outcome"] == "failed"
        [exception] = [event for event in span.events if event.name == "exception"]
        assert exception.attributes is not None
        assert exception.attributes["exception.message"] == "card declined"


async def test_a_diverged_run_ends_its_span_as_diverged_and_writes_nothing(
    spans: InMemorySpanExporter, store: Any, wid: str
) -> None:
    async def wf(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.queue.next("wait", names=["go"])

    async def renamed(ctx: WorkflowContext, _: None) -> None:
        await ctx.step("b", lambda: 1)

    await run_workflow(wid, wf, None, store.driver(wid)).result()
    before = await store.driver(wid).list(b"")
    with pytest.raises(HistoryDivergedError):
        await run_workflow(wid, renamed, None, store.driver(wid)).result()
    assert await store.driver(wid).list(b"") == before
    run = _one(spans, "workflow renamed")
    assert run.attributes is not None and run.attributes["workflow.outcome"] == "diverged"
    assert run.status.status_code == StatusCode.ERROR
    assert _named(spans, "step b") == []


async def test_a_workflow_started_in_a_traced_request_joins_its_trace(
    spans: InMemorySpanExporter, store: Any, wid: str
) -> None:
    from engine import Worker

    request_tracer = otel_trace.get_tracer("app", tracer_provider=_provider_of(spans))
    with request_tracer.start_as_current_span("POST /orders") as request:
        await Client(store).start("order", wid, "o-9")
    worker = Worker(store, {"order": order}, handle_signals=False, poll_interval=0.05)
    async with running(worker):
        await wait_until(lambda: _state(store, wid, "completed"), what="completed")
    run = _named(spans, "workflow order")[0]
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id


async def test_no_provider_means_no_spans_and_nothing_stored(driver: Any, wid: str) -> None:
    assert tracing.tracer() is None  # the SDK is installed, but no provider is set
    result = await run_workflow(wid, order, "o-1", driver, mode="live").result()
    assert result.state == WorkflowState.COMPLETED
    assert await driver.get(field_key(Field.TRACE)) is None


@pytest.mark.parametrize(
    "stored",
    [{"traceparent": 7}, ["traceparent"], {f"h{i}": "x" for i in range(9)}, {"t": "x" * 2000}],
    ids=["not-a-string", "not-a-map", "too-many", "too-long"],
)
async def test_a_damaged_trace_context_is_a_corrupted_record(
    driver: Any, wid: str, stored: Any
) -> None:
    from engine import codec

    await driver.batch([(field_key(Field.TRACE), codec.encode(stored, "test"))])
    with pytest.raises(CorruptedRecordError, match=f"workflow {wid!r}.*field"):
        await run_workflow(wid, order, "o-1", driver).result()


def _provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    chosen = tracing._chosen
    assert isinstance(chosen, TracerProvider)
    return chosen


async def _state(store: Any, wid: str, state: str) -> bool:
    return (await Client(store).describe(wid)).state.value == state


_CHILD = textwrap.dedent(
    """
    import json, sys, anyio
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from engine import run_workflow
    from drivers.leveldb import LevelDBStore

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    async def wf(ctx, _):
        await ctx.step("first", lambda: 1)
        [data] = await ctx.queue.next("wait", names=["go"])
        await ctx.step("second", lambda: 2)
        return data

    async def main():
        async with LevelDBStore(sys.argv[1]) as store:
            handle = run_workflow("traced", wf, None, store.driver("traced"))
            if sys.argv[2] == "message":
                await handle.message("go", "x")
            await handle.result()
        runs = [s for s in exporter.get_finished_spans() if s.name.startswith("workflow ")]
        print(json.dumps([format(s.context.trace_id, "032x") for s in runs]))

    anyio.run(main)
    """
)


def test_a_run_in_another_process_continues_the_same_trace(tmp_path: Path) -> None:
    def child(mode: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "db"), mode],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    [first] = child("wait")
    [second] = child("message")
    assert first == second


def test_engine_does_not_import_opentelemetry_until_the_application_does() -> None:
    check = (
        "import sys, engine; from engine import tracing; "
        "assert tracing.tracer() is None; "
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'imported'; "
        "import opentelemetry.trace; assert tracing.tracer() is None; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
