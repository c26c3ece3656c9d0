"""The dashboard over HTTP on every store: the list and its counts, one workflow's page, the
JSON the pages poll, and the actions with their confirmation, token and read-only checks.

The app runs in the test's event loop (httpx's ASGI transport) on the ``store`` fixture, so
each test runs once per store and loop; ``tests/dashboard/test_browser.py`` drives a real
server in Chromium.
"""

from __future__ import annotations

import html as markup
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from engine import Client, WorkflowState, keys, run_workflow
from engine.dashboard import create_app
from tests.dashboard.shop import SHIPMENT, Seeded, order, seed

pytestmark = pytest.mark.anyio


@pytest.fixture
async def seeded(store: Any) -> Seeded:
    return await seed(store)


@pytest.fixture
async def web(store: Any, seeded: Seeded) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(store) as client:
        yield client


def _client(store: Any, read_only: bool = False) -> httpx.AsyncClient:
    app = create_app(store, read_only=read_only, label="test store")
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://dashboard")


def counts(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-count="(\w+)">([^<]*)<', html))


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-id="([^"]*)"', html)


async def act(
    web: httpx.AsyncClient, workflow_id: str, action: str, **fields: str
) -> httpx.Response:
    """POST an action the way the page's form does, token and confirmation included."""
    page = await web.get(f"/workflows/{workflow_id}")
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token is not None, page.text
    form = {"token": token.group(1), "action": action, "confirm": "yes", **fields}
    return await web.post(f"/workflows/{workflow_id}", data=form)


async def state_of(store: Any, workflow_id: str) -> WorkflowState:
    """The state the workflow's own record holds (the store's index lags behind recover)."""
    return await Client(store).handle(workflow_id).get_state()


async def test_the_list_shows_every_workflow_and_counts_per_state(
    web: httpx.AsyncClient, seeded: Seeded
) -> None:
    page = await web.get("/")
    assert page.status_code == 200
    shown = counts(page.text)
    assert shown.pop("total") == "9"
    assert shown == {state: str(n) for state, n in seeded.counts().items()}
    assert set(row_ids(page.text)) == {
        *seeded.completed,
        seeded.awaiting_shipment,
        seeded.subscription,
        seeded.failed,
        seeded.cancelled,
        seeded.pending,
    }
    assert 'href="/workflows/refund-10415"' in page.text


async def test_filters_by_state_and_name(web: httpx.AsyncClient, seeded: Seeded) -> None:
    failed = await web.get("/", params={"state": "failed"})
    assert row_ids(failed.text) == [seeded.failed]
    sleeping = await web.get("/", params={"state": "sleeping"})
    assert set(row_ids(sleeping.text)) == {seeded.awaiting_shipment, seeded.subscription}
    named = await web.get("/", params={"name": "order", "state": "completed", "limit": "2"})
    assert len(row_ids(named.text)) == 2
    assert set(row_ids(named.text)) <= set(seeded.completed)
    assert counts(named.text)["total"] == "7"  # the counts follow the name filter
    nothing = await web.get("/", params={"state": "rolling_back"})
    assert row_ids(nothing.text) == [] and "No workflows rolling back." in nothing.text

    bad = await web.get("/", params={"state": "asleep"})
    assert bad.status_code == 400
    assert "unknown state &#39;asleep&#39;" in bad.text
    too_many = await web.get("/", params={"limit": "0"})
    assert too_many.status_code == 400 and "limit must be between 1 and" in too_many.text


async def test_the_counts_the_list_polls(web: httpx.AsyncClient, seeded: Seeded) -> None:
    listed = (await web.get("/api/workflows")).json()
    assert listed["counts"] == seeded.counts()
    assert listed["total"] == 9 and listed["complete"] is True
    sleeping = (await web.get("/api/workflows", params={"state": "sleeping"})).json()
    by_id = {row["workflow_id"]: row for row in sleeping["workflows"]}
    assert set(by_id) == {seeded.awaiting_shipment, seeded.subscription}
    assert by_id[seeded.subscription]["wake_at"] is not None
    assert by_id[seeded.subscription]["url"] == f"/workflows/{seeded.subscription}"
    bad = await web.get("/api/workflows", params={"state": "nope"})
    assert bad.status_code == 400 and "unknown state" in bad.json()["error"]

    one = (await web.get(f"/api/workflows/{seeded.awaiting_shipment}")).json()
    assert one["state"] == "sleeping" and one["waiting_for_messages"] == [SHIPMENT]
    assert one["history_size"] == 6
    missing = await web.get("/api/workflows/no-such-order")
    assert missing.status_code == 404 and "no-such-order" in missing.json()["error"]


