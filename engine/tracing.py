"""OpenTelemetry spans for runs and executed steps, through the global tracer provider.

Tracing is on only when the ``otel`` extra is installed (``opentelemetry-api``) *and* the
application has set a tracer provider; otherwise ``start_run`` returns None and a run pays
one function call for it, a step nothing (it tests ``run.trace is None``). OpenTelemetry
is not even imported until the application has imported it (no provider can be set
before), so ``import engine`` costs the same with or without the extra.

A run's span is named ``workflow <name>``; an executed step's (never a replayed one's)
``step <name>``, a child of its run's. The first traced run of a workflow stores its span
context with the workflow (``Field.TRACE``, W3C trace-context headers), or the context
current when ``start_workflow`` was called, when that came first; every later run, in any
process, starts its span as a child of what is stored, so one workflow is one trace.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from engine.constants import VERSION
from engine.errors import SuspendSignal

if TYPE_CHECKING:  # at run time, imported by ``_loaded`` once the application has
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "durable-engine"

# Attribute names on run and step spans.
WORKFLOW_ID = "workflow.id"
WORKFLOW_NAME = "workflow.name"
PATH = "workflow.path"
ATTEMPT = "workflow.attempt"
OUTCOME = "workflow.outcome"

_cached: tuple[Any, Any] = (None, None)  # (provider, its tracer)
_imported = False
_chosen: TracerProvider | None = None


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace the engine through ``provider`` rather than OpenTelemetry's global one (which
    a process sets once); None goes back to the global one. For tests, and for a process
    that keeps its workflows' spans apart."""
    global _chosen
    _chosen = provider


def tracer() -> Tracer | None:
    """The engine's tracer, or None when tracing is off (no extra, or no provider set)."""
    global _cached
    if not _imported and not _loaded():
        return None
    provider: TracerProvider = _chosen or otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        return None
    cached_provider, cached_tracer = _cached
    if cached_provider is provider:
        return cached_tracer  # type: ignore[no-any-return]
    made = provider.get_tracer(TRACER_NAME, VERSION)
    _cached = (provider, made)
    return made


def _loaded() -> bool:
    """Import OpenTelemetry, once the application has (else no provider can be set)."""
    global _imported, otel_context, otel_trace, TraceContextTextMapPropagator
    if "opentelemetry.trace" not in sys.modules and _chosen is None:
        return False
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _imported = True
    return True


def current_carrier() -> dict[str, str] | None:
    """The caller's active span context as trace-context headers, for a workflow being
    started inside a traced request; None when tracing is off or no span is active."""
    if tracer() is None or not otel_trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier or None


class StepTrace:
    """The span of one executed step, current while its body runs; the step reports
    attempts and retries to it, and ends it with how it ended (no ``with``: the step's own
    ``try`` does it, so an untraced step pays nothing for a context manager)."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token = otel_context.attach(otel_trace.set_span_in_context(span))

    def end(self, error: BaseException | None) -> None:
        """``ok`` with no error; ``retry`` when the run yields until a retry is due;
        ``stopped`` when evicted, cancelled or a race was lost; else ``failed``."""
        otel_context.detach(self._token)
        span = self.span
        if error is None:
            span.set_attribute(OUTCOME, "ok")
        elif isinstance(error, Exception):
            _failed(span, error)
        else:
            span.set_attribute(OUTCOME, "retry" if isinstance(error, SuspendSignal) else "stopped")
        span.end()

    def attempt(self, attempt: int) -> None:
        self.span.set_attribute(ATTEMPT, attempt)

    def retry(self, attempt: int, delay: float, error: BaseException) -> None:
        self.span.add_event(
            "retry",
            {
                ATTEMPT: attempt,
                "retry.delay_seconds": delay,
                "exception.type": type(error).__name__,
                "exception.message": str(error),
            },
        )


class RunTrace:
    """The span of one run of one workflow."""

    __slots__ = ("_tracer", "base", "span")

    def __init__(self, tracer: Tracer, span: Span, base: Mapping[str, str]) -> None:
        self._tracer = tracer
        self.span = span
        self.base = base  # workflow id and name, on every span of the run

    def carrier(self) -> dict[str, str]:
        """This run's span context as trace-context headers, to store with the workflow."""
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(
            carrier, context=otel_trace.set_span_in_context(self.span)
        )
        return carrier

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make the run's span current, so the workflow's own spans nest under it."""
        token = otel_context.attach(otel_trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.span.add_event(name, dict(attributes))

    def step(self, name: str, path: str) -> StepTrace:
        """Start the span of one step's executed attempts; the step ends it."""
        span = self._tracer.start_span(f"step {name}", attributes={**self.base, PATH: path})
        return StepTrace(span)

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        """End the run's span with how the run ended (a state, ``diverged``, ``error``)."""
        if error is not None:
            _failed(self.span, error)
        self.span.set_attribute(OUTCOME, outcome)
        self.span.end()


def start_run(workflow_id: str, name: str, stored: Mapping[str, str] | None) -> RunTrace | None:
    """Start a run's span (None when tracing is off): a child of the stored context when the
    workflow has one, else of whatever span is current."""
    made = tracer()
    if made is None:
        return None
    parent = None if stored is None else TraceContextTextMapPropagator().extract(stored)
    base = {WORKFLOW_ID: workflow_id, WORKFLOW_NAME: name}
    span = made.start_span(f"workflow {name}", context=parent, attributes=base)
    return RunTrace(made, span, base)


def _failed(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, f"{type(error).__name__}"))
    span.set_attribute(OUTCOME, "failed")
