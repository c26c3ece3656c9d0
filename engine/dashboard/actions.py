"""The buttons: message, wake, cancel and recover a workflow, each confirmed twice.

A button is a form that POSTs to the workflow's own address. The browser asks first
(``confirm()`` in ``dashboard.js``) and the form then carries ``confirm=yes``; the server
refuses a POST without it, so a script, a stray request or a browser without JavaScript
cannot steer a workflow by accident. Each form also carries the dashboard's token (see
``pages.Dashboard``). A read-only dashboard refuses every POST with 403.

After an action the browser is sent back to the workflow's page (303), which says what was
done. What an action does is what the command line's ``message``, ``wake``, ``cancel`` and
``recover`` do: one ``ClientHandle`` method on a workflow the store holds.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engine.client import STEERING, steer
from engine.dashboard.pages import dashboard_of, error_page, workflow_url
from engine.errors import WorkflowError

MAX_FORM_BYTES = 4 * 1024 * 1024  # a message's data arrives in the form


class Refused(Exception):
    """Raised when a POST cannot be carried out; the page shows ``status`` and the reason."""

    def __init__(
        self, status: int, title: str, detail: str, confirm: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.confirm = confirm


async def act(request: Request) -> Response:
    workflow_id: str = request.path_params["workflow_id"]
    action = "steer"
    try:
        action, args = await _checked(request, workflow_id)
        await steer(dashboard_of(request).client, workflow_id, action, *args)
    except Refused as refused:
        return error_page(
            request, refused.status, refused.title, refused.detail, refused.confirm, workflow_id
        )
    except KeyError:
        detail = f"There is no workflow {workflow_id!r} in this store."
        return error_page(request, 404, "Unknown workflow", detail)
    except (ValueError, WorkflowError) as exc:  # a message the store cannot hold, say
        title = f"Cannot {action} workflow {workflow_id!r}"
        return error_page(request, 400, title, str(exc), workflow_id=workflow_id)
    back = request.scope.get("root_path", "") + workflow_url(workflow_id)
    return RedirectResponse(f"{back}?done={action}", status_code=303)


async def _checked(request: Request, workflow_id: str) -> tuple[str, tuple[Any, ...]]:
    """The action a POST asks for and its arguments, once every check has passed."""
    dashboard = dashboard_of(request)
    if dashboard.read_only:
        raise Refused(
            403,
            "Read-only dashboard",
            f"This dashboard was started with --read-only: workflow {workflow_id!r} was "
            "not changed.",
        )
    form = await _form(request)
    if not hmac.compare_digest(form.get("token", ""), dashboard.token):
        raise Refused(
            403,
            "Form out of date",
            f"Nothing was done to workflow {workflow_id!r}: the form did not come from this "
            "dashboard (or the dashboard restarted since). Reload the page and try again.",
        )
    action = form.get("action", "")
    if action not in STEERING:
        raise Refused(
            400,
            "Unknown action",
            f"Cannot do {action!r} to workflow {workflow_id!r}; expected one of "
            f"{', '.join(STEERING)}.",
        )
    args: tuple[Any, ...] = ()
    if action == "message":
        name = form.get("name", "").strip()
        if not name:
            raise Refused(
                400, "No message name", f"A message to workflow {workflow_id!r} needs a name."
            )
        args = (name, _json(form.get("data", ""), workflow_id))
    if form.get("confirm") != "yes":
        kept = [(key, form[key]) for key in ("token", "action", "name", "data") if key in form]
        raise Refused(
            400,
            f"Confirm: {action} workflow {workflow_id!r}?",
            "Nothing has been done yet: an action needs confirm=yes. The dashboard's "
            "buttons ask first; confirm here to go ahead.",
            {"workflow_id": workflow_id, "action": action, "fields": kept},
        )
    return action, args


def _json(text: str, workflow_id: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        detail = f"The data of the message to workflow {workflow_id!r} is not valid JSON ({where})."
    except RecursionError:
        detail = f"The data of the message to workflow {workflow_id!r} is nested too deeply."
    raise Refused(400, "Bad message data", detail + " Nothing was sent.")


async def _form(request: Request) -> dict[str, str]:
    """The POSTed form's fields (the first value of each), read up to ``MAX_FORM_BYTES``."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(
            415,
            "Not a form",
            "Actions are sent as an HTML form (application/x-www-form-urlencoded).",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "Form too large", f"A form may hold up to {MAX_FORM_BYTES:,} bytes.")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, "Unreadable form", f"The form could not be read ({exc}).") from None
    return {key: found[0] for key, found in fields.items()}
