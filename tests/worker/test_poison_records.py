"""Records that cannot be processed, with real worker processes: the supervisor gives up on a
worker that keeps stopping at the same record, and dead letters stay exactly once under
`kill -9` of random workers.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.broker import READ_COMMITTED, Broker
from runtime.broker.producer import BatchProducer
from runtime.errors import EXIT_DATAERR
from runtime.types import TopicPartition
from runtime.worker.supervisor import GIVE_UP_ENV, Supervisor
from tests.fault_helpers import (
    fault_seed,
    kill_workers,
    stop_supervisor,
    table_from_changelog,
    worker_command,
    worker_env,
)

# --- the supervisor gives up --------------------------------------------------------------------

FAKE_WORKER = """
import os, sys
attempts = sys.argv[1]
with open(attempts, "a") as f:
    f.write("x")
n = len(open(attempts).read())
line = "streams: error: agent 'total' failed at orders[0]@6 (key 'ada'): KeyError('total')"
if sys.argv[2] == "moving":
    line = line.replace("@6", f"@{n}")  # a different record each time: progress
with open(os.environ["STREAMS_FAILURE_FILE"], "w") as f:
    f.write(line + "\\n")
sys.exit(65)
"""


def fake_worker(tmp_path: Path, mode: str) -> tuple[Any, Path]:
    attempts = tmp_path / "attempts"

    def command(slot: int) -> list[str]:
        return [sys.executable, "-c", FAKE_WORKER, str(attempts), mode]

    return command, attempts


def test_supervisor_gives_up_on_a_worker_stuck_at_one_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A worker that exits with EXIT_DATAERR and the same line N times in a row: the supervisor
    stops with that line as its last line on stderr and exits with EXIT_DATAERR."""
    monkeypatch.setenv(GIVE_UP_ENV, "3")
    command, attempts = fake_worker(tmp_path, "stuck")
    supervisor = Supervisor(command, workers=1)
    watchdog = threading.Timer(20.0, lambda: setattr(supervisor, "stopping", True))
    watchdog.start()  # a supervisor that never gives up fails the test instead of hanging it
    started = time.monotonic()
    try:
        code = supervisor.run()
    finally:
        watchdog.cancel()
    assert code == EXIT_DATAERR == 65
    assert attempts.read_text() == "xxx"
    assert time.monotonic() - started >= 0.75  # backed off 0.25 s, then 0.5 s
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "streams: error: agent 'total' failed at orders[0]@6 (key 'ada'): KeyError('total')"
    )


