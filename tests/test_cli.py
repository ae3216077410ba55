"""`streams worker` and `streams table` from the command line, good and bad input.

Each mistake is one clear line on stderr, a non-zero exit code, no traceback."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fault_helpers import worker_command

ROOT = Path(__file__).resolve().parent.parent


def streams(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streams: error: ")
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize(
    ("target", "parts"),
    [
        ("no_such_module:app", ("cannot import 'no_such_module'",)),
        ("examples.wordcount:nothing", ("has no attribute 'nothing'",)),
        ("examples.wordcount:words", ("is a Topic, not a streams.App",)),
    ],
)
def test_worker_refuses_what_is_not_an_app(tmp_path: Path, target: str, parts: tuple) -> None:  # type: ignore[type-arg]
    one_error_line(streams("worker", target, cwd=tmp_path), *parts)


def test_worker_refuses_an_unknown_broker_scheme(tmp_path: Path) -> None:
    result = streams(
        "--broker", "redis://localhost", "worker", "examples.wordcount:app", cwd=tmp_path
    )
    one_error_line(result, "unknown broker URL scheme 'redis'")


def test_worker_refuses_another_programs_database(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    before = other.read_bytes()
    result = streams(
        "--broker", f"sqlite:///{other}", "worker", "examples.wordcount:app", cwd=tmp_path
    )
    one_error_line(result, "another program")
    assert other.read_bytes() == before


def test_worker_reports_a_database_locked_by_another_program(tmp_path: Path) -> None:
    """Our own broker file, write-locked by a program that is not streams."""
    db = tmp_path / "broker.db"
    assert (
        streams("--broker", f"sqlite:///{db}", "topics", "create", "words", cwd=tmp_path).returncode
        == 0
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = streams(
            "--broker",
            f"sqlite:///{db}?busy_timeout_ms=500",
            "worker",
            "examples.wordcount:app",
            cwd=tmp_path,
        )
        one_error_line(result, "locked")
    finally:
        holder.kill()
        holder.wait()


def test_table_of_an_unknown_table_is_one_line(tmp_path: Path) -> None:
    result = streams(
        "--broker",
        f"sqlite:///{tmp_path}/b.db",
        "table",
        "examples.wordcount:app",
        "nope",
        cwd=tmp_path,
    )
    one_error_line(result, "has no table 'nope'")


@pytest.mark.slow
def test_worker_processes_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """Two workers count words sent with `streams send`; SIGTERM stops them with exit 0;
    `streams table` then prints the counts from the changelog."""
    env = {
        "STREAMS_BROKER": f"sqlite:///{tmp_path}/b.db",
        "STREAMS_STATE_DIR": str(tmp_path / "state"),
    }
    (tmp_path / "words.txt").write_text("a\nb\na\nc\na\n")
    assert (
        streams("topics", "create", "words", "--partitions", "4", cwd=tmp_path, env=env).returncode
        == 0
    )
    assert streams("send", "words", "--file", "words.txt", cwd=tmp_path, env=env).returncode == 0
    worker = subprocess.Popen(
        worker_command(2),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    try:
        deadline = time.monotonic() + 60
        rows = ""
        while time.monotonic() < deadline:
            rows = streams(
                "table", "examples.wordcount:app", "counts", cwd=tmp_path, env=env
            ).stdout
            if rows.count("\n") == 3:
                break
            time.sleep(0.5)
        assert sorted(rows.splitlines()) == ['"a"\t3', '"b"\t1', '"c"\t1']
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


def test_supervisor_counts_a_worker_stopped_while_starting_as_clean() -> None:
    """SIGTERM reaching a worker before it installed its handler (it has done nothing yet)
    ends it with -SIGTERM; the supervisor still exits 0. A worker failing exits non-zero."""
    from runtime.worker.supervisor import Supervisor

    def sleeper(slot: int) -> list[str]:  # a "worker" with no handler: dies of SIGTERM
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    def failing(slot: int) -> list[str]:  # one that handles SIGTERM by exiting with 3
        return [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
            "time.sleep(60)",
        ]

    for command, expected in ((sleeper, 0), (failing, 1)):
        supervisor = Supervisor(command, workers=2, grace=10)
        for child in supervisor.children:
            supervisor._start(child)
        time.sleep(0.5)
        assert supervisor._shutdown() == expected


async def test_table_dumps_a_windowed_table_as_key_start_end_rows(tmp_path: Path) -> None:
    """`streams table` decodes a windowed table's changelog as a worker restores it."""
    from examples.pageviews import app, views

    url = f"sqlite:///{tmp_path}/b.db"
    async with app.testing(broker=url, state_dir=str(tmp_path / "state")) as run:
        for seconds in (0, 30, 61):
            await run.send(
                views, {"user": 1}, key="/", timestamp=1_700_000_040_000 + seconds * 1000
            )
        await run.drain()
        assert run.table("views-per-minute") == {
            ("/", 1_700_000_040.0, 1_700_000_100.0): 2,
            ("/", 1_700_000_100.0, 1_700_000_160.0): 1,
        }
    result = streams(
        "table",
        "examples.pageviews:app",
        "views-per-minute",
        cwd=tmp_path,
        env={"STREAMS_BROKER": url},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        '["/", 1700000040.0, 1700000100.0]\t2',
        '["/", 1700000100.0, 1700000160.0]\t1',
    ]
