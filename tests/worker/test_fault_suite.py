"""The fault suite: word count under repeated `kill -9` of random worker processes.

`streams worker examples.wordcount:app --workers 3` runs while 100,000 keyed events arrive over
several seconds; random workers are killed with SIGKILL at random moments (at least 10 kills,
some aimed at a worker that was just restarted and is restoring, some while the group is
rebalancing after another kill); the supervisor restarts them. Once every event is processed,
the committed outputs (read_committed) must hold, for every word w, the count updates
1..freq(w) exactly once each and in order, and the table must equal the true frequencies.
Under at-least-once the same run must show duplicates, so the check can fail.

The seed is fixed in one run and random in another; a failing run prints its seed, and
STREAMS_FAULT_SEED=<n> replays it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from runtime.broker import READ_COMMITTED, Broker
from runtime.broker.producer import BatchProducer
from runtime.types import TopicPartition
from tests.fault_helpers import (
    assert_exactly_once,
    children,
    fault_seed,
    stop_supervisor,
    table_from_changelog,
    worker_command,
    worker_env,
)

EVENTS = 100_000
PARTITIONS = 4
WORKERS = 3
MIN_KILLS = 10
FIXED_SEED = 20261121


def load(db: str, rng: random.Random, seconds: float, done: threading.Event) -> list[str]:
    """Produce EVENTS keyed words over about `seconds`; returns them."""
    vocabulary = [f"w{i}" for i in range(500)]
    words = [rng.choice(vocabulary) for _ in range(EVENTS)]
    broker = Broker(db)
    producer = BatchProducer(broker)
    chunk = 1000
    pause = seconds / (EVENTS / chunk)

    def produce() -> None:
        for start in range(0, EVENTS, chunk):
            chunk_words = words[start : start + chunk]
            producer.send("words", [(json.dumps(w).encode(), w.encode()) for w in chunk_words])
            time.sleep(pause)
        broker.close()
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    return words


def committed_lag(broker: Broker) -> int:
    """Records not yet consumed and committed by the app's group, over its input topics."""
    lag = 0
    for topic in ("words", "wordcount-by-word-repartition"):
        try:
            broker.describe_topic(topic)
        except Exception:
            return -1
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        try:
            committed = broker.committed_offsets("wordcount", tps)
        except Exception:
            return -1  # a transaction holds offsets: not settled
        for tp in tps:
            info = broker.partition_info(tp.topic, tp.partition)
            lag += info.last_stable - committed.get(tp, 0)
    return lag


def read_all(broker: Broker, topic: str) -> list:  # type: ignore[type-arg]
    records = []
    for p in range(PARTITIONS):
        tp = TopicPartition(topic, p)
        offset = broker.partition_info(topic, p).log_start
        end = broker.partition_info(topic, p).last_stable
        while offset < end:
            result = broker.fetch([(tp, offset)], max_records=10_000, isolation=READ_COMMITTED)[tp]
            records.extend(result.records)
            offset = result.next_offset
    return records


def churn(
    command: list[str], cwd: Path, env: dict[str, str], rng: random.Random, stop: threading.Event
) -> None:
    """Start an extra worker command, let it take partitions (a real rebalance), then stop it
    gracefully (its partitions move back) or kill it with its supervisor (its session must
    expire); again and again until `stop`."""
    while not stop.is_set():
        extra = subprocess.Popen(command, cwd=cwd, env=env)
        stop.wait(rng.uniform(1.0, 2.5))
        if rng.random() < 0.5:
            extra.send_signal(signal.SIGTERM)
            try:
                extra.wait(timeout=60)
            except subprocess.TimeoutExpired:
                extra.kill()
        else:
            for pid in children(extra.pid):
                os.kill(pid, signal.SIGKILL)
            extra.kill()
        extra.wait()
        stop.wait(rng.uniform(0.2, 1.0))


