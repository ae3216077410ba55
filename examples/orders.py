"""Revenue per customer, with bad orders set aside in a dead-letter topic.

    python examples/orders.py                # load good and bad orders, process, print
    python examples/orders.py worker         # run a worker until Ctrl-C

Orders are JSON objects {"id", "customer", "total"}. The app runs with on_error="dead_letter":
an order that is not JSON (a decode error), has no customer (group_by's key function raises)
or no total (the agent raises) goes, unchanged, to `orders-dead-letter` with headers saying
where it came from and why, in the same transaction as the offsets; every other order is billed
exactly once. The agent counts the order before it reads the total: for an order without one,
that count is not committed either (the worker redoes the cycle without the order).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import streams

app = streams.App("orders", broker="sqlite:///orders.db", on_error="dead_letter")
orders = app.topic("orders")
receipts = app.topic("receipts")
revenue = app.table("revenue", default=float)
billed = app.table("billed", default=int)


@app.stream(orders, sink=[receipts])
async def bill(stream: streams.Stream) -> Any:
    async for order in stream.group_by(lambda o: o["customer"], name="by-customer"):
        customer = order["customer"]
        billed[customer] += 1
        revenue[customer] += order["total"]  # KeyError for an order without a total
        yield {"id": order["id"], "customer": customer, "revenue": revenue[customer]}


async def demo() -> None:
    async with app.testing() as t:
        await t.send("orders", {"id": 1, "customer": "ada", "total": 12.5})
        await t.send("orders", {"id": 2, "customer": "ada"})  # no total
        await t.send("orders", {"id": 3, "total": 4.0})  # no customer
        await t.app.send("orders", value=None)  # a tombstone: {"customer"} of None fails too
        await t.send("orders", {"id": 4, "customer": "bob", "total": 3.0})
        raw = t.transport.producer()  # bytes as `streams send orders '{oops'` writes them
        await raw.send("orders", b"{oops", b"k")
        await raw.close()
        await t.drain()
        print("revenue:", t.table("revenue"))
        for letter in await t.read("orders-dead-letter"):
            why = dict(letter.headers or [])
            print(
                "dead letter:",
                letter.value,
                why["streams.error.stage"].decode(),
                why["streams.error.exception"].decode(),
            )
        assert len(await t.read("orders-dead-letter")) == 4
        assert t.table("revenue") == {"ada": 12.5, "bob": 3.0}
        assert t.table("billed") == {"ada": 1, "bob": 1}


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        app.main()
    else:
        asyncio.run(demo())
