"""What the fault tests share: finding worker processes, killing them, and checking that word
count's committed outputs and table hold every input exactly once.

    pids = children(supervisor.pid)
    assert_exactly_once(words, outputs, table, seed)
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def worker_command(workers: int, loglevel: str = "warning") -> list[str]:
    """`streams worker examples.wordcount:app --workers N` (the supervisor and its workers)."""
    return [
        sys.executable,
        "-m",
        "streams.cli",
        "worker",
        "examples.wordcount:app",
        "--workers",
        str(workers),
        "--loglevel",
        loglevel,
    ]


def describe(updates: list[int], n: int) -> str:
    """A wrong update list, briefly: its length against n, where it first goes wrong."""
    first = next((i for i, c in enumerate(updates) if c != i + 1), len(updates))
    return (
        f"{len(updates)} updates for {n} events, first wrong at {first}: "
        f"{updates[max(0, first - 2) : first + 3]}, last {updates[-3:]}"
    )


def updates_per_word(outputs: list[Any]) -> dict[str, list[int]]:
    per_word: dict[str, list[int]] = collections.defaultdict(list)
    for record in outputs:  # per partition in offset order: each word's updates in order
        value = json.loads(record.value)
        per_word[value["word"]].append(value["count"])
    return per_word


def table_from_changelog(records: list[Any]) -> dict[str, int]:
    table: dict[str, int] = {}
    for record in records:
        if record.value is None:
            table.pop(json.loads(record.key), None)
        else:
            table[json.loads(record.key)] = json.loads(record.value)
    return table


def assert_exactly_once(
    words: list[str], outputs: list[Any], table: dict[str, int], seed: int, events: int
) -> None:
    """For every word w: the committed outputs hold the count updates 1..freq(w) exactly
    once each and in order, and the table equals the true frequencies."""
    truth = collections.Counter(words)
    per_word = updates_per_word(outputs)
    wrong = {
        w: describe(per_word.get(w, []), n)
        for w, n in truth.items()
        if per_word.get(w) != list(range(1, n + 1))
    }
    assert not wrong, (
        f"seed {seed}: {len(wrong)} words with wrong updates, e.g. {list(wrong.items())[:3]}"
    )
    assert len(outputs) == events, f"seed {seed}"
    assert table == truth, f"seed {seed}"