def run_suite(
    tmp_path: Path, guarantee: str, seed: int, with_churn: bool = False, **settings: str
) -> tuple[list[str], list, dict]:  # type: ignore[type-arg]
    rng = random.Random(seed)
    db = str(tmp_path / "broker.db")
    broker = Broker(db)
    broker.create_topic("words", PARTITIONS)
    env = worker_env(f"sqlite:///{db}", tmp_path, processing_guarantee=guarantee, **settings)
    supervisor = subprocess.Popen(worker_command(WORKERS), cwd=tmp_path, env=env)
    kills = 0
    churning = threading.Event()
    churner = None
    try:
        loaded = threading.Event()
        words = load(db, rng, seconds=12.0, done=loaded)
        if with_churn:
            command = worker_command(1)
            churner = threading.Thread(
                target=churn,
                args=(command, tmp_path, env, random.Random(seed + 1), churning),
                daemon=True,
            )
            churner.start()
        deadline = time.monotonic() + 120
        while (kills < MIN_KILLS or not loaded.is_set()) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 1.2))
            pids = children(supervisor.pid)
            if not pids:
                continue
            victim = rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            kills += 1
            if rng.random() < 0.4:  # kill its successor while it restores
                time.sleep(rng.uniform(0.3, 0.6))
                fresh = [p for p in children(supervisor.pid) if p not in pids]
                if fresh:
                    os.kill(fresh[0], signal.SIGKILL)
                    kills += 1
        assert kills >= MIN_KILLS and loaded.is_set(), (kills, loaded.is_set())
        churning.set()
        if churner is not None:
            churner.join(timeout=120)
        settle = time.monotonic() + 120
        while committed_lag(broker) != 0:
            assert time.monotonic() < settle, f"lag did not reach 0 (seed {seed})"
            assert supervisor.poll() is None, "the supervisor died"
            time.sleep(0.5)
    finally:
        churning.set()
        code = stop_supervisor(supervisor)
    assert code == 0, f"supervisor exited with {code}"
    outputs = read_all(broker, "word-counts")
    table = table_from_changelog(read_all(broker, "wordcount-counts-changelog"))
    broker.close()
    return words, outputs, table


@pytest.mark.slow
@pytest.mark.parametrize("seed", [FIXED_SEED, None], ids=["fixed-seed", "random-seed"])
def test_exactly_once_under_repeated_kill_9(tmp_path: Path, seed: int | None) -> None:
    seed = fault_seed(seed)
    words, outputs, table = run_suite(tmp_path, "exactly_once", seed)
    assert_exactly_once(words, outputs, table, seed, EVENTS)


@pytest.mark.slow
def test_exactly_once_under_repeated_kill_9_with_a_cache_far_smaller_than_the_table(
    tmp_path: Path,
) -> None:
    """The same with 8 of the table's 500 keys cached: nearly every read goes to the local
    store, every commit's rows too; restarts read the store and replay only the tail."""
    seed = fault_seed(FIXED_SEED)
    words, outputs, table = run_suite(tmp_path, "exactly_once", seed, table_cache_size="8")
    assert_exactly_once(words, outputs, table, seed, EVENTS)


@pytest.mark.slow
def test_at_least_once_shows_duplicates_under_the_same_faults(tmp_path: Path) -> None:
    words, outputs, table = run_suite(tmp_path, "at_least_once", FIXED_SEED)
    assert len(outputs) > EVENTS, "at-least-once produced no duplicates under 10+ kills"
    assert sum(table.values()) >= len(words)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [FIXED_SEED, None], ids=["fixed-seed", "random-seed"])
def test_exactly_once_under_kills_while_workers_join_and_leave(
    tmp_path: Path, seed: int | None
) -> None:
    """The same, while an extra worker command keeps joining and leaving (gracefully or by
    kill -9): real rebalances, cooperative hand-overs and session expiries under the kills."""
    seed = fault_seed(seed)
    words, outputs, table = run_suite(tmp_path, "exactly_once", seed, with_churn=True)
    assert_exactly_once(words, outputs, table, seed, len(words))
