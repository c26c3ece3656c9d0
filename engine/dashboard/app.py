"""``create_app``: the dashboard as one Starlette (ASGI) application over an open store.

The app does not own the store: whoever opened it (``durable-engine dashboard``, or an app
that mounts the dashboard beside its own routes) closes it. Every failure becomes a page
with a status and a sentence, never a traceback: 404 for an address or a workflow that does
not exist, 503 when the store cannot be reached, 500 for anything else.
"""

from __future__ import annotations

import logging
import secrets

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from engine.client import Client
from engine.dashboard import actions, views
from engine.dashboard.pages import HERE, Dashboard, error_page, templates
from engine.errors import StorageError
from engine.store import WorkerStore

logger = logging.getLogger("engine.dashboard")


def create_app(store: WorkerStore, *, read_only: bool = False, label: str = "") -> Starlette:
    """The dashboard for ``store``; ``read_only`` shows everything and refuses every action.

    ``label`` names the store in the page header (the command line gives the URL without its
    password).
    """
    routes = [
        Route("/", views.list_page, methods=["GET"], name="list"),
        Route("/workflows/{workflow_id:path}", views.workflow_page, methods=["GET"]),
        Route("/workflows/{workflow_id:path}", actions.act, methods=["POST"]),
        Route("/api/workflows", views.list_json, methods=["GET"]),
        Route("/api/workflows/{workflow_id:path}", views.workflow_json, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            StorageError: _store_error,
            Exception: _unexpected,
        },
    )
    app.state.dashboard = Dashboard(
        Client(store), read_only, secrets.token_urlsafe(24), label, templates()
    )
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        detail = f"There is no page at {request.url.path!r}."
        return error_page(request, 404, "Not found", detail)
    if exc.status_code == 405:
        detail = f"{request.method} is not accepted at {request.url.path!r}."
        return error_page(request, 405, "Method not allowed", detail)
    return error_page(request, exc.status_code, "Request refused", str(exc.detail))


async def _store_error(request: Request, exc: Exception) -> Response:
    logger.warning("store error on %s %s: %s", request.method, request.url.path, exc)
    return error_page(request, 503, "The store cannot be reached", str(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("error on %s %s", request.method, request.url.path, exc_info=exc)
    detail = f"{type(exc).__name__}: {exc}. The server's log has the details."
    return error_page(request, 500, "Something went wrong", detail)
