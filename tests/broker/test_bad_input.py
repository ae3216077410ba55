"""Bad input to the broker gets a typed error with a clear message and changes nothing.

Every test takes a snapshot of the whole database (or the bytes of the file) before the bad
call and compares it afterwards: a rejected request must leave no trace.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.broker import EARLIEST, READ_COMMITTED, Broker, ProduceBatch
from runtime.transport import connect
from runtime.types import GroupMetadata, TopicPartition

T0 = TopicPartition("t", 0)


class FakeClock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def snapshot(broker: Broker) -> list[str]:
    """The whole database as SQL text: equal snapshots mean nothing changed."""
    return list(broker.conn.iterdump())


def good(partition: int = 0, seq: int = 0, topic: str = "t") -> ProduceBatch:
    return ProduceBatch(topic, partition, seq, [b"k"], [b"v"], [1_000])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Broker:
    """Topic "t" (3 partitions, 2 records on t[0]); topic "r" whose retention moved its log
    start to 3 (high watermark 4); compacted topic "c"; idempotent producer state."""
    b = Broker(clock=clock)
    b.create_topic("t", 3)
    b.create_topic("r", 1, retention_ms=1_000)
    b.create_topic("c", 1, compacted=True)
    pid, epoch = b.init_producer_id()
    b.produce(pid, epoch, [ProduceBatch("t", 0, 0, [b"a", b"b"], [b"1", b"2"], [0, 0])])
    for seq in range(3):
        b.produce(pid, epoch, [ProduceBatch("r", 0, seq, [None], [b"old"], [0])])
    b.produce(pid, epoch, [ProduceBatch("r", 0, 3, [None], [b"new"], [clock.now])])
    b.maintain()
    info = b.partition_info("r", 0)
    assert (info.log_start, info.high_watermark) == (3, 4)
    return b


@pytest.fixture
def producer(broker: Broker) -> tuple[int, int]:
    return broker.init_producer_id()


def assert_rejected(
    broker: Broker,
    call: Callable[[], Any],
    error: type[BaseException],
    *message_parts: str,
) -> BaseException:
    """`call` raises exactly `error` (a StreamsError) naming `message_parts`, and changes
    nothing in the database."""
    before = snapshot(broker)
    with pytest.raises(errors.StreamsError) as info:
        call()
    assert isinstance(info.value, error), f"expected {error.__name__}, got {info.value!r}"
    for part in message_parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"
    assert snapshot(broker) == before
    return info.value


# --- unknown topics, partitions and offsets -------------------------------------------------


UNKNOWN_TOPIC_CALLS: dict[str, Callable[[Broker, int, int], Any]] = {
    "produce": lambda b, pid, e: b.produce(pid, e, [good(topic="nope")]),
    "fetch": lambda b, pid, e: b.fetch([(TopicPartition("nope", 0), 0)]),
    "describe": lambda b, pid, e: b.describe_topic("nope"),
    "delete": lambda b, pid, e: b.delete_topic("nope"),
    "partition_info": lambda b, pid, e: b.partition_info("nope", 0),
    "list_offset": lambda b, pid, e: b.list_offset(TopicPartition("nope", 0), EARLIEST),
    "commit_offsets": lambda b, pid, e: b.commit_offsets(
        GroupMetadata("g", -1, ""), {TopicPartition("nope", 0): 1}
    ),
}


@pytest.mark.parametrize("operation", UNKNOWN_TOPIC_CALLS)
def test_unknown_topic(broker: Broker, producer: tuple[int, int], operation: str) -> None:
    """An unknown topic is UnknownTopicError naming the topic, for every operation."""
    exc = assert_rejected(
        broker,
        lambda: UNKNOWN_TOPIC_CALLS[operation](broker, *producer),
        errors.UnknownTopicError,
        "'nope'",
    )
    assert not isinstance(exc, errors.PartitionOutOfRangeError)
    assert exc.kafka_code == 3


PARTITION_CALLS: dict[str, Callable[[Broker, int, int], Any]] = {
    "produce 3": lambda b, pid, e: b.produce(pid, e, [good(partition=3)]),
    "produce -1": lambda b, pid, e: b.produce(pid, e, [good(partition=-1)]),
    "fetch 3": lambda b, pid, e: b.fetch([(TopicPartition("t", 3), 0)]),
    "partition_info 7": lambda b, pid, e: b.partition_info("t", 7),
    "list_offset 3": lambda b, pid, e: b.list_offset(TopicPartition("t", 3), EARLIEST),
}


@pytest.mark.parametrize("operation", PARTITION_CALLS)
def test_partition_out_of_range(broker: Broker, producer: tuple[int, int], operation: str) -> None:
    """A partition outside [0, partitions) is PartitionOutOfRangeError giving the range."""
    assert_rejected(
        broker,
        lambda: PARTITION_CALLS[operation](broker, *producer),
        errors.PartitionOutOfRangeError,
        "out of range",
        "'t'",
        "0..2",
    )


@pytest.mark.parametrize(
    ("tp", "offset"),
    [
        (TopicPartition("r", 0), 2),  # below the log start moved by retention
        (TopicPartition("r", 0), 0),
        (TopicPartition("r", 0), 5),  # above the high watermark
        (T0, 3),
        (T0, -1),
        (T0, "0"),
    ],
)
def test_offset_out_of_range(broker: Broker, tp: TopicPartition, offset: Any) -> None:
    """Fetching outside [log start, high watermark] is OffsetOutOfRangeError with the range."""
    info = broker.partition_info(*tp)
    valid = f"{info.log_start}..{info.high_watermark}"
    exc = assert_rejected(
        broker,
        lambda: broker.fetch([(tp, offset)], isolation=READ_COMMITTED),
        errors.OffsetOutOfRangeError,
        valid,
        f"{tp.topic}[{tp.partition}]",
    )
    assert tp in exc.args  # the consumer can tell which partition to reset


def test_offsets_at_both_ends_of_range_are_valid(broker: Broker) -> None:
    """The out-of-range checks above are exact: log start and high watermark are fetchable."""
    r0 = TopicPartition("r", 0)
    assert [r.value for r in broker.fetch([(r0, 3)])[r0].records] == [b"new"]
    assert broker.fetch([(r0, 4)])[r0].records == []


def test_describe_topic_deleted_by_another_connection(tmp_path: Path) -> None:
    """A topic deleted through another connection is unknown to describe_topic too."""
    path = str(tmp_path / "b.db")
    mine, other = Broker(path), Broker(path)
    mine.create_topic("t", 3)
    assert mine.describe_topic("t").partitions == 3
    other.delete_topic("t")
    with pytest.raises(errors.UnknownTopicError, match="'t'"):
        mine.describe_topic("t")
    other.create_topic("t", 1)
    assert mine.describe_topic("t").partitions == 1


def test_null_key_after_topic_recreated_uncompacted(tmp_path: Path) -> None:
    """Topic settings changed through another connection apply at once: a null key is
    accepted once "t" was re-created as a non-compacted topic."""
    path = str(tmp_path / "b.db")
    mine, other = Broker(path), Broker(path)
    mine.create_topic("t", 1, compacted=True)
    pid, epoch = mine.init_producer_id()
    mine.produce(pid, epoch, [good()])
    other.delete_topic("t")
    other.create_topic("t", 1)
    batch = ProduceBatch("t", 0, 1, [None], [b"v"], [0])
    assert mine.produce(pid, epoch, [batch]) == [0]


# --- wrong types in a produce request -------------------------------------------------------


BAD_BATCHES: dict[str, Any] = {
    "str value": ProduceBatch("t", 0, 0, [b"k"], ["v"], [0]),
    "str key": ProduceBatch("t", 0, 0, ["k"], [b"v"], [0]),
    "bytearray value": ProduceBatch("t", 0, 0, [b"k"], [bytearray(b"v")], [0]),
    "int value": ProduceBatch("t", 0, 0, [b"k"], [5], [0]),
    "bytes as value column": ProduceBatch("t", 0, 0, [b"k"], b"v", [0]),
    "float timestamp": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [1.5]),
    "str timestamp": ProduceBatch("t", 0, 0, [b"k"], [b"v"], ["1000"]),
    "None timestamp": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [None]),
    "timestamp beyond int64": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [2**63]),
    "str base_seq": ProduceBatch("t", 0, "0", [b"k"], [b"v"], [0]),
    "more keys than values": ProduceBatch("t", 0, 0, [b"k", b"k"], [b"v"], [0]),
    "fewer timestamps": ProduceBatch("t", 0, 0, [b"k", b"k"], [b"v", b"v"], [0]),
    "headers of another length": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [0], [None, None]),
    "empty batch": ProduceBatch("t", 0, 0, [], [], []),
    "plain tuple": ("t", 0, 0, [b"k"], [b"v"], [0]),
    "None topic": ProduceBatch(None, 0, 0, [b"k"], [b"v"], [0]),
    "str header value": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [0], [[("h", "x")]]),
    "bytes header key": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [0], [[(b"h", b"x")]]),
    "header without its list": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [0], [("h", b"x")]),
    "header of three items": ProduceBatch("t", 0, 0, [b"k"], [b"v"], [0], [[("h", b"x", b"")]]),
    "None keys column": ProduceBatch("t", 0, 0, None, [b"v"], [0]),
    "None timestamps column": ProduceBatch("t", 0, 0, [b"k"], [b"v"], None),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_wrong_types_in_batch(broker: Broker, producer: tuple[int, int], case: str) -> None:
    """A malformed batch is InvalidRequestError and writes nothing."""
    pid, epoch = producer
    assert_rejected(
        broker, lambda: broker.produce(pid, epoch, [BAD_BATCHES[case]]), errors.InvalidRequestError
    )


@pytest.mark.parametrize("partition", ["0", 0.0, None])
def test_non_int_partition(broker: Broker, producer: tuple[int, int], partition: Any) -> None:
    """A partition that is not an int is rejected with a typed error naming it."""
    pid, epoch = producer
    batch = ProduceBatch("t", partition, 0, [b"k"], [b"v"], [0])
    assert_rejected(
        broker,
        lambda: broker.produce(pid, epoch, [batch]),
        (errors.PartitionOutOfRangeError, errors.InvalidRequestError),  # type: ignore[arg-type]
        repr(partition),
    )


def test_bad_batch_rejects_whole_request(broker: Broker, producer: tuple[int, int]) -> None:
    """A request with one bad batch writes none of its good batches either."""
    pid, epoch = producer
    assert_rejected(
        broker,
        lambda: broker.produce(
            pid,
            epoch,
            [good(partition=1), good(partition=2), ProduceBatch("t", 0, 2, [b"k"], ["v"], [0])],
        ),
        errors.InvalidRequestError,
        "bytes",
    )


def test_oversized_record() -> None:
    """A key or value above max_record_bytes is RecordTooLargeError giving both sizes."""
    broker = Broker(max_record_bytes=100)
    broker.create_topic("t", 1)
    pid, epoch = broker.init_producer_id()
    for keys, values in (([None], [b"x" * 101]), ([b"k" * 101], [b"v"])):
        batch = ProduceBatch("t", 0, 0, keys, values, [0])
        assert_rejected(
            broker,
            lambda b=batch: broker.produce(pid, epoch, [b]),
            errors.RecordTooLargeError,
            "101",
            "100",
        )
    assert broker.produce(pid, epoch, [ProduceBatch("t", 0, 0, [b"k"], [b"x" * 100], [0])]) == [0]


def test_oversized_record_default_limit(broker: Broker, producer: tuple[int, int]) -> None:
    """The default limit is 1 MiB per key or value."""
    pid, epoch = producer
    batch = ProduceBatch("t", 1, 0, [None], [b"x" * ((1 << 20) + 1)], [0])
    assert_rejected(
        broker,
        lambda: broker.produce(pid, epoch, [batch]),
        errors.RecordTooLargeError,
        str((1 << 20) + 1),
    )


def test_null_key_on_compacted_topic(broker: Broker, producer: tuple[int, int]) -> None:
    """A record without a key on a compacted topic is InvalidRequestError naming the topic."""
    pid, epoch = producer
    batch = ProduceBatch("c", 0, 0, [b"k", None], [b"v", b"w"], [0, 0])
    assert_rejected(
        broker,
        lambda: broker.produce(pid, epoch, [batch]),
        errors.InvalidRequestError,
        "'c'",
        "key",
    )


# --- topic creation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "a b", "x" * 250, ".", "..", "tö", "a/b", "a:b", None, 5, b"t"]
)
def test_invalid_topic_name(broker: Broker, name: Any) -> None:
    """An invalid topic name is InvalidTopicError quoting the name; no topic is created."""
    assert_rejected(
        broker, lambda: broker.create_topic(name, 1), errors.InvalidTopicError, repr(name)
    )


def test_valid_topic_name_edges(broker: Broker) -> None:
    """The name rule is not too strict: 249 characters and all allowed symbols work."""
    broker.create_topic("x" * 249, 1)
    broker.create_topic("A.b_c-9", 1)
    assert broker.describe_topic("A.b_c-9").partitions == 1


@pytest.mark.parametrize("partitions", [0, -1, 10_001, "3", 2.0, True, None])
def test_invalid_partition_count(broker: Broker, partitions: Any) -> None:
    """A partition count outside 1..10000 or not an int is InvalidPartitionsError."""
    assert_rejected(
        broker,
        lambda: broker.create_topic("new", partitions),
        errors.InvalidPartitionsError,
        repr(partitions),
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"retention_ms": 0},
        {"retention_ms": -5},
        {"retention_ms": "1000"},
        {"retention_bytes": 0},
        {"retention_bytes": 1.5},
        {"delete_retention_ms": -1},
        {"delete_retention_ms": "x"},
        {"delete_retention_ms": None},
        {"compacted": "yes"},
    ],
    ids=repr,
)
def test_invalid_topic_settings(broker: Broker, settings: dict[str, Any]) -> None:
    """An invalid retention setting is InvalidRequestError naming it; no topic is created."""
    (label,) = settings
    assert_rejected(
        broker, lambda: broker.create_topic("new", 1, **settings), errors.InvalidRequestError, label
    )


def test_duplicate_topic(broker: Broker) -> None:
    """Creating an existing topic is TopicExistsError; the existing topic is untouched."""
    assert_rejected(
        broker, lambda: broker.create_topic("t", 5, compacted=True), errors.TopicExistsError, "'t'"
    )
    assert broker.describe_topic("t").partitions == 3
    assert not broker.describe_topic("t").compacted


# --- other bad requests ---------------------------------------------------------------------


def _idempotent(b: Broker) -> tuple[int, int]:
    return b.init_producer_id()


def _idle_transactional(b: Broker) -> tuple[int, int]:
    return b.init_producer_id("idle")


def _open_transaction(b: Broker) -> tuple[int, int]:
    pid, epoch = b.init_producer_id("tx")
    b.produce(pid, epoch, [good(partition=1)], transactional=True)
    return pid, epoch


Setup = Callable[[Broker], tuple[int, int]]
Call = Callable[[Broker, int, int], Any]
NO_MEMBER = GroupMetadata("g", -1, "")

# case -> (setup giving a producer's pid and epoch, the bad call, the error it must raise)
OTHER_BAD_CALLS: dict[str, tuple[Setup, Call, type[BaseException]]] = {
    "isolation level": (
        _idempotent,
        lambda b, pid, e: b.fetch([(T0, 0)], isolation="dirty"),
        errors.InvalidRequestError,
    ),
    "max_records 0": (
        _idempotent,
        lambda b, pid, e: b.fetch([(T0, 0)], max_records=0),
        errors.InvalidRequestError,
    ),
    "list_offset spec": (
        _idempotent,
        lambda b, pid, e: b.list_offset(T0, "middle"),
        errors.InvalidRequestError,
    ),
    "list_offset float": (
        _idempotent,
        lambda b, pid, e: b.list_offset(T0, 1.5),
        errors.InvalidRequestError,
    ),
    "list_offset isolation level": (
        _idempotent,
        lambda b, pid, e: b.list_offset(T0, "latest", "dirty"),
        errors.InvalidRequestError,
    ),
    "transaction timeout 0": (
        _idempotent,
        lambda b, pid, e: b.init_producer_id("x", 0),
        errors.InvalidTransactionTimeoutError,
    ),
    "transaction timeout too long": (
        _idempotent,
        lambda b, pid, e: b.init_producer_id("x", 900_001),
        errors.InvalidTransactionTimeoutError,
    ),
    "empty transactional id": (
        _idempotent,
        lambda b, pid, e: b.init_producer_id(""),
        errors.InvalidRequestError,
    ),
    "unknown producer id": (
        _idempotent,
        lambda b, pid, e: b.produce(pid + 100, 0, [good(1)]),
        errors.UnknownProducerIdError,
    ),
    "future epoch": (
        _idempotent,
        lambda b, pid, e: b.produce(pid, e + 1, [good(1)]),
        errors.InvalidProducerEpochError,
    ),
    "transactional batch without transactional id": (
        _idempotent,
        lambda b, pid, e: b.produce(pid, e, [good(1)], transactional=True),
        errors.InvalidTxnStateError,
    ),
    "end_transaction of idempotent producer": (
        _idempotent,
        lambda b, pid, e: b.end_transaction(pid, e, commit=True),
        errors.InvalidTxnStateError,
    ),
    "end_transaction with no open transaction": (
        _idle_transactional,
        lambda b, pid, e: b.end_transaction(pid, e, commit=True),
        errors.InvalidTxnStateError,
    ),
    "plain write during a transaction": (
        _open_transaction,
        lambda b, pid, e: b.produce(pid, e, [good(2)]),
        errors.InvalidTxnStateError,
    ),
    "send_offsets without member": (
        _open_transaction,
        lambda b, pid, e: b.send_offsets_to_transaction(pid, e, {T0: 1}, NO_MEMBER),
        errors.InvalidTxnStateError,
    ),
    "send_offsets without transactional id": (
        _idempotent,
        lambda b, pid, e: b.send_offsets_to_transaction(pid, e, {T0: 1}, NO_MEMBER),
        errors.InvalidTxnStateError,
    ),
    "negative committed offset": (
        _idempotent,
        lambda b, pid, e: b.commit_offsets(NO_MEMBER, {T0: -5}),
        errors.InvalidRequestError,
    ),
    "offsets not a mapping": (
        _idempotent,
        lambda b, pid, e: b.commit_offsets(NO_MEMBER, [(T0, 1)]),
        errors.InvalidRequestError,
    ),
    "empty group id": (
        _idempotent,
        lambda b, pid, e: b.join_group("", ["t"]),
        errors.InvalidRequestError,
    ),
    "zero session timeout": (
        _idempotent,
        lambda b, pid, e: b.join_group("g", ["t"], session_timeout_ms=0),
        errors.InvalidRequestError,
    ),
    "heartbeat of unknown member": (
        _idempotent,
        lambda b, pid, e: b.heartbeat("g", "nobody"),
        errors.UnknownMemberIdError,
    ),
}


@pytest.mark.parametrize("case", OTHER_BAD_CALLS)
def test_other_bad_requests(broker: Broker, case: str) -> None:
    """Other malformed or ill-timed requests get their typed error and change nothing."""
    setup, call, error = OTHER_BAD_CALLS[case]
    pid, epoch = setup(broker)
    assert_rejected(broker, lambda: call(broker, pid, epoch), error)


def test_commit_offsets_keyed_by_plain_tuples(broker: Broker) -> None:
    """Offsets keyed by ("t", 0) tuples (accepted by the validation) work or are rejected
    cleanly; they never crash with an untyped error."""
    before = snapshot(broker)
    try:
        broker.commit_offsets(GroupMetadata("g", -1, ""), {("t", 0): 1})
    except errors.StreamsError:
        assert snapshot(broker) == before
    else:
        assert broker.committed_offsets("g", [T0]) == {T0: 1}


# --- the broker's database file -------------------------------------------------------------


def files_in(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def assert_refused(path: Path, error: type[errors.DatabaseError], *message_parts: str) -> None:
    """Opening `path` raises `error` naming the path; no file in its directory changes."""
    before = files_in(path.parent)
    with pytest.raises(error) as info:
        Broker(str(path))
    for part in (str(path), *message_parts):
        assert part in str(info.value), f"{part!r} not in {info.value}"
    assert files_in(path.parent) == before


def test_text_file_is_not_a_database(tmp_path: Path) -> None:
    """A text file as the broker path is NotADatabaseError; its bytes are unchanged."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"remember the milk\n" * 100)
    assert_refused(path, errors.NotADatabaseError, "not an SQLite database")


