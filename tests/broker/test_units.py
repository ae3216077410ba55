"""Units of the broker: the partitioner, the batch codec, the sticky assignor, retention,
compaction and offsets by time."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import errors
from runtime.broker import (
    EARLIEST,
    LATEST,
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Broker,
    ProduceBatch,
)
from runtime.broker.assignor import sticky_assign
from runtime.broker.codec import decode_batch, encode_batch
from runtime.broker.schema import ABORT_MARKER, ABORTED, COMMIT_MARKER
from runtime.partitioner import Partitioner, murmur2, partition_for_key
from runtime.types import Record, TopicPartition

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class FakeClock:
    def __init__(self, now: int = 10_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def read_all(
    broker: Broker,
    tp: TopicPartition,
    isolation: str = READ_UNCOMMITTED,
    start: int | None = None,
    page: int = 1000,
) -> list[Record]:
    """Records from `start` (default: the log start) to the end, following next_offset."""
    offset = broker.partition_info(*tp).log_start if start is None else start
    records: list[Record] = []
    for _ in range(10_000):
        result = broker.fetch([(tp, offset)], max_records=page, isolation=isolation)[tp]
        records += result.records
        if result.next_offset == offset:
            return records
        offset = result.next_offset
    raise AssertionError("fetch never stopped advancing")


def kinds(broker: Broker, tp: TopicPartition) -> list[int]:
    rows = broker.conn.execute(
        "SELECT b.kind FROM batches b JOIN partitions p ON p.id = b.tp"
        " JOIN topics t ON t.id = p.topic_id WHERE t.name = ? AND p.partition = ?"
        " ORDER BY b.base_offset",
        tp,
    ).fetchall()
    return [r[0] for r in rows]


# --- murmur2 and the default partitioner ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka_test_vectors(data: bytes, expected: int) -> None:
    """murmur2 equals Kafka's Utils.murmur2 (vectors of Kafka's UtilsTest)."""
    assert murmur2(data) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_partition_for_key_matches_java_client(key: bytes, expected: int) -> None:
    """A key lands on the partition the Java client picks, with 1000 partitions."""
    assert partition_for_key(key, 1000) == expected


@given(st.binary(max_size=64), st.integers(1, 10_000))
def test_murmur2_is_signed_32_bit_and_placement_in_range(key: bytes, partitions: int) -> None:
    """murmur2 is a signed 32-bit int; the placement is in [0, partitions)."""
    assert -(2**31) <= murmur2(key) < 2**31
    assert 0 <= partition_for_key(key, partitions) < partitions


@given(st.lists(st.binary(max_size=16), max_size=50), st.integers(1, 64))
def test_partitioner_places_keys_as_kafka(keys: list[bytes], partitions: int) -> None:
    """Keyed records go to murmur2's partition, cached or not (a tiny cache is cleared)."""
    partitioner = Partitioner(cache_size=3)
    for key in keys + keys:
        assert partitioner.partition("t", key, partitions) == partition_for_key(key, partitions)


def test_keyless_records_stick_until_next_batch() -> None:
    """Keyless records stay on one partition until next_batch moves the topic on."""
    partitioner = Partitioner()
    seen = []
    for _ in range(12):
        first = partitioner.partition("t", None, 4)
        assert all(partitioner.partition("t", None, 4) == first for _ in range(10))
        seen.append(first)
        partitioner.next_batch("t")
    assert all(a != b for a, b in pairwise(seen))
    assert Counter(seen) == {0: 3, 1: 3, 2: 3, 3: 3}


def test_keyless_sticky_partition_is_per_topic() -> None:
    """next_batch of one topic does not move another topic's sticky partition."""
    partitioner = Partitioner()
    a = partitioner.partition("a", None, 8)
    b = partitioner.partition("b", None, 8)
    partitioner.next_batch("b")
    assert partitioner.partition("a", None, 8) == a
    assert partitioner.partition("b", None, 8) != b


def test_keyless_sticky_partition_follows_partition_count() -> None:
    """A sticky partition that no longer exists (fewer partitions) is replaced."""
    partitioner = Partitioner()
    for _ in range(3):
        partitioner.partition("t", None, 8)
        partitioner.next_batch("t")
    assert partitioner.partition("t", None, 8) == 3
    assert 0 <= partitioner.partition("t", None, 2) < 2


