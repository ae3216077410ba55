"""Table state: a table of many distinct keys, store-backed (the default) and in memory.

    python -m benchmarks state                          # 1,000,000 distinct keys vs 100,000
    python -m benchmarks state --keys 10000000 --small 100000

One worker, exactly-once, file broker, 4 partitions. The input is `--keys` events, event i
keyed by the int i (`--keys` distinct keys, each counted once: `counts[key] += 1`), and the
same number of events over `--small` keys. Each run is a fresh process (its peak RSS is its
own); the input is loaded by another one beforehand. Per backend and key count:

- rate: events per second from the first poll to drained (exactly-once commits included);
- peak_rss_mb: the worker process's peak resident memory while counting;
- restart_s: a second worker on the same store and broker, from start() until every
  partition is restored and the first poll returns (ready to process);
- restart_peak_rss_mb: its peak resident memory after that.

Prints one JSON line per run, then a summary line with the big/small rate ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import streams
from runtime.transport import connect
from streams.codecs import get_codec

PARTITIONS = 4


def build_app(directory: str, backend: str, cache_size: int) -> streams.App:
    app = streams.App(
        "bench-state",
        broker=f"sqlite:///{directory}/bench.db",
        commit_interval=0.1,
        state_dir=f"{directory}/state",
        default_partitions=PARTITIONS,
        table_cache_size=cache_size,
    )
    events = app.topic("events", key_type="json", value_type="json")
    counts = app.table("counts", default=int, key_type="json", store=backend)

    @app.stream(events)
    async def count(stream: streams.Stream) -> Any:
        async for key in stream:
            counts[key] += 1

    return app


async def load(directory: str, events: int, keys: int) -> None:
    codec = get_codec("json")
    async with connect(f"sqlite:///{directory}/bench.db") as transport:
        with contextlib.suppress(streams.StreamsError):
            await transport.create_topic("events", PARTITIONS)
        producer = transport.producer(batch_size=5000)
        for i in range(events):
            key = codec.encode(i % keys)
            producer.produce("events", key, key)
            if i % 20_000 == 19_999:
                await producer.flush()
        await producer.close()


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def run(directory: str, backend: str, events: int, cache_size: int) -> dict[str, Any]:
    """Count the input; the worker stops with its store current."""
    app = build_app(directory, backend, cache_size)
    settings = {"broker": app.settings.broker, "state_dir": app.settings.state_dir}
    async with app.testing(**settings) as t:
        worker = t.worker
        assert worker is not None
        while not worker.consumer.assignment():
            await worker.poll(0.05)
        started = time.perf_counter()
        await t.drain(timeout=3600)
        elapsed = time.perf_counter() - started
        assert worker.events_processed >= events, worker.events_processed
    return {"rate": round(events / elapsed), "peak_rss_mb": peak_rss_mb()}


async def restart(directory: str, backend: str, cache_size: int) -> dict[str, Any]:
    """A new worker process on the same store: ready when every partition is restored."""
    restart = build_app(directory, backend, cache_size)
    settings = {"broker": restart.settings.broker, "state_dir": restart.settings.state_dir}
    started = time.perf_counter()
    async with restart.testing(**settings) as t:
        worker = t.worker
        assert worker is not None
        while len(worker._owned) < PARTITIONS:
            await worker.poll(0.01)
        ready = time.perf_counter() - started
        replayed = worker.restored_records
    return {
        "restart_s": round(ready, 3),
        "restart_replayed": replayed,
        "restart_peak_rss_mb": peak_rss_mb(),
    }


def child(step: str, directory: str, backend: str, events: int, cache: int) -> Any:
    command = [sys.executable, "-m", "benchmarks.state", step, directory, backend]
    done = subprocess.run(
        [*command, str(events), str(cache)], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks state")
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct keys, big run")
    parser.add_argument("--small", type=int, default=100_000, help="distinct keys, small run")
    parser.add_argument("--cache", type=int, default=100_000, help="table_cache_size")
    parser.add_argument("--backends", default="local,memory")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for backend in args.backends.split(","):
        for keys in (args.keys, args.small):
            with tempfile.TemporaryDirectory() as directory:
                await load(directory, args.keys, keys)
                figures = {"backend": backend, "keys": keys, "events": args.keys}
                for step in ("count", "restart"):
                    figures.update(child(step, directory, backend, args.keys, args.cache))
            results[f"{backend}-{keys}"] = figures
            print(json.dumps(figures), flush=True)
    summary = {}
    for backend in args.backends.split(","):
        big, small = results[f"{backend}-{args.keys}"], results[f"{backend}-{args.small}"]
        summary[f"{backend}_rate_ratio_big_to_small"] = round(big["rate"] / small["rate"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":  # one step in its own process: step directory backend events cache
    step, directory, backend, events, cache = sys.argv[1:6]
    if step == "count":
        print(json.dumps(asyncio.run(run(directory, backend, int(events), int(cache)))))
    else:
        print(json.dumps(asyncio.run(restart(directory, backend, int(cache)))))