async def test_a_workflow_page_shows_history_timeline_values_and_waits(
    web: httpx.AsyncClient, seeded: Seeded
) -> None:
    page = await web.get(f"/workflows/{seeded.retried}")
    assert page.status_code == 200
    html = page.text
    assert 'id="state">completed<' in html
    for path in ("charge-card", "prepare", "prepare/stock/reserve-stock", "email-customer"):
        assert f'<li data-path="{path}">' in html, path
        assert 'class="bar kind-' in html and f'data-path="{path}"' in html
    assert "3 attempts · 2 retries" in html
    assert html.count('class="pip failed"') == 2  # two timeouts, then the charge went through
    assert "DHL-10420-DE" in html  # the output
    assert '"customer": "linus@example.com"' in markup.unescape(html)  # the input
    assert "Nothing to do: the workflow has completed." in html
    assert 'data-action="cancel"' not in html

    waiting = (await web.get(f"/workflows/{seeded.awaiting_shipment}")).text
    assert "a message named &#39;shipment-confirmed&#39;" in waiting
    assert 'data-action="message"' in waiting and 'data-action="cancel"' in waiting
    assert 'value="shipment-confirmed"' in waiting  # the name it waits for, filled in

    timer = (await web.get(f"/workflows/{seeded.subscription}")).text
    assert "its alarm (a sleep, a retry or a deadline)" in timer and "in 29 d" in timer

    failed = (await web.get(f"/workflows/{seeded.failed}")).text
    assert "CriticalError: card network declined the refund: account closed" in failed
    assert 'data-action="recover"' in failed
    assert "traceback" in failed


async def test_an_unknown_workflow_is_a_404_page_naming_it(web: httpx.AsyncClient) -> None:
    page = await web.get("/workflows/order-99999")
    assert page.status_code == 404
    assert "There is no workflow &#39;order-99999&#39; in this store." in page.text
    nowhere = await web.get("/no/such/page")
    assert nowhere.status_code == 404 and "There is no page at" in nowhere.text
    token = re.search(
        r'name="token" value="([^"]+)"', (await web.get("/workflows/order-10422")).text
    )
    assert token is not None
    form = {"token": token.group(1), "action": "cancel", "confirm": "yes"}
    posted = await web.post("/workflows/order-99999", data=form)
    assert posted.status_code == 404 and "order-99999" in posted.text


async def test_cancel_needs_a_confirmation_and_the_page_token(
    web: httpx.AsyncClient, store: Any, seeded: Seeded
) -> None:
    target = seeded.subscription
    page = await web.get(f"/workflows/{target}")
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token is not None

    unconfirmed = await web.post(
        f"/workflows/{target}", data={"token": token.group(1), "action": "cancel"}
    )
    assert unconfirmed.status_code == 400
    assert "Nothing has been done yet" in unconfirmed.text
    assert 'name="confirm" value="yes"' in unconfirmed.text  # the page asks instead
    forged = await web.post(f"/workflows/{target}", data={"action": "cancel", "confirm": "yes"})
    assert forged.status_code == 403 and "did not come from this dashboard" in forged.text
    as_json = await web.post(f"/workflows/{target}", json={"action": "cancel"})
    assert as_json.status_code == 415
    assert await state_of(store, target) == WorkflowState.SLEEPING

    done = await act(web, target, "cancel")
    assert done.status_code == 303
    assert done.headers["location"] == f"/workflows/{target}?done=cancel"
    assert await state_of(store, target) == WorkflowState.CANCELLED
    after = await web.get(done.headers["location"])
    assert "Cancelled: the workflow will not run again." in after.text
    assert 'id="state">cancelled<' in after.text
    assert counts((await web.get("/")).text)["cancelled"] == "2"


