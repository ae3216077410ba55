"""Word count throughput and latency: one worker, file broker (WAL), in one process.

    python -m benchmarks wordcount --events 500000 --partitions 4 --guarantee exactly_once
    python -m benchmarks wordcount --group-by            # adds the repartition step
    python -m benchmarks wordcount --latency             # p50/p99 at half the measured rate

Prints one JSON line. Throughput: the input is loaded first, then the clock runs from the
worker's first poll until every event is processed and committed. Input is keyed by word
(no repartition) unless --group-by. Latency: events are produced at half the measured maximum
rate while the worker runs; latency = commit visible to a read_committed reader - event
creation time. Targets (issue 3, 2 cores): >= 100,000 events/s exactly-once keyed, >= 50,000
with --group-by, exactly-once within 15% of at-least-once, p99 <= 2 x commit_interval + 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import tempfile
import time
from typing import Any

import streams
from runtime.transport import READ_COMMITTED, connect
from runtime.types import TopicPartition


def build_app(
    partitions: int, group_by: bool, guarantee: str, commit_interval: float, directory: str
) -> streams.App:
    app = streams.App(
        "bench-wordcount",
        broker=f"sqlite:///{directory}/bench.db",
        processing_guarantee=guarantee,
        commit_interval=commit_interval,
        state_dir=f"{directory}/state",
        default_partitions=partitions,
    )
    words = app.topic("words", value_type=str)
    counts = app.table("counts", default=int)
    out = app.topic("word-counts")

    if group_by:

        @app.stream(words, sink=[out])
        async def count(stream: streams.Stream) -> Any:
            async for word in stream.group_by(lambda w: w, name="by-word"):
                counts[word] += 1
                yield {"word": word, "count": counts[word]}

    else:

        @app.stream(words, sink=[out])
        async def count_keyed(stream: streams.Stream) -> Any:
            async for word in stream:
                counts[word] += 1
                yield {"word": word, "count": counts[word]}

    return app


def vocabulary(size: int = 10_000) -> list[str]:
    rng = random.Random(7)
    return [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(size)
    ]


async def load(app: streams.App, events: int, keyed: bool) -> None:
    words = vocabulary()
    rng = random.Random(11)
    topic = app.topics["words"]
    async with connect(app.settings.broker) as transport:
        with contextlib.suppress(streams.StreamsError):  # it may exist
            await transport.create_topic("words", topic.partitions)
        producer = transport.producer(batch_size=5000)
        for i in range(events):
            word = words[int(rng.paretovariate(1.2)) % len(words)]
            producer.produce(
                "words", topic.value.encode(word), topic.key.encode(word) if keyed else None
            )
            if i % 5000 == 4999:
                await producer.flush()
        await producer.close()


async def throughput(args: argparse.Namespace, directory: str) -> dict[str, Any]:
    app = build_app(args.partitions, args.group_by, args.guarantee, args.commit_interval, directory)
    await load(app, args.events, keyed=not args.group_by)
    run = app.testing(broker=app.settings.broker, state_dir=app.settings.state_dir)
    async with run:
        worker = run.worker
        assert worker is not None
        while not worker.consumer.assignment():
            await worker.poll(0.05)
        started = time.perf_counter()
        await run.drain(timeout=600)
        elapsed = time.perf_counter() - started
        assert worker.events_processed >= args.events, worker.events_processed
        total = sum(run.table("counts").values())
    assert total == args.events, (total, args.events)
    return {
        "events": args.events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(args.events / elapsed),
    }


async def latency(args: argparse.Namespace, directory: str, rate: float) -> dict[str, Any]:
    """Produce at `rate` events/s for `seconds`, measure creation -> committed output."""
    app = build_app(args.partitions, args.group_by, args.guarantee, args.commit_interval, directory)
    words = vocabulary()
    topic = app.topics["words"]
    seconds = args.latency_seconds
    latencies: list[float] = []
    stop = asyncio.Event()
    run = app.testing(broker=app.settings.broker, state_dir=app.settings.state_dir)
    async with run:
        worker = run.worker
        assert worker is not None and run.transport is not None

        async def produce() -> None:
            producer = run.transport.producer(linger_ms=2)  # type: ignore[union-attr]
            started = time.perf_counter()
            sent = 0
            while time.perf_counter() - started < seconds:
                due = int((time.perf_counter() - started) * rate)
                for _ in range(due - sent):
                    word = random.choice(words)
                    producer.produce(
                        "words",
                        topic.value.encode(word),
                        None if args.group_by else topic.key.encode(word),
                    )
                sent = due
                await asyncio.sleep(0.005)
            await producer.close()

        async def observe() -> None:
            reader = run.transport.consumer(isolation=READ_COMMITTED)  # type: ignore[union-attr]
            await reader.assign([TopicPartition("word-counts", p) for p in range(args.partitions)])
            while not stop.is_set():
                batch = await reader.getmany(timeout=0.05)
                now = time.time() * 1000
                for records in batch.values():
                    latencies.extend(now - r.timestamp for r in records)
            await reader.close()

        async def process() -> None:
            while not stop.is_set():
                await worker.poll(0.02)

        producer_task = asyncio.ensure_future(produce())
        tasks = [asyncio.ensure_future(observe()), asyncio.ensure_future(process())]
        await producer_task
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "latency_rate_events_per_s": round(rate),
        "latency_samples": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks wordcount")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--guarantee", default="exactly_once", choices=["exactly_once", "at_least_once"]
    )
    parser.add_argument("--group-by", action="store_true")
    parser.add_argument("--commit-interval", type=float, default=0.1)
    parser.add_argument(
        "--latency", action="store_true", help="also measure latency at half the measured rate"
    )
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "wordcount",
        "guarantee": args.guarantee,
        "partitions": args.partitions,
        "group_by": args.group_by,
        "commit_interval": args.commit_interval,
    }
    with tempfile.TemporaryDirectory() as directory:
        result.update(await throughput(args, directory))
    if args.latency:
        with tempfile.TemporaryDirectory() as directory:
            result.update(await latency(args, directory, result["events_per_s"] / 2))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result), flush=True)
