"""The broker file under faults: a full disk, a crash of its last user, a corrupt page.

A full disk is a typed, retriable error that changes nothing, and writes succeed again, on the
same connection and producer, once space returns. A file that was not closed cleanly is
quick-checked by its first opener and refused when corrupt."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import errors
from runtime.broker import Broker, ProduceBatch
from runtime.broker.integrity import OPEN_COUNTER, check_file
from runtime.transport import connect
from runtime.types import TopicPartition
from tests.disk_helpers import corrupt_a_table_page, small_disk, stale_index_entry

ROOT = Path(__file__).resolve().parents[2]
TP = TopicPartition("t", 0)


def read_all(broker: Broker) -> list[bytes | None]:
    values: list[bytes | None] = []
    while True:
        fetched = broker.fetch([(TP, len(values))], max_records=100_000)[TP]
        if not fetched.records:
            return values
        values += [r.value for r in fetched.records]


def test_a_full_disk_fails_a_write_typed_changes_nothing_and_passes(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        broker = Broker(str(disk.path / "app.db"))
        broker.create_topic("t", partitions=1)
        pid, epoch = broker.init_producer_id()
        written: list[bytes | None] = []

        def produce(n: int) -> None:
            first = len(written)
            values: list[bytes | None] = [f"{first + i:06d}".encode() * 300 for i in range(n)]
            batch = ProduceBatch("t", 0, len(written), [None] * n, values, [0] * n)
            broker.produce(pid, epoch, [batch])
            written.extend(values)

        produce(5)
        disk.fill(broker)
        with pytest.raises(errors.DiskFullError) as info:
            for _ in range(200):
                produce(10)
        assert isinstance(info.value, errors.ResourceError) and info.value.retriable
        message = str(info.value)
        assert "\n" not in message and "the disk is full" in message and "app.db" in message
        high = broker.partition_info("t", 0).high_watermark
        assert high == len(written)  # the failed write changed nothing
        assert read_all(broker) == written  # and lost nothing committed before it
        with pytest.raises(errors.DiskFullError):
            broker.create_topic("other", partitions=10_000)  # metadata writes fail alike ...
        with pytest.raises(errors.UnknownTopicError):
            broker.describe_topic("other")  # ... and leave no trace, not even in a cache

        disk.free(broker)
        produce(50)  # the same connection and sequence numbers go on
        broker.create_topic("other", partitions=10_000)
        assert read_all(broker) == written
        broker.close()
        again = Broker(str(disk.path / "app.db"))
        assert read_all(again) == written
        again.close()


def test_a_send_on_a_full_disk_gets_the_error_and_the_producer_recovers(tmp_path: Path) -> None:
    """`send()` waits for its record's delivery: a failed write must resolve it with the
    error; once space returns the same producer goes on (nothing stuck, sequences intact)."""

    async def main(disk_path: Path) -> None:
        with small_disk(disk_path) as disk:
            async with connect(f"sqlite:///{disk.path}/app.db") as transport:
                await transport.create_topic("t", partitions=1)
                broker = transport.broker  # type: ignore[attr-defined]
                producer = transport.producer()
                await producer.send("t", b"warm-up")
                disk.fill(broker)
                with pytest.raises(errors.DiskFullError):
                    for _ in range(200):
                        await asyncio.wait_for(producer.send("t", b"x" * 100_000), 5)
                with pytest.raises(errors.DiskFullError):
                    await producer.flush()  # the error also reaches the next flush, once
                await producer.flush()
                disk.free(broker)
                meta = await asyncio.wait_for(producer.send("t", b"after"), 5)
                records = broker.fetch([(TP, 0)], max_records=1000)[TP].records
                assert [r.value for r in records] == [b"warm-up", b"after"]
                assert meta.offset == 1
                await producer.close()

    asyncio.run(main(tmp_path / "disk"))


def test_a_send_whose_producer_id_cannot_be_written_gets_the_error(tmp_path: Path) -> None:
    """A producer's first write is its producer id: when that fails, the record's `send()`
    gets the error (it used to wait forever), and the next send tries again."""

    async def main() -> None:
        async with connect(f"sqlite:///{tmp_path}/app.db") as transport:
            await transport.create_topic("t", partitions=1)
            broker = transport.broker  # type: ignore[attr-defined]
            real = broker.init_producer_id
            full = errors.DiskFullError("the disk is full")

            def init_producer_id(*args: object) -> tuple[int, int]:
                raise full

            broker.init_producer_id = init_producer_id
            producer = transport.producer()
            with pytest.raises(errors.DiskFullError):
                await asyncio.wait_for(producer.send("t", b"first"), 5)
            with pytest.raises(errors.DiskFullError):
                await producer.flush()
            broker.init_producer_id = real
            meta = await asyncio.wait_for(producer.send("t", b"second"), 5)
            assert meta.offset == 0
            await producer.close()

    asyncio.run(main())


# --- closing cleanly, and the check at open ---------------------------------------------------

CRASHING_WRITER = """
import os, sys
from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
broker = Broker(sys.argv[1])
broker.create_topic("t", partitions=1)
producer = BatchProducer(broker)
for _ in range(int(sys.argv[2])):
    producer.send("t", [(None, b"v" * 100)] * int(sys.argv[3]))