def test_supervisor_keeps_restarting_a_worker_that_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stops at a different record each time is not stuck: restarted beyond N."""
    monkeypatch.setenv(GIVE_UP_ENV, "2")
    command, attempts = fake_worker(tmp_path, "moving")
    supervisor = Supervisor(command, workers=1)

    def stop_after_four() -> None:
        while len(attempts.read_text() if attempts.exists() else "") < 4:
            time.sleep(0.05)
        supervisor.stopping = True

    threading.Thread(target=stop_after_four, daemon=True).start()
    code = supervisor.run()
    assert code != EXIT_DATAERR
    assert len(attempts.read_text()) >= 4


def test_streams_worker_gives_up_at_a_poison_record(tmp_path: Path) -> None:
    """`streams worker` on an app whose agent raises at one record (on_error="fail"): the
    worker exits 65 at it each time; after STREAMS_GIVE_UP_AFTER=2 the command exits 65 with
    the worker's one line, naming the record and the exception, as its last line."""
    db = tmp_path / "broker.db"
    broker = Broker(str(db))
    broker.create_topic("orders", 1)
    producer = BatchProducer(broker)
    orders = [{"id": 1, "customer": "ada", "total": 2.0}, {"id": 2, "customer": "ada"}]
    producer.send("orders", [(None, json.dumps(o).encode()) for o in orders])
    broker.close()
    env = worker_env(f"sqlite:///{db}", tmp_path, on_error="fail", default_partitions="1")
    env[GIVE_UP_ENV] = "2"
    done = subprocess.run(
        worker_command(1, app="examples.orders:app"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_DATAERR, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        "streams: error: agent 'bill' failed at orders-by-customer-repartition[0]@1 "
        "(key 'ada'): KeyError('total')"
    )
    assert sum(line == lines[-1] for line in lines) == 3  # each worker's, then the supervisor's


# --- dead letters under kill -9 -----------------------------------------------------------------

PARTITIONS = 2
ORDERS = 3000


def make_orders(rng: random.Random) -> list[bytes]:
    """Order values: mostly good, some not JSON, some without a customer, some without a total."""
    values = []
    for i in range(ORDERS):
        customer = f"c{rng.randrange(40)}"
        kind = rng.random()
        if kind < 0.03:
            values.append(b"{not json %d" % i)
        elif kind < 0.06:
            values.append(json.dumps({"id": i, "total": 1.0}).encode())
        elif kind < 0.09:
            values.append(json.dumps({"id": i, "customer": customer}).encode())
        else:
            values.append(json.dumps({"id": i, "customer": customer, "total": 1.0}).encode())
    return values


def decoded(value: bytes) -> Any:
    """An order as JSON, or its bytes if it is not JSON. (An order without a total fails in
    the agent, after group_by: its dead letter is the repartition record, re-encoded.)"""
    try:
        return json.loads(value)
    except ValueError:
        return value


def is_good(value: bytes) -> bool:
    order = decoded(value)
    return isinstance(order, dict) and "customer" in order and "total" in order


def read_committed(broker: Broker, topic: str) -> list[Any]:
    records: list[Any] = []
    for p in range(PARTITIONS):
        tp = TopicPartition(topic, p)
        try:
            offset = broker.partition_info(topic, p).log_start
        except Exception:
            return []
        end = broker.partition_info(topic, p).last_stable
        while offset < end:
            result = broker.fetch([(tp, offset)], max_records=10_000, isolation=READ_COMMITTED)[tp]
            records.extend(result.records)
            offset = result.next_offset
    return records


@pytest.mark.slow
def test_dead_letters_are_exactly_once_under_kill_9(tmp_path: Path) -> None:
    """examples/orders.py (on_error="dead_letter") in two worker processes while orders
    arrive, random workers killed with SIGKILL: every bad order (not JSON, no customer, no
    total) is in orders-dead-letter exactly once, every good one billed exactly once, and the
    tables count good orders only."""
    seed = fault_seed(None)
    rng = random.Random(seed)
    db = tmp_path / "broker.db"
    broker = Broker(str(db))
    broker.create_topic("orders", PARTITIONS)
    values = make_orders(rng)
    env = worker_env(f"sqlite:///{db}", tmp_path, default_partitions=str(PARTITIONS))
    supervisor = subprocess.Popen(
        worker_command(2, app="examples.orders:app"), cwd=tmp_path, env=env
    )
    try:
        loaded = threading.Event()

        def load() -> None:
            producer = BatchProducer(broker)
            for start in range(0, ORDERS, 100):
                chunk = values[start : start + 100]
                producer.send("orders", [(str(start + i).encode(), v) for i, v in enumerate(chunk)])
                time.sleep(0.15)
            loaded.set()

        threading.Thread(target=load, daemon=True).start()
        kills = kill_workers(supervisor, rng, loaded, min_kills=5, pause=(0.5, 1.5), within=60)
        good = [json.loads(v) for v in values if is_good(v)]
        bad = [decoded(v) for v in values if not is_good(v)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            receipts = read_committed(broker, "receipts")
            letters = read_committed(broker, "orders-dead-letter")
            if len(receipts) + len(letters) >= len(good) + len(bad):
                break
            time.sleep(0.5)
    finally:
        assert stop_supervisor(supervisor) == 0
    assert kills >= 5
    billed = sorted(json.loads(r.value)["id"] for r in receipts)
    assert billed == sorted(o["id"] for o in good), f"seed {seed}"
    assert sorted(map(repr, (decoded(r.value) for r in letters))) == sorted(map(repr, bad))
    expected: dict[str, int] = {}
    for order in good:
        expected[order["customer"]] = expected.get(order["customer"], 0) + 1
    billed_table = table_from_changelog(read_committed(broker, "orders-billed-changelog"))
    assert billed_table == expected, f"seed {seed}"
