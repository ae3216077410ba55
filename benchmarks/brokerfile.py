"""The broker file's checks and backups: what they cost on a large file.

    python -m benchmarks brokerfile                            # 1 GiB of 2,000-record batches
    python -m benchmarks brokerfile --records-per-batch 10 --value-bytes 100

Builds a broker file of --mib MiB (batches of --records-per-batch records of --value-bytes
random bytes, 4 partitions, in a temporary directory or --dir), then measures opening it
cleanly closed; opening it as if its last user had crashed (the first opener's
integrity_check, see docs/operations.md); SQLite's quick_check alone, for comparison; `streams
broker check` (check_file: integrity_check and every batch's CRC); and `streams broker backup`
(Broker.backup). "cold" figures drop the page cache first (root only; null otherwise), "warm"
ones read a file just read. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from runtime.broker import Broker, ProduceBatch
from runtime.broker.integrity import OPEN_COUNTER, check_file

PARTITIONS = 4


def build(path: str, mib: int, records_per_batch: int, value_bytes: int) -> int:
    """Write batches until the file reaches `mib` MiB; returns the records written."""
    broker = Broker(path)
    broker.create_topic("t", partitions=PARTITIONS)
    pid, epoch = broker.init_producer_id()
    value = os.urandom(value_bytes)
    stamps = [0] * records_per_batch
    sequences = [0] * PARTITIONS
    written = 0
    while os.path.getsize(path) < mib << 20:
        batches = []
        for p in range(PARTITIONS):
            keys: list[bytes | None] = [b"%d" % i for i in range(records_per_batch)]
            values: list[bytes | None] = [value] * records_per_batch
            batches.append(ProduceBatch("t", p, sequences[p], keys, values, stamps))
            sequences[p] += records_per_batch
        broker.produce(pid, epoch, batches)
        written += PARTITIONS * records_per_batch
    broker.close()
    return written


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def mark_unclean(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE counters SET value = 1 WHERE name = ?", (OPEN_COUNTER,))
    conn.commit()
    conn.close()


def timed(action: Callable[[], Any], prepare: Callable[[], Any] = lambda: None) -> float:
    prepare()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cold_and_warm(
    action: Callable[[], Any], prepare: Callable[[], Any], repeat: int
) -> dict[str, float | None]:
    cold = None
    prepare()
    if drop_page_cache():
        cold = round(timed(action), 3)
    warm = [timed(action, prepare) for _ in range(repeat)]
    return {"cold_s": cold, "warm_s": round(statistics.median(warm), 3)}


def open_and_close(path: str) -> None:
    Broker(path).close()


def quick_check(path: str) -> None:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    conn.close()


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks brokerfile")
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--records-per-batch", type=int, default=2000)
    parser.add_argument("--value-bytes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs (median)")
    parser.add_argument("--dir", help="where to build the file (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = os.path.join(directory, "bench.db")
        started = time.perf_counter()
        records = build(path, args.mib, args.records_per_batch, args.value_bytes)
        result: dict[str, Any] = {
            "benchmark": "brokerfile",
            "mib": os.path.getsize(path) >> 20,
            "records": records,
            "records_per_batch": args.records_per_batch,
            "value_bytes": args.value_bytes,
            "build_s": round(time.perf_counter() - started, 1),
            "clean_open_s": round(
                statistics.median(timed(lambda: open_and_close(path)) for _ in range(5)), 4
            ),
            "unclean_open": cold_and_warm(
                lambda: open_and_close(path), lambda: mark_unclean(path), args.repeat
            ),
            "quick_check": cold_and_warm(lambda: quick_check(path), lambda: None, args.repeat),
        }
        report = None

        def check() -> None:
            nonlocal report
            report = check_file(path)

        result["broker_check"] = cold_and_warm(check, lambda: None, 1)
        assert report is not None and not report.problems, report
        broker = Broker(path)
        copy = os.path.join(directory, "copy.db")
        result["backup_s"] = round(timed(lambda: broker.backup(copy)), 2)
        broker.close()
    print(json.dumps(result))