def test_keyless_records_spread_over_all_partitions_of_interleaved_topics() -> None:
    """Keyless batches of two topics sent alternately still reach every partition of each."""
    partitioner = Partitioner()
    used: dict[str, Counter[int]] = {"a": Counter(), "b": Counter()}
    for _ in range(100):
        for topic in ("a", "b"):
            used[topic][partitioner.partition(topic, None, 4)] += 1
            partitioner.next_batch(topic)
    assert set(used["a"]) == {0, 1, 2, 3}, used
    assert set(used["b"]) == {0, 1, 2, 3}, used


# --- the batch codec ------------------------------------------------------------------------


maybe_bytes = st.one_of(st.none(), st.binary(max_size=40), st.just(b""))
header_lists = st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=12)), max_size=3)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list, list, list, list | None, list[int] | None]:
    count = draw(st.integers(1, 20))
    keys = draw(st.lists(maybe_bytes, min_size=count, max_size=count))
    values = draw(st.lists(maybe_bytes, min_size=count, max_size=count))
    timestamps = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=count, max_size=count))
    headers = draw(st.none() | st.lists(st.none() | header_lists, min_size=count, max_size=count))
    deltas = None
    if draw(st.booleans()):
        gaps = draw(st.lists(st.integers(1, 1000), min_size=count - 1, max_size=count - 1))
        deltas = [0]
        for gap in gaps:
            deltas.append(deltas[-1] + gap)
    return keys, values, timestamps, headers, deltas


@given(batches())
@settings(max_examples=200)
def test_codec_round_trip(batch: tuple) -> None:
    """decode(encode(columns)) gives the columns back: None and b"" keys and values, any
    int64 timestamp, headers, offset deltas."""
    keys, values, timestamps, headers, deltas = batch
    decoded = decode_batch(encode_batch(keys, values, timestamps, headers, deltas))
    # A batch in which no record has headers (all None) stores none: it decodes to None. An
    # empty header list is a value, kept as [].
    expected_headers = (
        headers if headers is not None and any(h is not None for h in headers) else None
    )
    assert decoded == (keys, values, timestamps, expected_headers, deltas)
    assert [type(k) for k in decoded[0]] == [type(k) for k in keys]  # b"" is not None


@given(batches(), st.data())
@settings(max_examples=100)
def test_codec_truncated_payload_is_database_error(batch: tuple, data: st.DataObject) -> None:
    """A payload cut short anywhere is a DatabaseError, never garbage records."""
    blob = encode_batch(*batch)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(errors.DatabaseError, match="corrupt record batch"):
        decode_batch(blob[:cut])


@given(batches(), st.binary(min_size=1, max_size=8))
@settings(max_examples=50)
def test_codec_trailing_bytes_are_database_error(batch: tuple, extra: bytes) -> None:
    """A payload with bytes after its end is a DatabaseError."""
    with pytest.raises(errors.DatabaseError):
        decode_batch(encode_batch(*batch) + extra)


@given(st.binary(max_size=200))
@settings(max_examples=300, derandomize=True)
def test_codec_random_bytes_raise_only_database_error(blob: bytes) -> None:
    """Arbitrary bytes either decode into consistent columns or raise DatabaseError."""
    try:
        keys, values, timestamps, headers, deltas = decode_batch(blob)
    except errors.DatabaseError:
        return
    assert len(keys) == len(timestamps) == len(values)
    assert headers is None or len(headers) == len(values)
    assert deltas is None or len(deltas) == len(values)


def _with_headers_json(document: bytes) -> bytes:
    """A one-record batch whose headers section holds `document`, with a valid checksum (so
    the decoder reaches the headers)."""
    body = encode_batch([b"k"], [b"v"], [0])[4:]  # without its CRC-32
    prefix = 13 + 4 + 4 + 8  # fixed header, key length, value length, timestamp
    body = (
        bytes([body[0] | 0x02])
        + body[1:prefix]
        + struct.pack("<I", len(document))
        + document
        + body[prefix:]
    )
    return struct.pack("<I", zlib.crc32(body)) + body