async def test_a_message_is_checked_then_sent(
    web: httpx.AsyncClient, store: Any, seeded: Seeded
) -> None:
    target = seeded.awaiting_shipment
    bad = await act(web, target, "message", name=SHIPMENT, data='{"tracking": ')
    assert bad.status_code == 400
    assert f"message to workflow &#39;{target}&#39; is not valid JSON" in bad.text
    assert "Nothing was sent." in bad.text
    nameless = await act(web, target, "message", name=" ", data="1")
    assert nameless.status_code == 400 and "needs a name" in nameless.text
    unknown = await act(web, target, "reboot")
    assert unknown.status_code == 400 and "expected one of message, wake, cancel" in unknown.text

    sent = await act(web, target, "message", name=SHIPMENT, data='{"tracking": "UPS-1Z999"}')
    assert sent.status_code == 303 and sent.headers["location"].endswith("?done=message")
    result = await run_workflow(target, order, None, store.driver(target)).result()
    assert result.state == WorkflowState.COMPLETED
    assert result.output["shipment"] == {"tracking": "UPS-1Z999"}  # only the good one arrived
    page = (await web.get(f"/workflows/{target}")).text
    assert 'id="state">completed<' in page and "UPS-1Z999" in page


async def test_recover_and_wake(web: httpx.AsyncClient, store: Any, seeded: Seeded) -> None:
    recovered = await act(web, seeded.failed, "recover")
    assert recovered.status_code == 303
    assert await state_of(store, seeded.failed) == WorkflowState.PENDING
    page = (await web.get(recovered.headers["location"])).text
    assert "Recovered: failed steps get fresh attempts" in page
    assert 'id="state">pending<' in page
    assert "a worker to run it: it is due" in page

    woken = await act(web, seeded.subscription, "wake")
    assert woken.status_code == 303
    assert "Woken: the workflow is due now" in (await web.get(woken.headers["location"])).text
    due = [workflow_id for workflow_id, _ in await store.due_alarms()]
    assert seeded.subscription in due


async def test_read_only_shows_everything_and_changes_nothing(store: Any, seeded: Seeded) -> None:
    async with _client(store, read_only=True) as web:
        page = await web.get(f"/workflows/{seeded.awaiting_shipment}")
        assert page.status_code == 200 and 'id="read-only"' in page.text
        assert 'method="post"' not in page.text
        assert "This dashboard is read-only" in page.text
        for action in ("cancel", "message", "wake", "recover"):
            posted = await web.post(
                f"/workflows/{seeded.awaiting_shipment}",
                data={"action": action, "confirm": "yes", "name": SHIPMENT, "data": "1"},
            )
            assert posted.status_code == 403 and "--read-only" in posted.text
        assert (await web.get("/")).status_code == 200
    assert await state_of(store, seeded.awaiting_shipment) == WorkflowState.SLEEPING


async def test_any_stored_value_renders_escaped_and_bounded(store: Any) -> None:
    nested: Any = "bottom"
    for _ in range(60):
        nested = [nested]
    odd = {
        "note": "<script>alert('x')</script>",
        "blob": bytes(range(256)) * 40,
        "floats": [float("nan"), float("inf"), 1.5],
        (1, "tuple"): {b"bytes-key": None},
        "nested": nested,
        "big": "x" * 300_000,
    }

    async def keeps(ctx: Any, value: Any) -> Any:
        await ctx.step("echo", lambda: value)
        return value

    workflow_id = "odd/<values>?&#"
    await run_workflow(workflow_id, keeps, odd, store.driver(workflow_id)).result()
    async with _client(store) as web:
        listed = await web.get("/")
        assert "odd/&lt;values&gt;?&amp;#" in listed.text
        assert 'href="/workflows/odd%2F%3Cvalues%3E%3F%26%23"' in listed.text
        page = await web.get("/workflows/odd%2F%3Cvalues%3E%3F%26%23")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Shown in part: cut at 20,000 characters" in html
    assert "10,240 bytes: 00 01 02" in html
    assert len(html) < 200_000  # 300 KB of input, twice, shown as a bounded head


async def test_a_damaged_record_is_an_error_page_not_a_crash(store: Any) -> None:
    async def one_step(ctx: Any, value: Any) -> Any:
        return await ctx.step("only", lambda: value)

    driver = store.driver("damaged")
    await run_workflow("damaged", one_step, 1, driver).result()
    [(history_key, _)] = await driver.list(keys.HISTORY_PREFIX)
    await driver.set(history_key, b"\xff\x00garbage")
    async with _client(store) as web:
        page = await web.get("/workflows/damaged")
        assert (await web.get("/")).status_code == 200
    assert page.status_code == 500
    assert "Workflow &#39;damaged&#39; cannot be read" in page.text
