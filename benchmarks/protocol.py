"""The Kafka wire protocol's cost: librdkafka against `streams broker serve`, beside the
embedded transport on the same machine in the same run, and beside Tansu.

    python -m benchmarks protocol [--records 200000] [--value-bytes 100] [--no-tansu]
                                  [--wordcount-events 200000]

Prints one JSON line per figure, then a summary line with every figure side by side:
- `produce`: keyed records, idempotent, acks=all. Embedded: the transport's batched producer
  (flushed every --batch records) on an SQLite file. streams/tansu: a confluent-kafka
  (librdkafka) producer, batched by librdkafka (linger.ms=5), into the broker over loopback,
  after one untimed record (connections and the producer id).
- `read_committed_fetch`: every record from the beginning of the 4 partitions. Embedded: the
  transport's consumer (assign, getmany). streams/tansu: a librdkafka consumer
  (isolation.level=read_committed, assign, consume in batches), timed from its first batch
  (`startup_s`, the time to that batch, is librdkafka's own ~0.45 s on either broker).
- `wordcount`: the word-count benchmark's throughput (benchmarks/wordcount.py, keyed,
  exactly-once, one worker in this process) on the embedded broker's file, then with
  `--broker kafka://127.0.0.1:PORT` on each server.
`broker_cpu_s` is the CPU time the broker process spent during the figure (the 2 cores here
are shared by the broker and this client, whose Python loop over librdkafka costs about as much
as Tansu's whole figure). The streams figures carry `of_embedded`: their ratio to the embedded
figure of this run (targets, issue 14: produce and fetch >= 0.5). Brokers run as child
processes started here (runtime/testing), each with a fresh store; the client runs in this
process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.testing import KafkaBroker, ServedBroker, TansuBroker
from runtime.transport import READ_COMMITTED, connect
from runtime.types import TopicPartition

TOPIC = "bench"
PARTITIONS = 4


SUMMARY: dict[str, dict[str, int]] = {}  # figure -> broker -> records/s, printed last


def emit(figure: str, broker: str, records: int, seconds: float, **extra: Any) -> float:
    rate = records / seconds
    SUMMARY.setdefault(figure, {})[broker] = round(rate)
    print(
        json.dumps(
            {
                "benchmark": "protocol",
                "figure": figure,
                "broker": broker,
                "records": records,
                "seconds": round(seconds, 3),
                "records_per_s": round(rate),
                **extra,
            }
        ),
        flush=True,
    )
    return rate


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a broker process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def key_of(i: int) -> bytes:
    return b"key-%d" % (i % 10_000)


async def embedded(args: argparse.Namespace, value: bytes) -> dict[str, float]:
    """The baseline: the transport straight on an SQLite file (no protocol, no socket)."""
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        async with connect(f"sqlite:///{directory}/bench.db") as broker:
            await broker.create_topic(TOPIC, PARTITIONS)
            producer = broker.producer(batch_size=args.batch)
            started = time.perf_counter()
            for i in range(args.records):
                producer.produce(TOPIC, value, key=key_of(i))
                if i % args.batch == args.batch - 1:
                    await producer.flush()
            await producer.flush()
            seconds = time.perf_counter() - started
            rates["produce"] = emit("produce", "embedded", args.records, seconds)
            await producer.close()

            consumer = broker.consumer(isolation=READ_COMMITTED)
            await consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
            total = 0
            started = time.perf_counter()
            while total < args.records:
                batch = await consumer.getmany(timeout=1.0, max_records=args.batch)
                if not batch:
                    break
                total += sum(len(records) for records in batch.values())
            seconds = time.perf_counter() - started
            rates["read_committed_fetch"] = emit("read_committed_fetch", "embedded", total, seconds)
            await consumer.close()
    return rates


def over_the_wire(
    name: str, broker: KafkaBroker, args: argparse.Namespace, value: bytes, base: dict[str, float]
) -> None:
    """librdkafka's producer then its read_committed consumer against `broker`."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer
    from confluent_kafka import TopicPartition as KafkaTopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    def ratio(figure: str, rate: float) -> dict[str, float]:
        return {"of_embedded": round(rate / base[figure], 2)} if name == "streams" else {}

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    created = admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1, config={"retention.ms": "-1"})])
    created[TOPIC].result(timeout=30)

    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": args.batch,
            "partitioner": "murmur2_random",
        }
    )
    # Warm-up, not timed: connections, the producer id (InitProducerId), the topic's metadata.
    producer.produce(TOPIC, value, key_of(0), on_delivery=delivered)
    producer.flush(30)
    cpu = cpu_seconds(broker.process.pid)
    started = time.perf_counter()
    for i in range(args.records):
        while True:
            try:
                producer.produce(TOPIC, value, key_of(i), on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                producer.poll(0.01)
        if i % args.batch == 0:
            producer.poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - started
    if left or failures:
        raise RuntimeError(f"{name}: {left} records undelivered, errors: {failures[:3]}")
    emit(
        "produce",
        name,
        args.records,
        seconds,
        client="librdkafka",
        broker_cpu_s=round(cpu_seconds(broker.process.pid) - cpu, 2),
        **ratio("produce", args.records / seconds),
    )

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "bench-unused",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([KafkaTopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    # The clock starts at the first batch: librdkafka spends ~0.45 s before its first fetch
    # (offset lookup after the coordinator query) on any broker, Tansu as well as ours.
    expected = args.records + 1  # and the warm-up record
    assigned = time.perf_counter()
    first: list[Any] = []
    while not first and time.perf_counter() < assigned + 60:
        first = consumer.consume(num_messages=args.batch, timeout=1.0)
    startup = time.perf_counter() - assigned
    total = 0
    cpu = cpu_seconds(broker.process.pid)
    started = time.perf_counter()
    deadline = started + 300
    while len(first) + total < expected and time.perf_counter() < deadline:
        wanted = min(args.batch, expected - len(first) - total)  # consume() waits to fill it
        for message in consumer.consume(num_messages=wanted, timeout=1.0):
            if message.error() is None:
                total += 1
    seconds = time.perf_counter() - started
    consumer.close()
    emit(
        "read_committed_fetch",
        name,
        total,
        seconds,
        client="librdkafka",
        complete=len(first) + total == expected,
        startup_s=round(startup, 3),
        broker_cpu_s=round(cpu_seconds(broker.process.pid) - cpu, 2),
        **ratio("read_committed_fetch", total / seconds),
    )


async def wordcount(name: str, broker: KafkaBroker | None, events: int) -> None:
    """The word-count benchmark's throughput on `broker` (None: the embedded broker's file)."""
    from benchmarks import wordcount as bench

    url = None
    if broker is not None:  # Tansu mishandles static members after a kill (docs/transport.md)
        url = broker.url + ("?static_membership=false" if name == "tansu" else "")
    args = argparse.Namespace(
        events=events,
        partitions=PARTITIONS,
        group_by=False,
        guarantee="exactly_once",
        commit_interval=0.1,
        broker_url=url,
    )
    with tempfile.TemporaryDirectory() as directory:
        result = await bench.throughput(args, directory)
    emit("wordcount", name, result["events"], result["seconds"], guarantee="exactly_once")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks protocol")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--wordcount-events", type=int, default=200_000, help="0: no word count")
    parser.add_argument("--no-tansu", action="store_true", help="our server only")
    args = parser.parse_args(argv)
    value = os.urandom(args.value_bytes // 2).hex().encode()[: args.value_bytes]

    base = await embedded(args, value)
    if args.wordcount_events:
        await wordcount("embedded", None, args.wordcount_events)
    starters = [("streams", ServedBroker.start)]
    if not args.no_tansu:
        starters.append(("tansu", TansuBroker.start))
    for name, start in starters:
        with tempfile.TemporaryDirectory() as directory, start(Path(directory)) as broker:
            over_the_wire(name, broker, args, value, base)
            if args.wordcount_events:
                await wordcount(name, broker, args.wordcount_events)
    # The figures side by side: records (events) per second, per figure and broker.
    print(json.dumps({"benchmark": "protocol", "summary": SUMMARY}), flush=True)