def test_codec_detects_a_flipped_bit() -> None:
    """Every byte of a payload is covered by its checksum: one flipped bit is a DatabaseError."""
    payload = bytearray(encode_batch([b"key"], [b"value"], [1]))
    for position in range(len(payload)):
        corrupt = bytearray(payload)
        corrupt[position] ^= 0x10
        with pytest.raises(errors.DatabaseError):
            decode_batch(bytes(corrupt))


@pytest.mark.parametrize("document", [b"[[[", b"[1]", b"[[[1, 2]]]", b"{}"])
def test_codec_corrupt_headers_are_database_error(document: bytes) -> None:
    """A corrupt headers section (bad JSON, or JSON of the wrong shape) is a DatabaseError."""
    with pytest.raises(errors.DatabaseError):
        decode_batch(_with_headers_json(document))


def test_corrupt_stored_batch_fails_fetch_with_database_error() -> None:
    """A corrupt payload in the database makes fetch raise DatabaseError, not crash."""
    broker = Broker()
    broker.create_topic("t", 1)
    pid, epoch = broker.init_producer_id()
    broker.produce(pid, epoch, [ProduceBatch("t", 0, 0, [b"k"], [b"value"], [0])])
    broker.conn.execute("UPDATE batches SET payload = substr(payload, 1, 20)")
    with pytest.raises(errors.DatabaseError, match="corrupt"):
        broker.fetch([(TopicPartition("t", 0), 0)])


# --- the sticky assignor --------------------------------------------------------------------


TOPICS = ("a", "b", "c")


@st.composite
def groups(draw: st.DrawFn, homogeneous: bool = False) -> tuple[dict, dict[str, int]]:
    """(members: id -> (topics, currently held), partition counts) with arbitrary, possibly
    invalid or overlapping current holdings."""
    counts = {
        t: draw(st.integers(1, 12))
        for t in draw(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True))
    }
    n = draw(st.integers(1, 6))
    all_topics = frozenset(counts) | (frozenset({"gone"}) if draw(st.booleans()) else frozenset())
    members = {}
    for i in range(n):
        topics = (
            all_topics
            if homogeneous
            else frozenset(
                draw(st.lists(st.sampled_from(sorted(all_topics)), min_size=1, unique=True))
            )
        )
        held = draw(st.sets(st.tuples(st.sampled_from(TOPICS), st.integers(-1, 13)), max_size=8))
        members[f"m{i}"] = (topics, held)
    return members, counts


def _expected_partitions(members: dict, counts: dict[str, int]) -> set[tuple[str, int]]:
    subscribed = {t for topics, _ in members.values() for t in topics}
    return {(t, p) for t, n in counts.items() if t in subscribed for p in range(n)}


@given(groups())
@FAST
def test_assignor_assigns_each_partition_once_to_a_subscriber(group: tuple) -> None:
    """Every subscribed partition goes to exactly one member, which subscribes its topic."""
    members, counts = group
    result = sticky_assign(members, counts)
    assert set(result) == set(members)
    owned = [tp for tps in result.values() for tp in tps]
    assert len(owned) == len(set(owned))
    assert set(owned) == _expected_partitions(members, counts)
    for member, tps in result.items():
        assert {t for t, _ in tps} <= set(members[member][0])


@given(groups())
@FAST
def test_assignor_is_balanced_within_one(group: tuple) -> None:
    """No member holds 2+ more partitions than another member able to take one of them."""
    members, counts = group
    result = sticky_assign(members, counts)
    for owner, tps in result.items():
        for topic, _ in tps:
            for other, (topics, _) in members.items():
                if topic in topics:
                    assert len(tps) - len(result[other]) <= 1, (owner, other, result)


@given(groups(homogeneous=True))
@FAST
def test_assignor_homogeneous_group_is_balanced_within_one(group: tuple) -> None:
    """With equal subscriptions, member loads differ by at most one."""
    members, counts = group
    loads = [len(tps) for tps in sticky_assign(members, counts).values()]
    assert max(loads) - min(loads) <= 1


@given(groups())
@FAST
def test_assignor_is_stable(group: tuple) -> None:
    """Assigning again from its own result moves nothing."""
    members, counts = group
    first = sticky_assign(members, counts)
    again = sticky_assign({m: (members[m][0], first[m]) for m in members}, counts)
    assert again == first


