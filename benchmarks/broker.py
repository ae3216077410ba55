"""Broker throughput through the async transport, on a file database in WAL mode.

    python -m benchmarks broker [--records 500000] [--batch 1000] [--value-bytes 100]
    python -m benchmarks broker --vs-floor      # and the floor, 3 interleaved runs, ratios
    python -m benchmarks broker --instructions  # instruction counts under callgrind (A/B)

Prints one JSON line per figure. `produce_many` and `transactional_produce_many` write the
same records as `produce` and `transactional_produce`, given as columns (one
`Producer.produce_many` call of `--batch` records) to a topic of their own, so the fetch reads
what it always read. With --vs-floor each figure is the median of `--runs`
interleaved runs, printed with its ratio to the floor measured in the same process
(`benchmarks/floor.py`: produce and transactional produce against (a), fetch against (b)).
Targets (issue 2, 2 cores): batched produce >= 250,000
records/s; read_committed fetch >= 800,000 records/s; transactional produce (1,000 records per
transaction) >= 150,000 records/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from statistics import median

from benchmarks import floor, instructions
from runtime.transport import READ_COMMITTED, connect
from runtime.types import TopicPartition

TOPIC = "bench"
COLUMNS_TOPIC = "bench-columns"
PARTITIONS = 4


def emit(figure: str, records: int, seconds: float, **extra: object) -> None:
    print(
        json.dumps(
            {
                "benchmark": "broker",
                "figure": figure,
                "records": records,
                "seconds": round(seconds, 3),
                "records_per_s": round(records / seconds),
                **extra,
            }
        ),
        flush=True,
    )


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks broker")
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--synchronous", default="normal", choices=["normal", "full"])
    parser.add_argument("--vs-floor", action="store_true", help="ratios to the floor")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    args = parser.parse_args(argv)
    if args.instructions:
        instructions.report("broker", argv, 20_000 if args.records == 500_000 else args.records)
        return
    if not args.vs_floor:
        await run(args, emit)
        return
    samples: dict[str, list[float]] = {}
    floors: dict[str, list[float]] = {}

    def collect(figure: str, records: int, seconds: float, **extra: object) -> None:
        samples.setdefault(figure, []).append(records / seconds)

    for _ in range(args.runs):
        for name, rate in floor.measure_broker_floor(
            args.records, args.batch, args.value_bytes
        ).items():
            floors.setdefault(name, []).append(rate)
        await run(args, collect)
    matching = {
        "produce": "append",
        "produce_many": "append",
        "transactional_produce_many": "append",
        "transactional_produce": "append",
    }
    for figure, rates in samples.items():
        name = matching.get(figure, "read")
        print(
            floor.ratio_line("broker", figure, median(rates), name, median(floors[name])),
            flush=True,
        )


async def run(args: argparse.Namespace, emit: Callable[..., None]) -> None:
    value = os.urandom(args.value_bytes // 2).hex().encode()[: args.value_bytes]
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/bench.db?synchronous={args.synchronous}"
        async with connect(url) as broker:
            await broker.create_topic(TOPIC, PARTITIONS)
            settings = {
                "synchronous": args.synchronous,
                "batch": args.batch,
                "value_bytes": args.value_bytes,
            }

            # 1. Batched idempotent produce: keyed records, flushed every `batch` records.
            producer = broker.producer(batch_size=args.batch)
            started = time.perf_counter()
            for i in range(args.records):
                producer.produce(TOPIC, value, key=b"key-%d" % (i % 10_000))
                if i % args.batch == args.batch - 1:
                    await producer.flush()
            await producer.flush()
            emit("produce", args.records, time.perf_counter() - started, **settings)

            # 2. Transactional produce: one transaction per `batch` records.
            txn = broker.producer(transactional_id="bench-txn", batch_size=args.batch)
            await txn.init_transactions()
            started = time.perf_counter()
            for start in range(0, args.records, args.batch):
                await txn.begin_transaction()
                for i in range(start, min(start + args.batch, args.records)):
                    txn.produce(TOPIC, value, key=b"key-%d" % (i % 10_000))
                await txn.commit_transaction()
            emit(
                "transactional_produce",
                args.records,
                time.perf_counter() - started,
                records_per_transaction=args.batch,
                **settings,
            )

            # 3. read_committed fetch of everything written (2 x records, with markers).
            consumer = broker.consumer(isolation=READ_COMMITTED)
            await consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
            total = 0
            started = time.perf_counter()
            while total < 2 * args.records:
                batch = await consumer.getmany(timeout=1.0, max_records=args.batch)
                if not batch:
                    break
                total += sum(len(records) for records in batch.values())
            emit(
                "read_committed_fetch",
                total,
                time.perf_counter() - started,
                max_records=args.batch,
                **settings,
            )
            await consumer.close()
            await producer.close()
            await txn.close()

            # 4. The records of 1 as columns: produce_many() of `batch` records, then a flush
            # (last, to a topic of its own: the figures above measure what they always did).
            await broker.create_topic(COLUMNS_TOPIC, PARTITIONS)
            values = [value] * args.batch
            columns = broker.producer(batch_size=args.batch)
            started = time.perf_counter()
            for start in range(0, args.records, args.batch):
                count = min(args.batch, args.records - start)
                keys = [b"key-%d" % (i % 10_000) for i in range(start, start + count)]
                columns.produce_many(COLUMNS_TOPIC, values[:count], keys)
                await columns.flush()
            emit("produce_many", args.records, time.perf_counter() - started, **settings)
            await columns.close()

            # 5. The records of 2 as columns: one produce_many() a transaction.
            txn_columns = broker.producer(
                transactional_id="bench-txn-columns", batch_size=args.batch
            )
            await txn_columns.init_transactions()
            started = time.perf_counter()
            for start in range(0, args.records, args.batch):
                count = min(args.batch, args.records - start)
                keys = [b"key-%d" % (i % 10_000) for i in range(start, start + count)]
                await txn_columns.begin_transaction()
                txn_columns.produce_many(COLUMNS_TOPIC, values[:count], keys)
                await txn_columns.commit_transaction()
            emit(
                "transactional_produce_many",
                args.records,
                time.perf_counter() - started,
                records_per_transaction=args.batch,
                **settings,
            )
            await txn_columns.close()
