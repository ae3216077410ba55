"""Windowed counts: throughput of tumbling and hopping windows, and memory over a long run.

    python -m benchmarks windows                       # 500,000 events, 10,000 keys
    python -m benchmarks windows --events 200000 --periods 10

One worker, exactly-once, file broker (WAL), 4 partitions, keyed input (no repartition). Event
times advance 1 ms per event (--spacing-ms; 500,000 events span ~8 minutes of event time,
about 6 events per key per 60 s window). On the same input, --repeat times each, interleaved
(medians printed): the word count of examples/wordcount.py on a plain table (`counts[key] += 1`,
then a count update sent per event: the rate the target is relative to), the same with a
tumbling 60 s table (the update sent is `counts[key].current()`) and with a hopping 60 s / 10 s
table; and, to show the cost of windows alone, plain and tumbling with the table updates only
(`*_table`). Target (issue 5): tumbling >= 70% of the plain-table word count rate.

Memory: a tumbling 60 s table with expires=120 s then counts `--periods` x 10 expiry periods
of events; the table's live windows and the process's resident memory are printed after each
tenth. Flat means the last tenth is no larger than the second.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from typing import Any

import streams
from runtime.transport import connect
from streams.codecs import get_codec

KEYS = 10_000
SPACING_MS = 1  # event time between consecutive events (--spacing-ms)


def build_app(kind: str, directory: str, expires: float | None = None, run: int = 0) -> streams.App:
    """`kind`: plain, tumbling or hopping: the word count of examples/wordcount.py (a count
    update sent per event); with "-table" appended, the table updates alone."""
    outputs = not kind.endswith("-table")
    kind = kind.removesuffix("-table")
    app = streams.App(
        f"bench-windows-{kind}-{outputs}-{run}",
        broker=f"sqlite:///{directory}/bench.db",
        commit_interval=0.1,
        state_dir=f"{directory}/state-{kind}-{outputs}-{run}",
        default_partitions=4,
    )
    events = app.topic("events", value_type=str)
    out = app.topic("counts-out")
    counts = app.table("counts", default=int)
    if kind == "tumbling":
        counts.tumbling(60, expires=expires)
    elif kind == "hopping":
        counts.hopping(60, 10, expires=expires)

    if not outputs:

        @app.stream(events)
        async def count_only(stream: streams.Stream) -> Any:
            async for key in stream:
                counts[key] += 1

    elif kind == "plain":

        @app.stream(events, sink=[out])
        async def count(stream: streams.Stream) -> Any:
            async for key in stream:
                counts[key] += 1
                yield {"word": key, "count": counts[key]}

    else:

        @app.stream(events, sink=[out])
        async def count_windowed(stream: streams.Stream) -> Any:
            async for key in stream:
                counts[key] += 1
                yield {"word": key, "count": counts[key].current()}

    return app


async def load(url: str, events: int, start_ms: int = 0, spacing_ms: int = SPACING_MS) -> None:
    rng = random.Random(11)
    keys = [f"key-{i}" for i in range(KEYS)]
    key_codec, value_codec = get_codec(None), get_codec(str)
    async with connect(url) as transport:
        with contextlib.suppress(streams.StreamsError):  # it may exist
            await transport.create_topic("events", 4)
        producer = transport.producer(batch_size=5000)
        for i in range(events):
            key = keys[rng.randrange(KEYS)]
            producer.produce(
                "events",
                value_codec.encode(key),
                key_codec.encode(key),
                timestamp=start_ms + i * spacing_ms,
            )
            if i % 5000 == 4999:
                await producer.flush()
        await producer.close()


async def throughput(kind: str, events: int, directory: str, run_number: int = 0) -> float:
    app = build_app(kind, directory, run=run_number)
    run = app.testing(broker=app.settings.broker, state_dir=app.settings.state_dir)
    async with run:
        worker = run.worker
        assert worker is not None
        while not worker.consumer.assignment():
            await worker.poll(0.05)
        started = time.perf_counter()
        await run.drain(timeout=900)
        elapsed = time.perf_counter() - started
        assert worker.events_processed >= events, worker.events_processed
    return events / elapsed


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * 4096 / 2**20, 1)


async def memory(events_per_period: int, periods: int, directory: str) -> dict[str, Any]:
    """Count `periods` expiry periods in tenths; sample live windows and RSS after each."""
    app = build_app("tumbling-table", directory, expires=120)
    url = app.settings.broker
    tenth = periods * events_per_period // 10
    windows, rss = [], []
    run = app.testing(broker=url, state_dir=app.settings.state_dir)
    async with run:
        for i in range(10):
            await load(url, tenth, start_ms=i * tenth * SPACING_MS)
            await run.drain(timeout=900)
            assert run.worker is not None
            state = run.worker.tables["counts"]
            windows.append(sum(len(rows) for rows in state.partitions.values()))
            rss.append(rss_mb())
    return {"live_rows_per_tenth": windows, "rss_mb_per_tenth": rss}


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks windows")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--periods", type=int, default=10, help="expiry periods in the memory run")
    parser.add_argument("--spacing-ms", type=int, default=SPACING_MS)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (medians)")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "windows",
        "events": args.events,
        "keys": KEYS,
        "event_spacing_ms": args.spacing_ms,
    }
    with tempfile.TemporaryDirectory() as directory:
        await load(f"sqlite:///{directory}/bench.db", args.events, spacing_ms=args.spacing_ms)
        kinds = ("plain", "tumbling", "hopping", "plain-table", "tumbling-table")
        rates: dict[str, list[float]] = {kind: [] for kind in kinds}
        for run_number in range(args.repeat):  # interleaved, so drift hits every kind alike
            for kind, measured in rates.items():
                measured.append(await throughput(kind, args.events, directory, run_number))
        for kind, measured in rates.items():
            name = kind.replace("-", "_")
            result[f"{name}_events_per_s"] = round(statistics.median(measured))
            result[f"{name}_runs"] = [round(r) for r in measured]
    result["tumbling_vs_plain"] = round(
        result["tumbling_events_per_s"] / result["plain_events_per_s"], 2
    )
    result["tumbling_vs_plain_table_only"] = round(
        result["tumbling_table_events_per_s"] / result["plain_table_events_per_s"], 2
    )
    if not args.skip_memory:
        # an expiry period is 120 s of event time
        with tempfile.TemporaryDirectory() as directory:
            result.update(await memory(120_000 // SPACING_MS, args.periods, directory))
    print(json.dumps(result), flush=True)