@given(groups(homogeneous=True))
@FAST
def test_assignor_join_moves_minimum(group: tuple) -> None:
    """When a member joins a balanced group, only the partitions it needs move, all to it."""
    members, counts = group
    before = sticky_assign(members, counts)
    topics = next(iter(members.values()))[0]
    after = sticky_assign(
        {**{m: (members[m][0], before[m]) for m in members}, "new": (topics, set())}, counts
    )
    for member in members:
        assert after[member] <= before[member], "an old member gained a partition"
    total = sum(len(tps) for tps in before.values())
    assert len(after["new"]) == total // (len(members) + 1)


@given(groups(homogeneous=True), st.data())
@FAST
def test_assignor_leave_keeps_remaining_owners(group: tuple, data: st.DataObject) -> None:
    """When a member leaves, the others keep every partition they held (equal subscriptions)."""
    members, counts = group
    before = sticky_assign(members, counts)
    leaving = data.draw(st.sampled_from(sorted(members)))
    rest = {m: (members[m][0], before[m]) for m in members if m != leaving}
    after = sticky_assign(rest, counts)
    for member in rest:
        assert before[member] <= after[member]


def test_assignor_older_member_wins_ties() -> None:
    """Members are in join order: with an odd count, the older member gets the extra one."""
    result = sticky_assign({"old": ({"w"}, set()), "new": ({"w"}, set())}, {"w": 3})
    assert (len(result["old"]), len(result["new"])) == (2, 1)


# --- retention ------------------------------------------------------------------------------


R0 = TopicPartition("r", 0)


def produce_one(
    broker: Broker,
    pid: int,
    epoch: int,
    seq: int,
    value: bytes,
    ts: int,
    tp: TopicPartition = R0,
    transactional: bool = False,
) -> int:
    return broker.produce(
        pid,
        epoch,
        [ProduceBatch(tp.topic, tp.partition, seq, [b"k"], [value], [ts])],
        transactional=transactional,
    )[0]


def test_retention_by_time_deletes_old_batches() -> None:
    """Batches whose newest record is older than retention_ms go; log_start moves past."""
    clock = FakeClock()
    broker = Broker(clock=clock)
    broker.create_topic("r", 1, retention_ms=1_000)
    pid, epoch = broker.init_producer_id()
    now = clock.now
    for seq, ts in enumerate([now - 5_000, now - 2_000, now - 1_001, now - 999, now]):
        produce_one(broker, pid, epoch, seq, b"v%d" % seq, ts)
    assert broker.maintain() == {"batches_deleted": 3, "records_compacted": 0}
    info = broker.partition_info("r", 0)
    assert (info.log_start, info.high_watermark, info.batches) == (3, 5, 2)
    assert [r.value for r in read_all(broker, R0)] == [b"v3", b"v4"]
    assert broker.list_offset(R0, EARLIEST) == 3
    with pytest.raises(errors.OffsetOutOfRangeError):
        broker.fetch([(R0, 2)])


def test_retention_by_time_deletes_only_whole_batches() -> None:
    """A batch with an old first record but a recent last one is kept whole."""
    clock = FakeClock()
    broker = Broker(clock=clock)
    broker.create_topic("r", 1, retention_ms=1_000)
    pid, epoch = broker.init_producer_id()
    broker.produce(
        pid,
        epoch,
        [ProduceBatch("r", 0, 0, [None, None], [b"old", b"new"], [clock.now - 10_000, clock.now])],
    )
    broker.maintain()
    assert broker.partition_info("r", 0).log_start == 0
    assert [r.value for r in read_all(broker, R0)] == [b"old", b"new"]


def test_retention_by_time_stops_at_first_recent_batch() -> None:
    """Retention only cuts a prefix: an old batch after a recent one stays (offsets stay
    contiguous from log_start)."""
    clock = FakeClock()
    broker = Broker(clock=clock)
    broker.create_topic("r", 1, retention_ms=1_000)
    pid, epoch = broker.init_producer_id()
    for seq, ts in enumerate([0, clock.now, 0]):
        produce_one(broker, pid, epoch, seq, b"v%d" % seq, ts)
    broker.maintain()
    assert broker.partition_info("r", 0).log_start == 1
    assert [r.offset for r in read_all(broker, R0)] == [1, 2]


