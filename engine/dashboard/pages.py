"""What every page needs: the dashboard's settings, a template rendered, an error page.

Templates are Jinja2 with autoescape on for everything, so a workflow id, a message name or
a value holding ``<script>`` is shown as text. Links to a workflow quote its id completely
(``/`` included): ids are free text and the page must reach each one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from engine.client import Client
from engine.dashboard import values
from engine.state import ErrorInfo, WorkflowState

HERE = Path(__file__).parent
STATES = [state.value for state in WorkflowState]


@dataclass(frozen=True)
class Dashboard:
    """One dashboard's settings, kept on ``app.state.dashboard``.

    ``token`` is a random value every action form carries: another site can make a browser
    POST here, but cannot read a page to learn it, so it cannot steer workflows.
    """

    client: Client
    read_only: bool
    token: str
    label: str
    templates: Jinja2Templates


def dashboard_of(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dashboard
    return found


def templates() -> Jinja2Templates:
    """The page templates, autoescaped, with the helpers they call."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        show=values.show,
        clip=values.clip,
        preview=values.preview,
        when=when,
        relative=relative,
        error_line=error_line,
        states=STATES,
    )
    env.filters["workflow_url"] = workflow_url
    return Jinja2Templates(env=env)


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    dashboard = dashboard_of(request)
    page = {
        "read_only": dashboard.read_only,
        "label": dashboard.label,
        "root": request.scope.get("root_path", ""),
        **context,
    }
    return dashboard.templates.TemplateResponse(request, template, page, status_code)


def error_page(
    request: Request,
    status_code: int,
    title: str,
    detail: str,
    confirm: dict[str, Any] | None = None,
    workflow_id: str | None = None,
) -> HTMLResponse:
    """A page that says what was wrong, with the status a program can check; ``confirm``
    (``workflow_id``, ``action``, ``fields``) adds a form that asks for what was missing,
    ``workflow_id`` a link back to that workflow."""
    context = {
        "title": title,
        "detail": detail,
        "status_code": status_code,
        "confirm": confirm,
        "back": workflow_id,
    }
    return render(request, "error.html", context, status_code)


def workflow_url(workflow_id: str) -> str:
    return "/workflows/" + quote(workflow_id, safe="")


def when(timestamp: float | None) -> str:
    """An epoch time as the server's local time to the second; empty when there is none."""
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def relative(timestamp: float | None, now: float | None = None) -> str:
    """``3 min ago`` / ``in 2 h``: how far an epoch time is from now."""
    if timestamp is None:
        return ""
    delta = timestamp - (time.time() if now is None else now)
    size = abs(delta)
    if size < 1:
        return "now"
    amount = ""
    for unit, seconds in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if size >= seconds:
            amount = f"{int(size // seconds)} {unit}"
            break
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def error_line(error: ErrorInfo | None, limit: int = 300) -> str:
    """``Type: message`` of a recorded error, its first line cut to ``limit``; empty if none."""
    if error is None:
        return ""
    lines = f"{error.type}: {error.message}".splitlines() or [""]
    first = lines[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."