os._exit(0)  # as kill -9 would: no close
"""


def crash_while_writing(path: Path, batches: int = 300, records: int = 20) -> None:
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(path), str(batches), str(records)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def open_mark(path: Path) -> int | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (OPEN_COUNTER,))
        found = row.fetchone()
        return None if found is None else int(found[0])
    finally:
        conn.close()


def test_the_last_close_marks_the_file_clean(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    first, second = Broker(str(path)), Broker(str(path))
    first.create_topic("t")
    first.close()
    assert open_mark(path) == 1  # the second still has it open
    second.close()
    assert not Path(f"{path}-wal").exists()
    assert open_mark(path) == 0


def test_a_corrupt_file_left_by_a_crash_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    crash_while_writing(path)
    assert Path(f"{path}-wal").stat().st_size > 0
    corrupt_a_table_page(path, "batches")  # (this also checkpoints the write-ahead log away)
    before = path.read_bytes()
    with pytest.raises(errors.DatabaseError) as info:
        Broker(str(path))
    message = str(info.value)
    assert "was not closed cleanly and is corrupt" in message and "\n" not in message
    assert "restore it from a backup" in message
    assert path.read_bytes() == before
    assert check_file(str(path)).problems


def test_a_file_left_by_a_crash_with_an_index_that_misses_rows_is_refused(tmp_path: Path) -> None:
    """The damage of a file copied while in use: well-formed pages (quick_check passes), an
    index that misses a row, so fetches would skip records. The check at open finds it."""
    path = tmp_path / "app.db"
    crash_while_writing(path, batches=30, records=3)
    stale_index_entry(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    conn.close()
    with pytest.raises(errors.DatabaseError, match="missing from index"):
        Broker(str(path))
    assert check_file(str(path)).problems


def test_a_healthy_file_left_by_a_crash_opens(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    crash_while_writing(path)
    broker = Broker(str(path))
    assert len(read_all(broker)) == 300 * 20
    assert open_mark(path) == 1
    broker.close()
    assert open_mark(path) == 0


def test_check_file_finds_a_flipped_payload_byte(tmp_path: Path) -> None:
    """A byte flipped inside a record batch leaves SQLite's structure intact: the batch CRC
    finds it."""
    path = tmp_path / "app.db"
    broker = Broker(str(path))
    broker.create_topic("t")
    broker.produce(-1, 0, [ProduceBatch("t", 0, -1, [None], [b"needle" * 50], [0])])
    broker.close()
    data = path.read_bytes()
    at = data.index(b"needle" * 50)
    path.write_bytes(data[:at] + b"N" + data[at + 1 :])
    problems = check_file(str(path)).problems
    assert len(problems) == 1 and "checksum mismatch" in problems[0]


def test_an_io_error_on_a_full_file_system_is_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a file on a full disk fails to grow its -shm: SQLite says "disk I/O error".
    With no space left that is a DiskFullError (retriable), never "corrupt"."""
    from runtime.broker import schema

    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 4874  # SQLITE_IOERR_SHMSIZE
    path = str(tmp_path / "app.db")
    assert type(schema.storage_error(error, path)) is errors.ResourceError

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(schema.os, "statvfs", lambda _: Full)
    mapped = schema.storage_error(error, path)
    assert isinstance(mapped, errors.DiskFullError) and "the disk is full" in str(mapped)
    assert not schema.is_corruption(error)