def test_retention_by_size_keeps_newest_batches_within_limit() -> None:
    """Oldest whole batches go until the partition fits in retention_bytes, no more."""
    broker = Broker()
    broker.create_topic("r", 1, retention_bytes=500)
    broker.create_topic("probe", 1)
    pid, epoch = broker.init_producer_id()
    produce_one(broker, pid, epoch, 0, b"x" * 100, 0, TopicPartition("probe", 0))
    batch_bytes = broker.partition_info("probe", 0).bytes
    for seq in range(10):
        produce_one(broker, pid, epoch, seq, b"%03d" % seq + b"x" * 97, 0)
    broker.maintain()
    info = broker.partition_info("r", 0)
    kept = 500 // batch_bytes
    assert info.bytes == kept * batch_bytes <= 500 < (kept + 1) * batch_bytes
    assert (info.log_start, info.batches) == (10 - kept, kept)
    assert [r.offset for r in read_all(broker, R0)] == list(range(10 - kept, 10))


@pytest.mark.parametrize("setting", [{"retention_ms": 1_000}, {"retention_bytes": 1}])
def test_retention_never_passes_the_lso(setting: dict[str, int]) -> None:
    """Retention stops at an open transaction's first offset, then resumes after it ends."""
    clock = FakeClock()
    broker = Broker(clock=clock)
    broker.create_topic("r", 1, **setting)
    plain, p_epoch = broker.init_producer_id()
    txn, t_epoch = broker.init_producer_id("tx", transaction_timeout_ms=900_000)
    produce_one(broker, plain, p_epoch, 0, b"old", 0)
    produce_one(broker, txn, t_epoch, 0, b"open", 0, transactional=True)
    produce_one(broker, plain, p_epoch, 1, b"after", 0)
    clock.now += 100_000
    broker.maintain()
    info = broker.partition_info("r", 0)
    assert info.log_start == info.last_stable == 1
    broker.end_transaction(txn, t_epoch, commit=True)
    broker.maintain()
    info = broker.partition_info("r", 0)
    assert info.log_start <= info.last_stable
    assert info.log_start >= 3


# --- compaction -----------------------------------------------------------------------------


C0 = TopicPartition("c", 0)


def compacted_broker(clock: FakeClock, delete_retention_ms: int = 86_400_000) -> Broker:
    broker = Broker(clock=clock)
    broker.create_topic("c", 1, compacted=True, delete_retention_ms=delete_retention_ms)
    return broker


def put(
    broker: Broker,
    pid: int,
    epoch: int,
    seq: int,
    pairs: Sequence[tuple[bytes, bytes | None]],
    transactional: bool = False,
) -> int:
    keys = [k for k, _ in pairs]
    vals = [v for _, v in pairs]
    return broker.produce(
        pid,
        epoch,
        [ProduceBatch("c", 0, seq, keys, vals, [0] * len(keys))],
        transactional=transactional,
    )[0]


def triples(records: Sequence[Record]) -> list[tuple[int, bytes | None, bytes | None]]:
    return [(r.offset, r.key, r.value) for r in records]


@pytest.fixture
def compacted() -> Broker:
    """Compacted topic c: offsets 0-3 one batch (a=1, b=1, a=2, c=1), 4: b=None (tombstone),
    5: a=3, 6-8 one batch (d=1, c=2, e=1); compacted once."""
    broker = compacted_broker(FakeClock())
    pid, epoch = broker.init_producer_id()
    put(broker, pid, epoch, 0, [(b"a", b"1"), (b"b", b"1"), (b"a", b"2"), (b"c", b"1")])
    put(broker, pid, epoch, 4, [(b"b", None)])
    put(broker, pid, epoch, 5, [(b"a", b"3")])
    put(broker, pid, epoch, 6, [(b"d", b"1"), (b"c", b"2"), (b"e", b"1")])
    result = broker.maintain(force_compaction=True)
    assert result["records_compacted"] == 4
    return broker


EXPECTED_COMPACTED = [
    (4, b"b", None),
    (5, b"a", b"3"),
    (6, b"d", b"1"),
    (7, b"c", b"2"),
    (8, b"e", b"1"),
]


def test_compaction_keeps_latest_value_per_key_at_its_offset(compacted: Broker) -> None:
    """Compaction keeps the newest record of each key, at its original offset."""
    assert triples(read_all(compacted, C0)) == EXPECTED_COMPACTED
    info = compacted.partition_info("c", 0)
    assert (info.log_start, info.high_watermark) == (0, 9)


