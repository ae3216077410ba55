"""The floor: what plain SQLite and Python do with the broker's layout, no framework at all.

    python -m benchmarks floor [--records 500000] [--events 500000] [--runs 3]

Measured in this process, on the file system of the temporary directory the other benchmarks
use, so `broker --vs-floor` and `wordcount --vs-floor` can print their figures as ratios to it:

    (a) append   batch blobs of 1,000 records (100-byte values), one row and one SQLite
                 transaction per batch, WAL, synchronous=normal
    (b) read     range reads of the same rows (1,000 records a call), decoded to records
    (c) wordcount  a minimal exactly-once word count: fetch batch blobs round-robin over the
                 partitions, decode, orjson.loads, update a dict, orjson.dumps one output per
                 event, and every commit interval one SQLite transaction with the outputs, the
                 changelog (the latest count per changed word) and the offsets

The blobs are the broker's own (`runtime.broker.codec`), so the floor and the broker do the same
encoding work; everything else (validation, sequences, transactions, markers, groups, the
asyncio transport, the worker) is what the framework adds. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from runtime.broker.codec import decode_batch, encode_batch
from runtime.partitioner import partition_for_key

PARTITIONS = 4
SCHEMA = """
CREATE TABLE batches (
    tp INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (tp, base_offset)
);
CREATE TABLE offsets (tp INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
"""
# topic partition ids in the floor's file: words 0-3, outputs 10-13, changelog 20-23
OUTPUTS, CHANGELOG = 10, 20


def connect(path: str, synchronous: str = "normal") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -65536")
    conn.executescript(SCHEMA)
    return conn


def value_of(size: int) -> bytes:
    return os.urandom(size // 2 + 1).hex().encode()[:size]


# --- (a) and (b) ----------------------------------------------------------------------------


def append(conn: sqlite3.Connection, records: int, batch: int, value: bytes) -> float:
    """(a): `records` records in batches of `batch`, round-robin over the partitions, one
    transaction per batch. Returns the seconds taken."""
    ends = [0] * PARTITIONS
    started = time.perf_counter()
    for n, start in enumerate(range(0, records, batch)):
        count = min(batch, records - start)
        keys = [b"key-%d" % (i % 10_000) for i in range(start, start + count)]
        now = time.time_ns() // 1_000_000
        payload = encode_batch(keys, [value] * count, [now] * count)
        tp = n % PARTITIONS
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?)", (tp, ends[tp], ends[tp] + count - 1, payload)
        )
        conn.execute("COMMIT")
        ends[tp] += count
    return time.perf_counter() - started


def read(conn: sqlite3.Connection, page: int) -> tuple[int, float]:
    """(b): every record of every partition, `page` records a call, each call a read
    transaction that finds the batch holding its start offset and decodes to
    (offset, key, value, timestamp) tuples. Returns (records, seconds)."""
    total = 0
    started = time.perf_counter()
    positions = [0] * PARTITIONS
    done = [False] * PARTITIONS
    while not all(done):
        for tp in range(PARTITIONS):
            if done[tp]:
                continue
            records = fetch(conn, tp, positions[tp], page)
            if not records:
                done[tp] = True
                continue
            positions[tp] = records[-1][0] + 1
            total += len(records)
    return total, time.perf_counter() - started


def fetch(conn: sqlite3.Connection, tp: int, offset: int, page: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    conn.execute("BEGIN")
    rows = conn.execute(
        "SELECT base_offset, payload FROM batches WHERE tp = ?1 AND base_offset >="
        " coalesce((SELECT max(base_offset) FROM batches WHERE tp = ?1 AND base_offset <= ?2), 0)"
        " ORDER BY base_offset",
        (tp, offset),
    )
    for base, payload in rows:
        keys, values, timestamps, _, _ = decode_batch(payload)
        skip = max(0, offset - base)
        records = list(zip(range(base, base + len(values)), keys, values, timestamps, strict=True))
        out.extend(records[skip : skip + page - len(out)])
        if len(out) >= page:
            break
    conn.execute("COMMIT")
    return out


# --- (c) ------------------------------------------------------------------------------------


def load_words(conn: sqlite3.Connection, events: int, batch: int = 1000) -> None:
    """The word-count benchmark's input (same vocabulary, same skew, keyed by the word as
    JSON, as the app's str key codec writes it), placed by murmur2 like the broker does."""
    from benchmarks.wordcount import vocabulary

    words = vocabulary()
    rng = random.Random(11)
    columns: list[tuple[list[bytes | None], list[bytes | None]]] = [
        ([], []) for _ in range(PARTITIONS)
    ]
    ends = [0] * PARTITIONS
    now = time.time_ns() // 1_000_000

    def write(tp: int) -> None:
        keys, values = columns[tp]
        if not values:
            return
        payload = encode_batch(keys, values, [now] * len(values))
        conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?)",
            (tp, ends[tp], ends[tp] + len(values) - 1, payload),
        )
        ends[tp] += len(values)
        columns[tp] = ([], [])

    conn.execute("BEGIN")
    for _ in range(events):
        word = words[int(rng.paretovariate(1.2)) % len(words)]
        data = orjson.dumps(word)
        tp = partition_for_key(data, PARTITIONS)
        columns[tp][0].append(data)
        columns[tp][1].append(data)
        if len(columns[tp][1]) >= batch:
            write(tp)
    for tp in range(PARTITIONS):
        write(tp)
    conn.execute("COMMIT")


