"""The ``durable-engine`` commands (also ``python -m engine``), parsed by Typer.

``worker`` runs workflows; ``list``, ``show``, ``start``, ``message``, ``wake``, ``cancel`` and
``recover`` reach them from a shell; ``dashboard`` serves the web dashboard (the
``dashboard`` extra). Every command takes ``--store URL`` (or ``DURABLE_STORE``),
``--namespace`` (or ``DURABLE_NAMESPACE``) and, except ``worker`` and ``dashboard``,
``--json``. ``main`` turns every failure into one line on stderr, ``error: ...``, never a
traceback, and an exit code (``EXIT_*``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import anyio
import typer

from engine.cli import render
from engine.cli.logs import JsonFormatter
from engine.cli.stores import load_registry, open_store
from engine.client import Client, steer
from engine.constants import (
    DEFAULT_HEARTBEAT,
    DEFAULT_LEASE,
    DEFAULT_WORKER_CONCURRENCY,
    DEFAULT_WORKER_POLL_INTERVAL,
)
from engine.describe import WorkflowDescription
from engine.errors import StorageError
from engine.state import WorkflowState
from engine.worker import Worker

EXIT_OK = 0
EXIT_RUNTIME = 1  # the store failed or could not be reached; anything unexpected
EXIT_USAGE = 2  # the command was wrong: arguments, JSON, store URL, unknown workflow id
EXIT_INTERRUPTED = 130

T = TypeVar("T")

app = typer.Typer(
    name="durable-engine",
    help="Run workers, and look at and steer the workflows in a store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Store = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="DURABLE_STORE",
        help="redis://, postgresql://, leveldb:///path or memory://",
        show_default=False,
    ),
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="DURABLE_NAMESPACE",
        help="Redis key prefix / Postgres schema",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
WorkflowId = Annotated[
    str, typer.Argument(metavar="ID", help="the workflow id", show_default=False)
]


class CommandError(Exception):
    """Raised when a command cannot do what was asked; ``main`` prints it as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _with_client(
    url: str | None, namespace: str | None, action: Callable[[Client], Awaitable[T]]
) -> T:
    """Open the store, run ``action`` with a ``Client`` on it, close the store."""
    if not url:
        raise CommandError("no store given: pass --store URL or set DURABLE_STORE")

    async def body() -> T:
        async with open_store(url, namespace=namespace or None) as store:
            return await action(Client(store))

    return anyio.run(body)


async def _describe(client: Client, workflow_id: str) -> WorkflowDescription:
    """The workflow's description; a ``CommandError`` for an id the store does not hold."""
    try:
        return await client.describe(workflow_id)
    except KeyError as exc:
        raise CommandError(str(exc.args[0]) if exc.args else str(exc)) from None


