"""An order pipeline with workflows in every state a dashboard shows, for its tests and its
screenshots: completed orders (one after retries), an order waiting for its shipment, a
subscription sleeping until its next period, a refund that failed, a cancelled order and a
started one no worker has picked up yet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine import Client, CriticalError, WorkflowContext, run_workflow

SHIPMENT = "shipment-confirmed"
_failures: Counter[str] = Counter()  # attempts that still have to fail, by workflow id


async def order(ctx: WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    def charge() -> dict[str, Any]:
        if _failures[ctx.workflow_id] > 0:
            _failures[ctx.workflow_id] -= 1
            raise ConnectionError("payment gateway timed out after 5.0 s")
        return {"charge_id": f"ch_{order['order_id'][-5:]}9f2", "cents": order["total_cents"]}

    payment = await ctx.step("charge-card", charge, retry_backoff_base=0.01)
    packed = await ctx.join(
        "prepare",
        {
            "stock": lambda b: b.step("reserve-stock", lambda: [i["sku"] for i in order["items"]]),
            "invoice": lambda b: b.step("render-invoice", lambda: f"INV-{order['order_id'][-5:]}"),
            "label": lambda b: b.step("print-label", lambda: {"carrier": "DHL", "parcels": 1}),
        },
    )
    [shipment] = await ctx.queue.next("await-shipment", names=[SHIPMENT])
    await ctx.step("email-customer", lambda: f"sent to {order['customer']}")
    return {"payment": payment, "invoice": packed["invoice"], "shipment": shipment}


async def subscription(ctx: WorkflowContext, plan: dict[str, Any]) -> None:
    await ctx.step("charge-period", lambda: {"plan": plan["plan"], "cents": plan["cents"]})
    await ctx.step("grant-access", lambda: {"until": "2027-01-01"})
    await ctx.sleep("until-next-period", 30 * 86_400)


async def refund(ctx: WorkflowContext, request: dict[str, Any]) -> None:
    await ctx.step("lookup-payment", lambda: {"charge_id": request["charge_id"]})

    def refund_card() -> None:
        raise CriticalError("card network declined the refund: account closed")

    await ctx.step("refund-card", refund_card)


WORKFLOWS = {"order": order, "subscription": subscription, "refund": refund}


def an_order(number: int, customer: str, items: list[tuple[str, int, int]]) -> dict[str, Any]:
    return {
        "order_id": f"order-{number}",
        "customer": customer,
        "items": [{"sku": sku, "qty": qty, "cents": cents} for sku, qty, cents in items],
        "total_cents": sum(qty * cents for _, qty, cents in items),
    }


@dataclass
class Seeded:
    """The ids of the seeded workflows, by what they show."""

    completed: list[str] = field(default_factory=list)
    retried: str = ""
    awaiting_shipment: str = ""
    subscription: str = ""
    failed: str = ""
    cancelled: str = ""
    pending: str = ""

    def counts(self) -> dict[str, int]:
        return {
            "completed": len(self.completed),
            "sleeping": 2,
            "failed": 1,
            "cancelled": 1,
            "pending": 1,
            "running": 0,
            "rolling_back": 0,
        }


async def finish(store: Any, workflow_id: str, tracking: str) -> Any:
    """Confirm an order's shipment and run it to the end."""
    await Client(store).handle(workflow_id).message(SHIPMENT, {"tracking": tracking})
    return await run_workflow(workflow_id, order, None, store.driver(workflow_id)).result()


async def seed(store: Any) -> Seeded:
    seeded = Seeded()
    client = Client(store)
    orders = [
        (10418, "ada@example.com", [("BOOK-0042", 1, 2_499), ("MUG-0007", 2, 1_250)]),
        (10419, "grace@example.com", [("KBD-0100", 1, 8_900)]),
        (10420, "linus@example.com", [("SSD-2TB", 2, 13_999), ("CABLE-USB-C", 3, 899)]),
        (10421, "barbara@example.com", [("LAMP-0003", 1, 4_550)]),
        (10422, "ken@example.com", [("CHAIR-0011", 1, 21_900)]),
        (10423, "margaret@example.com", [("PEN-0001", 10, 199)]),
    ]
    for number, customer, items in orders:
        value = an_order(number, customer, items)
        workflow_id = value["order_id"]
        if number in (10420, 10422):
            _failures[workflow_id] = 2 if number == 10420 else 1  # then the charge goes through
        await run_workflow(workflow_id, order, value, store.driver(workflow_id)).result()
        if number in (10418, 10419, 10420, 10421):
            await finish(store, workflow_id, f"DHL-{number}-DE")
            seeded.completed.append(workflow_id)
        elif number == 10422:
            seeded.awaiting_shipment = workflow_id
        else:
            await client.handle(workflow_id).cancel()
            seeded.cancelled = workflow_id
    seeded.retried = "order-10420"

    seeded.subscription = "subscription-acme-pro"
    plan = {"customer": "acme-corp", "plan": "pro-monthly", "cents": 4_900}
    await run_workflow(
        seeded.subscription, subscription, plan, store.driver(seeded.subscription)
    ).result()

    seeded.failed = "refund-10415"
    try:
        await run_workflow(
            seeded.failed, refund, {"charge_id": "ch_104159f2"}, store.driver(seeded.failed)
        ).result()
    except CriticalError:
        pass

    seeded.pending = "order-10424"
    await client.start(
        "order", seeded.pending, an_order(10424, "alan@example.com", [("DESK-0002", 1, 34_900)])
    )
    return seeded
