"""Final results of windows under repeated `kill -9`: examples/pageviews.py with two workers.

Page views arrive over several seconds with event times 50 ms apart (up to 4 s out of order,
inside the 5 s grace); random workers are killed with SIGKILL at random moments and the
supervisor restarts them. Then one far-future view per page closes every minute. Every
(page, minute) must have exactly one final result, with the true count, and no view may be
late. Seed handling as in the fault suite (STREAMS_FAULT_SEED=<n> replays).
"""

from __future__ import annotations

import collections
import json
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
from tests.fault_helpers import (
    fault_seed,
    kill_workers,
    stop_supervisor,
    worker_command,
    worker_env,
)
from tests.worker.test_fault_suite import read_all

VIEWS = 40_000
PAGES = [f"/page-{i}" for i in range(20)]
PARTITIONS = 4
MIN_KILLS = 6
START_MS = 1_700_000_040_000  # a minute boundary
SPACING_MS = 50


def load(db: str, rng: random.Random, seconds: float, done: threading.Event) -> list[tuple]:  # type: ignore[type-arg]
    """Produce VIEWS (page, event time) over about `seconds`; returns them."""
    views = [
        (rng.choice(PAGES), max(START_MS, START_MS + i * SPACING_MS - rng.randrange(4_000)))
        for i in range(VIEWS)
    ]
    chunk = 500
    pause = seconds / (VIEWS / chunk)

    def produce() -> None:
        broker = Broker(db)
        producer = BatchProducer(broker)
        for start in range(0, VIEWS, chunk):
            part = views[start : start + chunk]
            producer.send(
                "views",
                [(json.dumps(page).encode(), b'{"user":1}') for page, _ in part],
                [ts for _, ts in part],
            )
            time.sleep(pause)
        broker.close()
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    return views


def close_every_minute(db: str, views: list[tuple]) -> None:  # type: ignore[type-arg]
    """One view per page far after the last: its partition's stream time passes every
    minute loaded (those views' own minute stays open)."""
    late = max(ts for _, ts in views) + 600_000
    broker = Broker(db)
    BatchProducer(broker).send(
        "views", [(json.dumps(p).encode(), b'{"user":0}') for p in PAGES], [late] * len(PAGES)
    )
    broker.close()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [20261121, None], ids=["fixed-seed", "random-seed"])
def test_final_results_exactly_once_under_repeated_kill_9(tmp_path: Path, seed: int | None) -> None:
    rng = random.Random(fault_seed(seed))
    db = str(tmp_path / "broker.db")
    broker = Broker(db)
    broker.create_topic("views", PARTITIONS)
    env = worker_env(f"sqlite:///{db}", tmp_path, default_partitions=str(PARTITIONS))
    command = worker_command(2, app="examples.pageviews:app")
    supervisor = subprocess.Popen(command, cwd=tmp_path, env=env)
    expected = collections.Counter()
    try:
        loaded = threading.Event()
        views = load(db, rng, seconds=10.0, done=loaded)
        expected = collections.Counter((p, (ts - START_MS) // 60_000) for p, ts in views)
        kills = kill_workers(
            supervisor, rng, loaded, min_kills=MIN_KILLS, pause=(0.5, 1.5), within=90
        )
        assert kills >= MIN_KILLS and loaded.is_set(), (kills, loaded.is_set())
        close_every_minute(db, views)
        settle = time.monotonic() + 120
        while True:
            results = [json.loads(r.value) for r in read_all(broker, "pageviews-per-minute")]
            if len(results) >= len(expected) or time.monotonic() > settle:
                break
            assert supervisor.poll() is None, "the supervisor died"
            time.sleep(0.5)
    finally:
        code = stop_supervisor(supervisor)
    late = read_all(broker, "late-views")
    broker.close()
    assert code == 0, f"supervisor exited with {code}"
    got = collections.Counter(
        (r["key"], round(r["start"] * 1000 - START_MS) // 60_000) for r in results
    )
    duplicates = {w: n for w, n in got.items() if n > 1}
    assert not duplicates, f"seed {seed}: windows sent more than once: {list(duplicates)[:5]}"
    assert set(got) == set(expected), f"seed {seed}: missing {set(expected) - set(got)}"
    wrong = {
        (r["key"], round(r["start"] * 1000 - START_MS) // 60_000): r["value"]
        for r in results
        if r["value"] != expected[(r["key"], round(r["start"] * 1000 - START_MS) // 60_000)]
    }
    assert not wrong, f"seed {seed}: wrong counts {list(wrong.items())[:5]}"
    assert late == [], f"seed {seed}: {len(late)} views dropped as late"