def _parse_json(what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{what} is not valid JSON ({exc.msg} at column {exc.colno})") from None


@app.command()
def worker(
    store: Store = None,
    namespace: Namespace = None,
    app_spec: Annotated[
        str | None,
        typer.Option("--app", help="module:registry, a dict name -> fn", show_default=False),
    ] = None,
    concurrency: int = DEFAULT_WORKER_CONCURRENCY,
    lease: Annotated[float, typer.Option(help="seconds")] = DEFAULT_LEASE,
    heartbeat: Annotated[float, typer.Option(help="seconds")] = DEFAULT_HEARTBEAT,
    poll: Annotated[
        float, typer.Option(help="seconds between polls; shorter sleeps wait in memory")
    ] = DEFAULT_WORKER_POLL_INTERVAL,
    log_level: str = "INFO",
    trace_console: Annotated[
        bool,
        typer.Option(
            "--trace-console", help="print each run's and step's span on stderr (otel extra)"
        ),
    ] = False,
) -> None:
    """Claim and run due workflows until SIGTERM, logging JSON lines on stdout."""
    if not store:
        raise CommandError("no store given: pass --store URL or set DURABLE_STORE")
    if not app_spec:
        raise CommandError("no workflows given: pass --app module:registry")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    try:
        logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    except ValueError:
        raise CommandError(f"unknown --log-level {log_level!r}") from None
    registry = load_registry(app_spec)
    if trace_console:
        _trace_to_console()

    async def serve() -> None:
        async with open_store(
            store, namespace=namespace or None, worker_poll_interval=poll
        ) as opened:
            running = Worker(opened, registry, concurrency, lease, heartbeat, handle_signals=True)
            await running.run()

    anyio.run(serve)


def _trace_to_console() -> None:
    """Spans to stderr through the OpenTelemetry SDK, for this process's runs only."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        raise CommandError(
            "--trace-console needs the OpenTelemetry SDK: pip install 'durable-engine[otel]'",
            EXIT_RUNTIME,
        ) from None
    from engine.tracing import use_tracer_provider

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    use_tracer_provider(provider)


@app.command("list")
def list_workflows(
    state: Annotated[
        str | None,
        typer.Option(help="pending, running, sleeping, completed, failed, rolling_back, cancelled"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="registered workflow name")] = None,
    limit: int = 100,
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """The workflows in the store, most recently updated first."""

    if state is not None and state not in set(WorkflowState):
        known = ", ".join(WorkflowState)
        raise CommandError(f"unknown state {state!r}; expected one of {known}")

    async def action(client: Client) -> Any:
        return await client.list(state=state, name=name, limit=limit)

    infos = _with_client(store, namespace, action)
    if as_json:
        render.print_json([render.info_document(info) for info in infos])
    else:
        render.print_human(render.workflows_table(infos))


@app.command()
def show(
    workflow_id: WorkflowId,
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """A workflow's state, input, output, error, what it waits for, and its history."""
    desc = _with_client(store, namespace, lambda client: _describe(client, workflow_id))
    if as_json:
        render.print_json(render.info_document(desc))
        return
    render.print_human(render.description_table(desc), render.history_tree(desc.history))


@app.command()
def start(
    name: Annotated[str, typer.Argument(metavar="NAME", help="the registered workflow name")],
    workflow_id: WorkflowId,
    input: Annotated[str, typer.Argument(metavar="INPUT", help="the input, as JSON")],
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """Start a workflow for any worker serving NAME; a repeat of an id changes nothing."""
    value = _parse_json("INPUT", input)
    started = _with_client(store, namespace, lambda client: client.start(name, workflow_id, value))
    if as_json:
        render.print_json(
            {"workflow_id": started.workflow_id, "name": started.name, "created": started.created}
        )
    else:
        verb = "started" if started.created else "already started"
        print(f"{verb}: {started.workflow_id!r} ({started.name})")


@app.command()
def message(
    workflow_id: WorkflowId,
    name: Annotated[str, typer.Argument(metavar="NAME", help="the message name")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="the message data, as JSON")],
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """Send the workflow a message (kept durably until it is received)."""
    value = _parse_json("DATA", data)
    _steer(store, namespace, as_json, workflow_id, "message", name, value)


@app.command()
def wake(
    workflow_id: WorkflowId,
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """Make the workflow due now."""
    _steer(store, namespace, as_json, workflow_id, "wake")


@app.command()
def cancel(
    workflow_id: WorkflowId,
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """Stop the workflow for good."""
    _steer(store, namespace, as_json, workflow_id, "cancel")


@app.command()
def recover(
    workflow_id: WorkflowId,
    store: Store = None,
    namespace: Namespace = None,
    as_json: AsJson = False,
) -> None:
    """Make a failed workflow runnable again and schedule a run."""
    _steer(store, namespace, as_json, workflow_id, "recover")


@app.command()
def dashboard(
    store: Store = None,
    namespace: Namespace = None,
    host: Annotated[str, typer.Option(help="the address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on (0: any free one)")] = 8000,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="show workflows, refuse every action")
    ] = False,
) -> None:
    """Serve the web dashboard: workflows, their history, and buttons to steer them."""
    if not store:
        raise CommandError("no store given: pass --store URL or set DURABLE_STORE")
    # The dashboard's libraries are an extra; without them this names it (ImportError).
    from engine.dashboard import create_app, server

    try:
        sock = server.listen(host, port)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).partition(" (while")[0]
        raise CommandError(f"cannot listen on {host}:{port}: {reason}") from None

    async def serve() -> None:
        async with open_store(store, namespace=namespace or None) as opened:
            label = server.store_label(store, namespace)
            app = create_app(opened, read_only=read_only, label=label)
            mode = " (read-only)" if read_only else ""
            print(f"dashboard{mode}: {server.address(sock)}/ serving {label}", flush=True)
            await server.serve(app, sock)

    with sock:
        anyio.run(serve)


def _steer(
    url: str | None,
    namespace: str | None,
    as_json: bool,
    workflow_id: str,
    command: str,
    *args: Any,
) -> None:
    """Run one handle method on a workflow the store holds, then report its state."""

    async def action(client: Client) -> str:
        try:
            return str(await steer(client, workflow_id, command, *args))
        except KeyError as exc:  # an unknown id is an error, not a new workflow
            raise CommandError(str(exc.args[0]) if exc.args else str(exc)) from None

    state = _with_client(url, namespace, action)
    if as_json:
        render.print_json({"workflow_id": workflow_id, "command": command, "state": state})
    else:
        print(f"{command}: {workflow_id!r} is now {state}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``durable-engine`` and ``python -m engine``; returns the exit code."""
    # Outside the worker nothing logs for the user: keep stray records off stderr.
    logging.getLogger().addHandler(logging.NullHandler())
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = command.main(args=args, prog_name="durable-engine", standalone_mode=False)
    except CommandError as exc:
        return _fail(str(exc), exc.exit_code)
    except typer.TyperException as exc:  # a usage error: missing or malformed arguments
        message = exc.format_message()
        return _fail(message, exc.exit_code) if message else exc.exit_code
    except typer.Abort:
        return _fail("aborted", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except StorageError as exc:
        return _fail(f"store: {exc}", EXIT_RUNTIME)
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        return _fail(str(exc) or type(exc).__name__, EXIT_USAGE)
    except Exception as exc:  # never a traceback: one line says what went wrong
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_RUNTIME)
    return code if isinstance(code, int) else EXIT_OK


def _fail(message: str, exit_code: int) -> int:
    first, _, _ = message.strip().partition("\n")
    print(f"error: {first}", file=sys.stderr)
    return exit_code
