"""The embedded broker in one minute: transactions, fencing and read_committed.

    python examples/broker_demo.py

Two processes' worth of clients share one SQLite file: a transactional producer commits one
transaction and aborts another; a zombie instance is fenced by its successor; a read_committed
consumer group sees exactly the committed records, a read_uncommitted reader sees the aborted
ones too. (The word-count example replaces this demo when the stream API lands.)
"""

from __future__ import annotations

import asyncio
import tempfile

from runtime.errors import ProducerFencedError
from runtime.transport import READ_COMMITTED, READ_UNCOMMITTED, Transport, connect
from runtime.types import TopicPartition


async def read_all(broker: Transport, isolation: str, group: str | None = None) -> list[str]:
    consumer = broker.consumer(group, isolation=isolation)
    if group:
        await consumer.subscribe(["orders"])
    else:
        await consumer.assign([TopicPartition("orders", p) for p in range(3)])
    values: list[str] = []
    while batch := await consumer.getmany(timeout=0.3):
        values += [(r.value or b"").decode() for records in batch.values() for r in records]
    if group:
        await consumer.commit()
    await consumer.close()
    return sorted(values)


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/demo.db"
        async with connect(url) as broker:
            await broker.create_topic("orders", partitions=3)

            producer = broker.producer(transactional_id="checkout")
            await producer.init_transactions()
            await producer.begin_transaction()
            for n in range(5):
                producer.produce("orders", f"order-{n}".encode(), key=f"customer-{n}".encode())
            await producer.commit_transaction()
            print("committed a transaction of 5 orders")

            await producer.begin_transaction()
            for n in range(5, 8):
                producer.produce("orders", f"order-{n}".encode(), key=f"customer-{n}".encode())
            await producer.flush()  # written to the log, flagged transactional...
            await producer.abort_transaction()  # ...then aborted: ABORT markers
            print("aborted a transaction of 3 orders")

            await producer.begin_transaction()
            producer.produce("orders", b"order-zombie", key=b"customer-z")
            await producer.flush()
            successor = broker.producer(transactional_id="checkout")
            await successor.init_transactions()  # fences the first instance
            try:
                await producer.commit_transaction()
            except ProducerFencedError as exc:
                print(f"zombie producer fenced: {exc}")

            committed = await read_all(broker, READ_COMMITTED, group="demo")
            everything = await read_all(broker, READ_UNCOMMITTED)
            print(f"read_committed sees {len(committed)} records: {committed}")
            print(f"read_uncommitted sees {len(everything)} records (aborted ones included)")
            assert committed == [f"order-{n}" for n in range(5)]
            for p in range(3):
                info = await broker.partition_info("orders", p)
                print(
                    f"orders[{p}]: high watermark {info.high_watermark} "
                    f"(records + COMMIT/ABORT markers), last stable {info.last_stable}"
                )


if __name__ == "__main__":
    asyncio.run(main())
