"""What the fault tests share: starting `streams worker`, killing its workers, stopping it,
and checking that word count's committed outputs and table hold every input exactly once.

    supervisor = subprocess.Popen(worker_command(3), cwd=tmp_path, env=env)
    kills = kill_workers(supervisor, rng, done, min_kills=10, pause=(0.3, 1.2))
    assert stop_supervisor(supervisor) == 0
    assert_exactly_once(words, outputs, table, seed)
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def worker_command(
    workers: int, loglevel: str = "warning", app: str = "examples.wordcount:app"
) -> list[str]:
    """`streams worker APP --workers N` (the supervisor and its workers)."""
    return [
        sys.executable,
        "-m",
        "streams.cli",
        "worker",
        app,
        "--workers",
        str(workers),
        "--loglevel",
        loglevel,
    ]


def fault_seed(seed: int | None) -> int:
    """The seed a fault test runs with: `seed`, else STREAMS_FAULT_SEED, else a random one
    (printed, so that a failing run can be replayed)."""
    if seed is None:
        seed = int(os.environ.get("STREAMS_FAULT_SEED", random.randrange(2**32)))
    print(f"fault seed: {seed} (replay with STREAMS_FAULT_SEED={seed})")
    return seed


def worker_env(broker_url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a test's `streams worker`: this one, plus the broker, a state
    directory under `tmp_path`, this repository importable, and STREAMS_<NAME> `settings`."""
    return {
        **os.environ,
        "STREAMS_BROKER": broker_url,
        "STREAMS_STATE_DIR": str(tmp_path / "state"),
        "PYTHONPATH": str(ROOT),
        **{f"STREAMS_{name.upper()}": value for name, value in settings.items()},
    }


def kill_workers(
    supervisor: subprocess.Popen[Any],
    rng: random.Random,
    done: threading.Event,
    *,
    min_kills: int,
    pause: tuple[float, float],
    within: float = 120.0,
) -> int:
    """SIGKILL a random worker of `supervisor` after each random pause, at least `min_kills`
    times and until `done` is set (or `within` seconds pass); returns the number of kills."""
    kills = 0
    deadline = time.monotonic() + within
    while (kills < min_kills or not done.is_set()) and time.monotonic() < deadline:
        time.sleep(rng.uniform(*pause))
        pids = children(supervisor.pid)
        if pids:
            os.kill(rng.choice(pids), signal.SIGKILL)
            kills += 1
    return kills


def stop_supervisor(supervisor: subprocess.Popen[Any]) -> int:
    """SIGTERM (a clean stop), SIGKILL after 60 s; kill any worker left; returns its exit
    code."""
    supervisor.send_signal(signal.SIGTERM)
    try:
        code = supervisor.wait(timeout=60)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        code = supervisor.wait()
    for pid in children(supervisor.pid):
        os.kill(pid, signal.SIGKILL)
    return code


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
