"""A user's program, as a new user writes it: ``mypy --strict`` must accept it without an
annotation on any ``await``, and infer what each one returns (checked by ``assert_type``).

Not collected by pytest; ``.ci/run`` type-checks it.
"""

from __future__ import annotations

import functools
from typing import Any, assert_type

from drivers.memory import MemoryDriver
from engine import WorkflowContext, WorkflowHandle, WorkflowResult, run_workflow


async def charge(order_id: str) -> dict[str, int]:
    return {"cents": len(order_id)}


def reserve(order_id: str, quantity: int) -> list[str]:
    return [order_id] * quantity


class Mailer:
    async def send(self, to: str) -> bool:
        return bool(to)

    def render(self, to: str) -> str:
        return f"hello {to}"


async def order(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    mailer = Mailer()
    payment = await ctx.step("charge", lambda: charge(order_id))
    assert_type(payment, dict[str, int])
    stock = await ctx.step("reserve", lambda: reserve(order_id, 2))
    assert_type(stock, list[str])
    partial = await ctx.step("reserve-more", functools.partial(reserve, order_id, 3))
    assert_type(partial, list[str])
    sent = await ctx.step("mail", functools.partial(mailer.send, "a@b.c"))
    assert_type(sent, bool)
    text = await ctx.step("render", lambda: mailer.render("a@b.c"))
    assert_type(text, str)
    direct = await ctx.step("charge-again", functools.partial(charge, order_id))
    assert_type(direct, dict[str, int])
    [tracking] = await ctx.queue.next("shipped", names=["shipped"])
    return {"payment": payment, "stock": stock, "tracking": tracking, "text": text}


async def main() -> None:
    handle = run_workflow("order-1", order, "order-1", MemoryDriver())
    assert_type(handle, WorkflowHandle[dict[str, Any]])
    result = await handle.result()
    assert_type(result, WorkflowResult[dict[str, Any]])
    if result.output is not None:
        assert_type(result.output, dict[str, Any])
    await handle.message("shipped", "TRACK-1")
