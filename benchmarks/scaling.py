"""Worker processes on one machine: throughput for 1, 2 and 4 workers, each worker's share,
and failover time.

    python -m benchmarks scaling [--events 200000] [--partitions 8]

Runs `streams worker examples.wordcount:app --workers N` (exactly-once, group_by) on a file
broker loaded with the same keyed input each time. The clock starts when every worker holds its
partitions and stops when the group's committed offsets reach the end of its input topics;
events counted are those committed in between. Share: each worker's part of the committed
offsets of the repartition topic (the stateful stage).

Failover: two single-worker commands (no supervisor to restart them, so the survivor must take
over) build a table of --table-keys keys; one is killed with SIGKILL; the figure is the time
from the kill until the survivor has committed past new events of the dead worker's
partitions, with and without a standby replica. It includes the session timeout (the dead
worker is noticed only when it misses it), set here to 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
from runtime.types import TopicPartition

ROOT = Path(__file__).resolve().parent.parent
APP = "wordcount"
REPARTITION = "wordcount-by-word-repartition"


def produce(producer: BatchProducer, words: list[str], sequences: list[int]) -> None:
    """Send `words` keyed as the word-count app encodes keys; `sequences` counts per partition."""
    written = producer.send("words", [(json.dumps(w).encode(), w.encode()) for w in words])
    for partition, count in written.items():
        sequences[partition] += count


def committed(broker: Broker, topic: str, partitions: int) -> dict[TopicPartition, int]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    while True:
        try:
            return broker.committed_offsets(APP, tps)
        except Exception:
            time.sleep(0.01)


def start_workers(
    directory: str, workers: int, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STREAMS_BROKER": f"sqlite:///{directory}/b.db",
        "STREAMS_STATE_DIR": f"{directory}/state",
        **extra_env,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "examples.wordcount:app",
            "--workers",
            str(workers),
            "--loglevel",
            "warning",
        ],
        cwd=directory,
        env=env,
    )


def wait_assigned(broker: Broker, members: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            group = broker.describe_group(APP)
            if (
                len(group.members) == members
                and all(m.assignment for m in group.members)
                and sum(len(m.assignment) for m in group.members)
                == sum(len(m.target) for m in group.members)
            ):
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError("workers did not get their partitions")


def throughput(workers: int, events: int, partitions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(f"{directory}/b.db")
        broker.create_topic("words", partitions)
        producer = BatchProducer(broker)
        sequences = [0] * partitions
        words = [f"w{(i * 7919) % 5000}" for i in range(events)]
        for start in range(0, events, 5000):
            produce(producer, words[start : start + 5000], sequences)
        env = {"STREAMS_DEFAULT_PARTITIONS": str(partitions)}
        supervisor = start_workers(directory, workers, env)
        try:
            wait_assigned(broker, workers)
            before = sum(committed(broker, "words", partitions).values())
            started = time.perf_counter()
            while True:
                done = committed(broker, "words", partitions)
                rep = committed(broker, REPARTITION, partitions)
                ends = [
                    broker.partition_info(REPARTITION, p).last_stable for p in range(partitions)
                ]
                if sum(done.values()) >= events and all(
                    rep.get(TopicPartition(REPARTITION, p), 0) >= ends[p] for p in range(partitions)
                ):
                    break
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            group = broker.describe_group(APP)
            shares = []
            total = sum(rep.values()) or 1
            for member in group.members:
                mine = sum(
                    rep.get(TopicPartition(REPARTITION, p), 0)
                    for t, p in member.assignment
                    if t == REPARTITION
                )
                shares.append(round(mine / total, 3))
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
        broker.close()
    counted = events - before
    return {
        "workers": workers,
        "events": counted,
        "seconds": round(elapsed, 3),
        "events_per_s": round(counted / elapsed),
        "shares": sorted(shares),
    }


def failover(partitions: int, keys: int, standby: int) -> dict[str, Any]:
    """Two workers (no supervisor restarts), a table of `keys` keys; kill one; time until the
    survivor has committed past new events of the dead worker's partitions."""
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(f"{directory}/b.db")
        broker.create_topic("words", partitions)
        producer = BatchProducer(broker)
        sequences = [0] * partitions
        env = {
            "STREAMS_DEFAULT_PARTITIONS": str(partitions),
            "STREAMS_SESSION_TIMEOUT_MS": "1000",
            "STREAMS_TABLE_STANDBY_REPLICAS": str(standby),
        }
        one = start_workers(directory, 1, env)
        wait_assigned(broker, 1)
        two = start_workers(directory, 1, env)
        wait_assigned(broker, 2)
        words = [f"k{i}" for i in range(keys)]
        for start in range(0, keys, 10_000):
            produce(producer, words[start : start + 10_000], sequences)
        while sum(committed(broker, "words", partitions).values()) < keys:
            time.sleep(0.1)
        time.sleep(3.0)  # standbys catch up
        group = broker.describe_group(APP)
        victim = next(m for m in group.members if m.client_id.endswith("-1"))
        victim_partitions = {p for t, p in victim.assignment if t == "words"}
        child = int(Path(f"/proc/{two.pid}/task/{two.pid}/children").read_text().split()[0])
        two.send_signal(signal.SIGSTOP)  # its supervisor must not restart it
        os.kill(child, signal.SIGKILL)
        killed = time.perf_counter()
        produce(producer, [f"new{i}" for i in range(2000)], sequences)
        targets = {TopicPartition("words", p): sequences[p] for p in victim_partitions}
        while True:
            done = committed(broker, "words", partitions)
            if all(done.get(tp, 0) >= end for tp, end in targets.items()):
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - killed
        one.send_signal(signal.SIGTERM)
        one.wait(timeout=120)
        two.kill()
        two.wait()
        broker.close()
    return {
        "figure": "failover",
        "table_keys": keys,
        "standby_replicas": standby,
        "failover_s": round(seconds, 3),
        "session_timeout_ms": 1000,
    }


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaling")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--table-keys", type=int, default=1_000_000)
    parser.add_argument("--only-failover", action="store_true")
    args = parser.parse_args(argv)
    if not args.only_failover:
        results = [throughput(n, args.events, args.partitions) for n in (1, 2, 4)]
        base = results[0]["events_per_s"]
        for result in results:
            print(
                json.dumps(
                    {
                        "benchmark": "scaling",
                        **result,
                        "speedup": round(result["events_per_s"] / base, 2),
                    }
                ),
                flush=True,
            )
    for standby in (0, 1):
        result = failover(args.partitions, args.table_keys, standby)
        print(json.dumps({"benchmark": "scaling", **result}), flush=True)
