"""on_error on a Kafka-protocol broker: a failing agent's cycle is aborted, the consumer
rewound (librdkafka's own consumer does not rewind after an abort: the worker seeks) and the
cycle redone without the record, which goes to the dead-letter topic in the transaction."""

from __future__ import annotations

from typing import Any

import orjson

import streams
from runtime.testing import SESSION_TIMEOUT_MS, unique


async def test_dead_letter_on_kafka(kafka_url: str) -> None:
    app = streams.App(unique("shop"), broker=kafka_url, session_timeout_ms=SESSION_TIMEOUT_MS)
    orders = app.topic("orders-" + app.id, partitions=1)
    shares = app.topic("shares-" + app.id, partitions=1)
    seen = app.table("seen", default=int, partitions=1)

    @app.stream(orders, sink=[shares])
    async def share(stream: streams.Stream) -> Any:
        async for key, qty in stream.items():
            seen[key] += 1
            yield {"step": 1}
            yield {"share": 12 // qty}

    quantities = [1, 0, 2, 3, 0, 4]
    async with app.testing(broker=kafka_url, on_error="dead_letter", max_poll_records=2) as t:
        for qty in quantities:
            await t.send(orders, qty, key="k")
        await t.drain(timeout=60)
        outputs = [e.value for e in await t.read(shares)]
        assert outputs == [x for q in quantities if q for x in ({"step": 1}, {"share": 12 // q})]
        assert t.table("seen") == {"k": 4}
        dead = await t.read(f"{app.id}-dead-letter")
        assert [orjson.loads(e.value) for e in dead] == [0, 0]
        assert [dict(e.headers or [])["streams.error.offset"] for e in dead] == [b"1", b"4"]
