"""Word count on a disk that fills up mid-run and frees again.

`streams worker examples.wordcount:app` counts words while the broker's disk fills: its next
commit fails with DiskFullError, the worker exits with EXIT_TEMPFAIL (75), the supervisor
restarts it with backoff (it keeps failing while the disk is full), and once space returns it
finishes: every word's committed updates are 1..n exactly once and the table is exact.

On a real tmpfs where the test may mount one; elsewhere the worker processes see SQLite fail
their commits with SQLITE_FULL (tests/disk_helpers.py).
"""

from __future__ import annotations

import json
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.broker import Broker
from runtime.errors import EXIT_TEMPFAIL
from tests.disk_helpers import small_disk
from tests.fault_helpers import (
    assert_exactly_once,
    stop_supervisor,
    table_from_changelog,
    worker_command,
    worker_env,
)
from tests.worker.test_fault_suite import PARTITIONS, committed_lag, read_all

EVENTS = 60_000
SEED = 20261202

# A producer process: the first half of the words, then (after a line on stdin: the disk is
# full) the second half, retrying each batch while the disk is full, as a producer that backs
# off would. It reports "half", "stalled" (once) and "loaded".
LOADER = """
import json, sys, time
from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
from runtime.errors import DiskFullError
words = json.load(open(sys.argv[2]))
producer = BatchProducer(Broker(sys.argv[1]))
stalled = False
for start in range(0, len(words), 1000):
    if start == len(words) // 2:
        print("half", flush=True)
        sys.stdin.readline()
    chunk = [(json.dumps(w).encode(), w.encode()) for w in words[start : start + 1000]]
    while True:
        try:
            producer.send("words", chunk)
            break
        except DiskFullError:
            if not stalled:
                print("stalled", flush=True)
                stalled = True
            time.sleep(0.1)
print("loaded", flush=True)
"""


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines `process` prints, as they come (so that a test can wait with a timeout)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_worker_survives_a_full_disk_and_finishes_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    words = [f"w{rng.randrange(300)}" for _ in range(EVENTS)]
    (tmp_path / "words.json").write_text(json.dumps(words))
    with small_disk(tmp_path / "disk", size_kb=65536) as disk:
        db = str(disk.path / "broker.db")
        broker = Broker(db)  # reads only: they need no space
        broker.create_topic("words", PARTITIONS)
        env = {**worker_env(f"sqlite:///{db}", tmp_path), **disk.env}
        log = tmp_path / "supervisor.log"
        with open(log, "w") as stderr:
            supervisor = subprocess.Popen(
                worker_command(1), cwd=tmp_path, env=env, stderr=stderr, text=True
            )
        loader = subprocess.Popen(
            [sys.executable, "-c", LOADER, db, str(tmp_path / "words.json")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert loader.stdin is not None
        said = lines_of(loader)
        try:

            def outputs() -> int:
                try:
                    return sum(
                        broker.partition_info("word-counts", p).last_stable
                        for p in range(PARTITIONS)
                    )
                except Exception:
                    return 0

            assert said.get(timeout=30) == "half"
            wait_for(lambda: outputs() > 0, 60, "the first committed outputs")
            disk.fill()
            filled_at = outputs()
            loader.stdin.write("go\n")
            loader.stdin.flush()
            assert said.get(timeout=30) == "stalled"  # the producer sees it too
            wait_for(
                lambda: (
                    log.read_text().count(f"exited with {EXIT_TEMPFAIL} (a resource is short)") >= 2
                ),
                30,
                "the worker to exit with 75 twice while the disk is full",
            )
            assert supervisor.poll() is None, log.read_text()
            assert "configuration error" not in log.read_text()
            disk.free()
            assert said.get(timeout=30) == "loaded"
            assert loader.wait(timeout=30) == 0
            wait_for(lambda: committed_lag(broker) == 0, 90, "the worker to catch up")
        finally:
            loader.kill()
            loader.wait()
            code = stop_supervisor(supervisor)
        text = log.read_text()
        assert code == 0, text
        assert "streams: error: broker database" in text and "the disk is full" in text
        assert "Traceback" not in text  # one line per failure
        outputs_ = read_all(broker, "word-counts")
        table = table_from_changelog(read_all(broker, "wordcount-counts-changelog"))
        broker.close()
    print(f"outputs when the disk filled: {filled_at} of {EVENTS}")
    assert_exactly_once(words, outputs_, table, SEED, EVENTS)