@pytest.mark.parametrize("start", range(10))
def test_compaction_reads_from_any_offset(compacted: Broker, start: int) -> None:
    """A fetch from an offset inside a removed range starts at the next kept record."""
    expected = [t for t in EXPECTED_COMPACTED if t[0] >= start]
    assert triples(read_all(compacted, C0, start=start)) == expected
    assert triples(read_all(compacted, C0, READ_COMMITTED, start=start, page=1)) == expected


def test_compaction_is_idempotent(compacted: Broker) -> None:
    """A second compaction removes nothing and keeps the byte count exact."""
    assert compacted.maintain(force_compaction=True)["records_compacted"] == 0
    assert triples(read_all(compacted, C0)) == EXPECTED_COMPACTED
    stored = compacted.conn.execute("SELECT sum(length(payload)) FROM batches").fetchone()[0]
    assert compacted.partition_info("c", 0).bytes == stored


def test_compaction_keeps_tombstones_until_delete_retention() -> None:
    """A tombstone survives compaction for delete_retention_ms after it was written."""
    clock = FakeClock()
    broker = compacted_broker(clock, delete_retention_ms=1_000)
    pid, epoch = broker.init_producer_id()
    put(broker, pid, epoch, 0, [(b"a", b"1"), (b"b", b"1")])
    put(broker, pid, epoch, 2, [(b"a", None)])
    clock.now += 999
    broker.maintain(force_compaction=True)
    assert triples(read_all(broker, C0)) == [(1, b"b", b"1"), (2, b"a", None)]
    clock.now += 2
    broker.maintain(force_compaction=True)
    assert triples(read_all(broker, C0)) == [(1, b"b", b"1")]
    assert broker.partition_info("c", 0).high_watermark == 3


def test_compaction_removes_aborted_records_and_markers() -> None:
    """Aborted records and all transaction markers are removed; committed ones stay."""
    broker = compacted_broker(FakeClock())
    pid, epoch = broker.init_producer_id("tx")
    put(broker, pid, epoch, 0, [(b"a", b"aborted")], transactional=True)
    epoch = broker.end_transaction(pid, epoch, commit=False)
    put(broker, pid, epoch, 0, [(b"b", b"committed")], transactional=True)
    broker.end_transaction(pid, epoch, commit=True)
    assert kinds(broker, C0) == [ABORTED, ABORT_MARKER, 1, COMMIT_MARKER]
    broker.maintain(force_compaction=True)
    assert not {ABORTED, ABORT_MARKER, COMMIT_MARKER} & set(kinds(broker, C0))
    assert triples(read_all(broker, C0)) == [(2, b"b", b"committed")]
    assert triples(read_all(broker, C0, READ_COMMITTED)) == [(2, b"b", b"committed")]


def test_compaction_stops_at_the_lso() -> None:
    """An open transaction's records, and everything after them, are not compacted."""
    broker = compacted_broker(FakeClock())
    plain, p_epoch = broker.init_producer_id()
    txn, t_epoch = broker.init_producer_id("tx")
    put(broker, plain, p_epoch, 0, [(b"a", b"1")])
    put(broker, plain, p_epoch, 1, [(b"a", b"2")])
    put(broker, txn, t_epoch, 0, [(b"a", b"txn")], transactional=True)
    put(broker, plain, p_epoch, 2, [(b"a", b"3")])
    broker.maintain(force_compaction=True)
    assert triples(read_all(broker, C0)) == [(1, b"a", b"2"), (2, b"a", b"txn"), (3, b"a", b"3")]
    broker.end_transaction(txn, t_epoch, commit=True)
    broker.maintain(force_compaction=True)
    assert triples(read_all(broker, C0)) == [(3, b"a", b"3")]


def latest_per_key(records: Sequence[Record]) -> dict[bytes | None, tuple[int, bytes | None]]:
    latest: dict[bytes | None, tuple[int, bytes | None]] = {}
    for r in records:
        latest[r.key] = (r.offset, r.value)
    return latest


operations = st.lists(
    st.tuples(
        st.sampled_from(["plain", "commit", "abort", "open"]),
        st.lists(
            st.tuples(
                st.sampled_from([b"a", b"b", b"c", b"d"]),
                st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
            ),
            min_size=1,
            max_size=4,
        ),
    ),
    max_size=12,
)


