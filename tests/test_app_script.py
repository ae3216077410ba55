"""An app run as a script (`python app.py worker`) or imported by `streams worker`: mistakes
are one line with the configuration exit code (78), never a traceback or a silent exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.broker import Broker
from runtime.errors import EXIT_CONFIG

ROOT = Path(__file__).resolve().parent.parent
AGENT = """
import streams

app = streams.App("script"{settings})
source = app.topic("source", partitions=1)


@app.stream(source)
async def agent(stream):
    async for value in stream:
        pass
"""


def run(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(source)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("settings", "main", "message"),
    [
        (', broker="redis://x"', True, "app.py: error: unknown broker URL scheme 'redis'"),
        (", commit_interval=-1", True, "app.py: error: bad commit_interval='-1'"),
        (', broker="sqlite:///notes.txt"', True, "'notes.txt' is not an SQLite database"),
        ("", False, "app.py: error: app 'script' declares agents but nothing started a worker"),
    ],
    ids=["bad URL", "bad setting", "foreign file", "no app.main()"],
)
def test_script_mistakes_are_one_line_and_exit_78(
    tmp_path: Path, settings: str, main: bool, message: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a database")
    source = AGENT.format(settings=settings) + ("\napp.main()\n" if main else "")
    result = run(tmp_path, source, "worker")
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_script_that_is_not_asked_for_a_worker_is_left_alone(tmp_path: Path) -> None:
    result = run(tmp_path, AGENT.format(settings="") + "print('done')\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_streams_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(AGENT.format(settings=", commit_interval=-1"))
    result = subprocess.run(
        [sys.executable, "app.py", "worker"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "STREAMS_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.slow
def test_streams_worker_imports_a_module_with_an_unguarded_main(tmp_path: Path) -> None:
    """`app.main()` at module level (no __main__ guard) does not read the command's own
    arguments: `streams worker app:app --workers 1` runs, and stops cleanly."""
    (tmp_path / "app.py").write_text(AGENT.format(settings="") + "\napp.main()\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "app:app", "--workers", "1"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert worker.poll() is None and time.monotonic() < deadline, "the worker did not run"
            if (tmp_path / "streams.db").exists():
                broker = Broker(str(tmp_path / "streams.db"))
                try:
                    if broker.describe_group("script").members:
                        break
                finally:
                    broker.close()
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "error" not in err.lower(), err


@pytest.mark.slow
def test_python_app_worker_takes_broker_and_logs_it(tmp_path: Path) -> None:
    """`python app.py worker --broker URL` wins over the app's broker= and logs the URL."""
    (tmp_path / "app.py").write_text(
        AGENT.format(settings=', broker="sqlite:///app.db"')
        + '\nif __name__ == "__main__":\n    app.main()\n'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    worker = subprocess.Popen(
        [sys.executable, "app.py", "worker", "--broker", "sqlite:///given.db"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "given.db").exists() or "source" not in _topics(
            tmp_path / "given.db"
        ):
            assert worker.poll() is None and time.monotonic() < deadline, "the worker did not run"
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "app script on broker sqlite:///given.db" in err
    assert not (tmp_path / "app.db").exists()


def _topics(path: Path) -> set[str]:
    broker = Broker(str(path))
    try:
        return {t.name for t in broker.list_topics()}
    finally:
        broker.close()