def wordcount(conn: sqlite3.Connection, events: int, commit_interval: float) -> float:
    """(c): counts every word of the input exactly once; returns the seconds from the first
    fetch until the last commit. Verified: the counts add up to `events`."""
    counts: dict[str, int] = {}
    positions = [0] * PARTITIONS
    ends = {tp: 0 for tp in (*range(OUTPUTS, OUTPUTS + 4), *range(CHANGELOG, CHANGELOG + 4))}
    outputs: list[tuple[list[bytes | None], list[bytes | None]]] = [
        ([], []) for _ in range(PARTITIONS)
    ]
    changed: list[dict[bytes, str]] = [{} for _ in range(PARTITIONS)]
    processed = 0
    pending = False

    def commit() -> None:
        now = time.time_ns() // 1_000_000
        conn.execute("BEGIN IMMEDIATE")
        for tp in range(PARTITIONS):
            keys, values = outputs[tp]
            if values:
                write_batch(OUTPUTS + tp, keys, values, now)
            if changed[tp]:
                words = changed[tp]
                write_batch(
                    CHANGELOG + tp,
                    list(words),
                    [orjson.dumps(counts[w]) for w in words.values()],
                    now,
                )
            conn.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?)", (tp, positions[tp]))
            outputs[tp] = ([], [])
            changed[tp] = {}
        conn.execute("COMMIT")

    def write_batch(
        tp: int, keys: list[bytes | None], values: list[bytes | None], now: int
    ) -> None:
        payload = encode_batch(keys, values, [now] * len(values))
        conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?)",
            (tp, ends[tp], ends[tp] + len(values) - 1, payload),
        )
        ends[tp] += len(values)

    loads, dumps = orjson.loads, orjson.dumps
    started = time.perf_counter()
    last_commit = started
    while processed < events:
        for tp in range(PARTITIONS):
            records = fetch(conn, tp, positions[tp], 1000)
            if not records:
                continue
            keys_out, values_out = outputs[tp]
            touched = changed[tp]
            for _, key, value, _ in records:
                word = loads(value)
                count = counts.get(word, 0) + 1
                counts[word] = count
                touched[key] = word
                keys_out.append(key)
                values_out.append(dumps({"word": word, "count": count}))
            positions[tp] = records[-1][0] + 1
            processed += len(records)
            pending = True
        now = time.perf_counter()
        if pending and now - last_commit >= commit_interval:
            commit()
            pending, last_commit = False, now
    if pending:
        commit()
    elapsed = time.perf_counter() - started
    assert sum(counts.values()) == events, (sum(counts.values()), events)
    return elapsed


# --- measuring ------------------------------------------------------------------------------


def measure_broker_floor(records: int, batch: int, value_bytes: int) -> dict[str, float]:
    """(a) and (b) in records/s, on a fresh file in a temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        conn = connect(f"{directory}/floor.db")
        seconds = append(conn, records, batch, value_of(value_bytes))
        total, read_seconds = read(conn, batch)
        conn.close()
    assert total == records, (total, records)
    return {"append": records / seconds, "read": total / read_seconds}


def measure_wordcount_floor(events: int, commit_interval: float) -> float:
    """(c) in events/s, on a fresh file in a temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        conn = connect(f"{directory}/floor.db")
        load_words(conn, events)
        seconds = wordcount(conn, events, commit_interval)
        conn.close()
    return events / seconds


def interleaved(runs: int, steps: list[Callable[[], dict[str, float]]]) -> dict[str, float]:
    """Run every step once per round, `runs` rounds; the median of each figure."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for step in steps:
            for name, figure in step().items():
                samples.setdefault(name, []).append(figure)
    return {name: statistics.median(values) for name, values in samples.items()}


def ratio_line(benchmark: str, figure: str, value: float, floor_name: str, floor: float) -> str:
    return json.dumps(
        {
            "benchmark": benchmark,
            "figure": figure,
            "per_s": round(value),
            "floor": floor_name,
            "floor_per_s": round(floor),
            "ratio": round(value / floor, 3),
        }
    )


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks floor")
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--commit-interval", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    figures = interleaved(
        args.runs,
        [
            lambda: measure_broker_floor(args.records, args.batch, args.value_bytes),
            lambda: {"wordcount": measure_wordcount_floor(args.events, args.commit_interval)},
        ],
    )
    for name, unit in (("append", "records"), ("read", "records"), ("wordcount", "events")):
        print(
            json.dumps(
                {
                    "benchmark": "floor",
                    "figure": name,
                    f"{unit}_per_s": round(figures[name]),
                    "runs": args.runs,
                }
            ),
            flush=True,
        )