def test_short_file_is_not_a_database(tmp_path: Path) -> None:
    """A file shorter than the SQLite header is NotADatabaseError, not a new database."""
    path = tmp_path / "tiny"
    path.write_bytes(b"hi")
    assert_refused(path, errors.NotADatabaseError)


def test_corrupt_sqlite_file_is_not_a_database(tmp_path: Path) -> None:
    """A file with the SQLite magic but garbage after it is NotADatabaseError, unchanged."""
    path = tmp_path / "broken.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    assert_refused(path, errors.NotADatabaseError)


def _foreign_database(path: Path, journal_mode: str = "delete") -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada'), ('grace')")
    conn.commit()
    conn.close()


def _tables(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
    finally:
        conn.close()


def test_foreign_database(tmp_path: Path) -> None:
    """Another program's SQLite database is ForeignDatabaseError; bytes and tables unchanged."""
    path = tmp_path / "app.db"
    _foreign_database(path)
    assert_refused(path, errors.ForeignDatabaseError, "another program")
    assert _tables(path) == ["customers"]


def test_foreign_wal_database_leaves_no_files(tmp_path: Path) -> None:
    """Another program's WAL-mode database is refused without creating -wal/-shm files."""
    path = tmp_path / "app.db"
    _foreign_database(path, journal_mode="wal")
    assert sorted(os.listdir(tmp_path)) == ["app.db"]
    assert_refused(path, errors.ForeignDatabaseError, "another program")


def test_foreign_application_id(tmp_path: Path) -> None:
    """An empty database stamped by another program (application_id) is not adopted."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 42")
    conn.close()
    assert_refused(path, errors.ForeignDatabaseError, "0x2a")
    assert _tables(path) == []


def test_other_schema_version(tmp_path: Path) -> None:
    """A streams database of another schema version is SchemaVersionError, left unchanged."""
    path = tmp_path / "b.db"
    broker = Broker(str(path))
    broker.create_topic("t", 1)
    broker.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(errors.SchemaVersionError) as info:
        Broker(str(path))
    assert "version 7" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before


def test_directory_as_path(tmp_path: Path) -> None:
    """A directory as the broker path is NotADatabaseError; nothing is created in it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_bytes(b"x")
    before = files_in(tmp_path)
    with pytest.raises(errors.NotADatabaseError) as info:
        Broker(str(tmp_path / "data"))
    assert "directory" in str(info.value)
    assert files_in(tmp_path) == before


def test_missing_directory(tmp_path: Path) -> None:
    """A path in a directory that does not exist is a DatabaseError, not sqlite3's error."""
    with pytest.raises(errors.DatabaseError) as info:
        Broker(str(tmp_path / "missing" / "b.db"))
    assert "missing" in str(info.value)
    assert not (tmp_path / "missing").exists()


# --- transport URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [("foo://x", "'foo'"), ("nonsense", "'nonsense'"), ("", "''"), (None, "None")],
)
def test_bad_transport_url(url: Any, message: str) -> None:
    """A URL with an unknown scheme, or no scheme, is ConfigurationError quoting it."""
    with pytest.raises(errors.ConfigurationError) as info:
        connect(url)
    assert message in str(info.value)
    assert "sqlite://" in str(info.value)  # and says what would work
