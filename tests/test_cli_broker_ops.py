"""Operator commands that touch the broker's file and state: `send` on a file that cannot be
written, `topics delete` of state someone needs, `broker backup` and `broker check`.

Each runs the real `streams` command in a subprocess with a timeout: it must answer (one
line, an exit code) in bounded time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
from runtime.types import TopicPartition
from tests.disk_helpers import corrupt_a_table_page, read_only, small_disk
from tests.test_cli import streams as run_streams

ROOT = Path(__file__).resolve().parent.parent


def streams(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return run_streams(*args, cwd=cwd, env=env, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streams: error: "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# --- send on a file that cannot be written --------------------------------------------------


@pytest.mark.parametrize("how", ["value", "file"])
def test_send_to_a_read_only_broker_fails_in_one_line(tmp_path: Path, how: str) -> None:
    """The first write fails: `send VALUE` used to wait forever for its record's delivery."""
    assert streams("topics", "create", "words", cwd=tmp_path).returncode == 0
    (tmp_path / "words.txt").write_text("a\nb\n")
    args = ["hello"] if how == "value" else ["--file", "words.txt"]
    with read_only(tmp_path / "streams.db", tmp_path / "site") as env:
        started = time.monotonic()
        result = streams("send", "words", *args, cwd=tmp_path, env=env, timeout=15)
        assert time.monotonic() - started < 10
    one_error_line(result, "read-only")
    assert "sent" not in result.stdout


def test_send_on_a_full_disk_fails_in_one_line_and_works_when_space_returns(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        env = {**disk.env, "STREAMS_BROKER": f"sqlite:///{disk.path}/streams.db"}
        assert streams("topics", "create", "words", cwd=tmp_path, env=env).returncode == 0
        disk.fill(margin=0)
        for args in (["hello"], ["--file", "words.txt"]):
            (tmp_path / "words.txt").write_text("a\nb\n")
            started = time.monotonic()
            result = streams("send", "words", *args, cwd=tmp_path, env=env, timeout=15)
            assert time.monotonic() - started < 10
            one_error_line(result, "the disk is full", "free some space")
        disk.free()
        result = streams("send", "words", "hello", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "sent to words[0] at offset 0\n"


# --- topics delete --------------------------------------------------------------------------


def test_deleting_a_topic_a_live_group_consumes_needs_force(tmp_path: Path) -> None:
    broker = Broker(str(tmp_path / "streams.db"))
    broker.create_topic("orders", partitions=2)
    BatchProducer(broker).send("orders", [(b"k", b"v")] * 5)
    broker.join_group("billing", ["orders"], session_timeout_ms=120_000)  # live for 2 min
    broker.close()

    refused = streams("topics", "delete", "orders", cwd=tmp_path)
    one_error_line(refused, "refusing to delete topic 'orders'", "'billing' (1 live member)")
    assert "--force" in refused.stderr
    assert "orders" in streams("topics", "list", cwd=tmp_path).stdout

    forced = streams("topics", "delete", "orders", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "deleted orders (up to 5 records" in forced.stdout
    assert "orders" not in streams("topics", "list", cwd=tmp_path).stdout


def test_deleting_a_table_changelog_needs_force(tmp_path: Path) -> None:
    """A changelog is its table's state; while its app runs the refusal names the app."""
    broker = Broker(str(tmp_path / "streams.db"))
    broker.create_topic("wordcount-counts-changelog", partitions=2, compacted=True)
    broker.create_topic("words", partitions=2)
    broker.create_topic("scratch", partitions=1)
    BatchProducer(broker).send("wordcount-counts-changelog", [(b'"a"', b"11")])
    broker.join_group("wordcount", ["words"], session_timeout_ms=120_000, assignor="copartitioned")
    broker.close()

    refused = streams("topics", "delete", "wordcount-counts-changelog", cwd=tmp_path)
    one_error_line(
        refused,
        "it is a table's changelog: the table's whole state (up to 1 record)",
        "'wordcount' (1 live member)",
    )
    forced = streams("topics", "delete", "wordcount-counts-changelog", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "wordcount-counts-changelog" not in streams("topics", "list", cwd=tmp_path).stdout

    # An ordinary topic nobody reads goes without --force, saying what went with it.
    plain = streams("topics", "delete", "scratch", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("deleted scratch (up to 0 records")


# --- broker check ---------------------------------------------------------------------------


def test_broker_check_reports_corruption_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "streams.db"
    broker = Broker(str(path))
    broker.create_topic("t", partitions=1)
    producer = BatchProducer(broker)
    for _ in range(200):
        producer.send("t", [(None, b"x" * 200)] * 20)
    broker.close()

    healthy = streams("broker", "check", cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("ok: streams.db: ")

    corrupt_a_table_page(path, "batches")
    before = path.read_bytes()
    result = streams("broker", "check", cwd=tmp_path)
    one_error_line(result, "'streams.db' is corrupt", "restore it from a backup")
    assert path.read_bytes() == before  # checking changes nothing


def test_broker_check_refuses_a_kafka_url(tmp_path: Path) -> None:
    result = streams("--broker", "kafka://localhost:9092", "broker", "check", cwd=tmp_path)
    one_error_line(result, "works on an embedded broker file")


# --- broker backup --------------------------------------------------------------------------

WRITER = """
import sys, time
from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
broker = Broker(sys.argv[1])
producer = BatchProducer(broker)
n = 0
while True:
    producer.send("events", [(None, str(n + i).encode()) for i in range(100)])
    n += 100
    if n == 2000:
        print("writing", flush=True)
"""


@pytest.mark.slow
def test_backup_of_a_live_file_is_consistent_and_complete(tmp_path: Path) -> None:
    """A backup taken while another process writes passes the integrity check and holds
    every record committed before it began, in order."""
    path = tmp_path / "streams.db"
    broker = Broker(str(path))
    broker.create_topic("events", partitions=1)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        tp = TopicPartition("events", 0)
        for n in range(3):
            committed = broker.partition_info("events", 0).high_watermark
            dest = tmp_path / f"backup-{n}.db"
            result = streams("broker", "backup", dest.name, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith(f"backed up streams.db to {dest.name} (")
            assert writer.poll() is None  # it wrote all along
            check = streams("--broker", f"sqlite:///{dest.name}", "broker", "check", cwd=tmp_path)
            assert check.returncode == 0, check.stderr
            copy = Broker(str(dest))
            high = copy.partition_info("events", 0).high_watermark
            assert high >= committed
            values: list[bytes | None] = []
            while len(values) < high:
                fetched = copy.fetch([(tp, len(values))], max_records=10_000)[tp]
                values += [r.value for r in fetched.records]
            assert values == [str(i).encode() for i in range(high)]
            copy.close()
            assert not (tmp_path / f"backup-{n}.db-wal").exists()  # one self-contained file
    finally:
        writer.kill()
        writer.wait()
        broker.close()


def test_backup_refuses_an_existing_destination(tmp_path: Path) -> None:
    assert streams("topics", "create", "t", cwd=tmp_path).returncode == 0
    (tmp_path / "taken.db").write_text("mine")
    one_error_line(streams("broker", "backup", "taken.db", cwd=tmp_path), "'taken.db' exists")
    assert (tmp_path / "taken.db").read_text() == "mine"