@given(operations)
@FAST
def test_compaction_preserves_read_committed_latest_per_key(ops: list) -> None:
    """After compaction, read_committed shows the same latest record (offset and value) per
    key as before, and nothing that was not there before."""
    broker = compacted_broker(FakeClock())
    plain, p_epoch = broker.init_producer_id()
    txn, t_epoch = broker.init_producer_id("tx", transaction_timeout_ms=900_000)
    seqs = {"plain": 0, "txn": 0}
    for kind, pairs in ops:
        if kind == "plain":
            put(broker, plain, p_epoch, seqs["plain"], pairs)
            seqs["plain"] += len(pairs)
            continue
        put(broker, txn, t_epoch, seqs["txn"], pairs, transactional=True)
        seqs["txn"] += len(pairs)
        if kind != "open":
            t_epoch = broker.end_transaction(txn, t_epoch, commit=kind == "commit")
            seqs["txn"] = 0
    before = read_all(broker, C0, READ_COMMITTED)
    broker.maintain(force_compaction=True)
    after = read_all(broker, C0, READ_COMMITTED)
    assert latest_per_key(after) == latest_per_key(before)
    assert set(triples(after)) <= set(triples(before))
    assert [r.offset for r in after] == sorted(r.offset for r in after)


# --- list_offset ----------------------------------------------------------------------------


L0 = TopicPartition("l", 0)


@pytest.fixture
def timed() -> Broker:
    """Topic l: offsets 0-1 at ts 100, 200; 2-3 at 200, 300; 4 at 50 (out of order)."""
    broker = Broker()
    broker.create_topic("l", 1)
    pid, epoch = broker.init_producer_id()
    for seq, ts in ((0, [100, 200]), (2, [200, 300]), (4, [50])):
        broker.produce(
            pid, epoch, [ProduceBatch("l", 0, seq, [None] * len(ts), [b"x"] * len(ts), ts)]
        )
    return broker


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (0, 0),
        (100, 0),
        (101, 1),
        (150, 1),
        (200, 1),
        (201, 3),
        (300, 3),
        (301, 5),
        (EARLIEST, 0),
        (LATEST, 5),
    ],
)
def test_list_offset(timed: Broker, spec: str | int, expected: int) -> None:
    """list_offset: the first offset with timestamp >= spec (else the end), earliest, latest."""
    assert timed.list_offset(L0, spec) == expected


def test_list_offset_read_committed_stops_at_lso(timed: Broker) -> None:
    """Under read_committed, latest and timestamp lookups never pass the LSO."""
    pid, epoch = timed.init_producer_id("tx")
    timed.produce(
        pid, epoch, [ProduceBatch("l", 0, 0, [None], [b"t"], [1_000])], transactional=True
    )
    assert timed.list_offset(L0, LATEST, READ_COMMITTED) == 5
    assert timed.list_offset(L0, LATEST, READ_UNCOMMITTED) == 6
    assert timed.list_offset(L0, 1_000, READ_COMMITTED) == 5
    assert timed.list_offset(L0, 1_000, READ_UNCOMMITTED) == 5
    assert timed.list_offset(L0, 1_001, READ_UNCOMMITTED) == 6
    timed.end_transaction(pid, epoch, commit=True)
    assert timed.list_offset(L0, LATEST, READ_COMMITTED) == 7  # after the marker


def test_list_offset_after_retention_starts_at_log_start() -> None:
    """Offsets by time and earliest never point below the log start."""
    clock = FakeClock()
    broker = Broker(clock=clock)
    broker.create_topic("l", 1, retention_ms=1_000)
    pid, epoch = broker.init_producer_id()
    for seq, ts in enumerate([0, 10, clock.now]):
        produce_one(broker, pid, epoch, seq, b"x", ts, L0)
    broker.maintain()
    assert broker.list_offset(L0, EARLIEST) == 2
    assert broker.list_offset(L0, 0) == 2


def test_list_offset_after_compaction_uses_kept_offsets(compacted: Broker) -> None:
    """After compaction, a timestamp lookup returns the offset of a kept record."""
    assert compacted.list_offset(C0, 0) == 4
    assert compacted.list_offset(C0, EARLIEST) == 0
