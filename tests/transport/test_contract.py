"""The transport contract: what every back end does, run against the embedded broker and Kafka.

Kafka hands out partitions asynchronously (inside a later getmany), so group tests poll until
the assignment they expect, on both back ends.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime import errors
from runtime.partitioner import partition_for_key
from runtime.testing import unique
from runtime.transport import READ_COMMITTED
from runtime.types import TopicPartition
from tests.transport.conftest import PARTITIONS, Backend, eventually, poll_until, read

ABORTED_VISIBLE = (
    "aborted transactions' records are returned to read_committed consumers (measured with "
    "confluent-kafka 2.16.1: a fresh read_committed consumer read all 3 records of an "
    "explicitly aborted transaction)"
)


# --- producing ----------------------------------------------------------------------------


async def test_send_returns_where_the_record_was_written(backend: Backend) -> None:
    producer = backend.transport.producer()
    meta = await producer.send(backend.topic, b"v", key=b"user-1")
    assert meta.partition == partition_for_key(b"user-1", PARTITIONS)
    assert meta.offset == 0
    again = await producer.send(backend.topic, b"w", key=b"user-1")
    assert (again.partition, again.offset) == (meta.partition, 1)
    await producer.close()


async def test_buffered_records_are_written_by_flush_in_order(backend: Backend) -> None:
    producer = backend.transport.producer(linger_ms=10_000)
    for i in range(1000):
        producer.produce(backend.topic, b"%d" % i, key=b"same-key")
    await producer.flush()
    consumer = backend.consumer()
    await consumer.assign([TopicPartition(backend.topic, partition_for_key(b"same-key", 4))])
    records = await read(consumer, 1000)
    assert [r.value for r in records] == [b"%d" % i for i in range(1000)]
    assert [r.offset for r in records] == list(range(1000))
    await consumer.close()
    await producer.close()


async def test_produce_many_is_produce_per_record(backend: Backend) -> None:
    """Columns land where, and in the order, a loop of produce() would put them: keyed
    records by murmur2 in order per partition (the same keys before and after their
    placement is cached), an explicit partition, null keys and values; bad records rejected
    with the records before them kept."""
    producer = backend.transport.producer(linger_ms=10_000)
    keys = [b"key-%d" % (i % 7) for i in range(300)]
    values = [b"%d" % i for i in range(300)]
    values[5] = None
    producer.produce_many(backend.topic, values[:100], keys[:100])
    await producer.flush()
    producer.produce_many(backend.topic, values[100:], keys[100:])
    producer.produce_many(backend.topic, [b"p2-a", b"p2-b"], partition=2)
    producer.produce_many(backend.topic, [b"p1"], [None], partition=1)
    with pytest.raises(errors.InvalidRequestError, match="bytes"):
        producer.produce_many(backend.topic, [b"kept", "a str"], [b"key-0", b"key-0"])  # type: ignore[list-item]
    with pytest.raises(errors.InvalidRequestError, match="length"):
        producer.produce_many(backend.topic, [b"v"], [b"a", b"b"])
    await producer.flush()
    consumer = backend.consumer()
    await consumer.assign([TopicPartition(backend.topic, p) for p in range(PARTITIONS)])
    records = await read(consumer, 300 + 2 + 1 + 1)
    by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append((r.key, r.value))
    expected: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for key, value in zip(keys, values, strict=True):
        expected.setdefault(partition_for_key(key, PARTITIONS), []).append((key, value))
    expected.setdefault(2, []).extend([(None, b"p2-a"), (None, b"p2-b")])
    expected.setdefault(1, []).append((None, b"p1"))
    expected.setdefault(partition_for_key(b"key-0", PARTITIONS), []).append((b"key-0", b"kept"))
    assert by_partition == expected
    await consumer.close()
    await producer.close()


async def test_linger_flushes_without_an_explicit_flush(backend: Backend) -> None:
    producer = backend.transport.producer(linger_ms=5)
    producer.produce(backend.topic, b"lingered", partition=2)
    consumer = backend.consumer()
    await consumer.assign([TopicPartition(backend.topic, 2)])
    assert [r.value for r in await read(consumer, 1)] == [b"lingered"]
    await consumer.close()
    await producer.close()


async def test_wrong_types_are_rejected_at_produce(backend: Backend) -> None:
    producer = backend.transport.producer()
    with pytest.raises(errors.InvalidRequestError, match="bytes"):
        producer.produce(backend.topic, "a str")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequestError, match="timestamp"):
        producer.produce(backend.topic, b"v", timestamp=1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequestError, match="headers"):
        producer.produce(backend.topic, b"v", headers=[("k", "not bytes")])  # type: ignore[list-item]
    await producer.flush()
    await producer.close()


async def test_unknown_topic_fails_its_records_only(backend: Backend) -> None:
    producer = backend.transport.producer(linger_ms=10_000)
    good = asyncio.ensure_future(producer.send(backend.topic, b"ok", partition=0))
    bad = asyncio.ensure_future(producer.send(unique("no-such-topic"), b"lost?"))
    await asyncio.sleep(0)
    with pytest.raises(errors.UnknownTopicError):
        await producer.flush()
    assert (await good).offset == 0
    with pytest.raises(errors.UnknownTopicError):
        await bad
    await producer.close()


async def test_headers_and_timestamps_round_trip(backend: Backend) -> None:
    producer = backend.transport.producer()
    await producer.send(
        backend.topic, b"v", key=b"k", partition=1, headers=[("trace", b"42")], timestamp=1234
    )
    consumer = backend.consumer()
    await consumer.assign([TopicPartition(backend.topic, 1)])
    (record,) = await read(consumer, 1)
    assert (record.key, record.value, record.timestamp) == (b"k", b"v", 1234)
    assert record.headers == [("trace", b"42")]
    await consumer.close()
    await producer.close()


# --- transactions and isolation -----------------------------------------------------------


@pytest.mark.tansu_xfail(reason=ABORTED_VISIBLE)
async def test_read_committed_sees_commits_only(backend: Backend) -> None:
    producer = backend.transport.producer(transactional_id=unique("tx"))
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce(backend.topic, b"committed", partition=0)
    await producer.commit_transaction()
    await producer.begin_transaction()
    producer.produce(backend.topic, b"aborted", partition=0)
    await producer.flush()
    await producer.abort_transaction()
    uncommitted = backend.consumer()
    await uncommitted.assign([TopicPartition(backend.topic, 0)])
    assert [r.value for r in await read(uncommitted, 2)] == [b"committed", b"aborted"]
    committed = backend.consumer(isolation=READ_COMMITTED)
    await committed.assign([TopicPartition(backend.topic, 0)])
    assert [r.value for r in await read(committed, 1)] == [b"committed"]


async def test_read_committed_waits_at_the_open_transaction(backend: Backend) -> None:
    producer = backend.transport.producer(transactional_id=unique("tx"))
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce(backend.topic, b"pending", partition=1)
    await producer.flush()
    consumer = backend.consumer(isolation=READ_COMMITTED)
    await consumer.assign([TopicPartition(backend.topic, 1)])
    assert await consumer.getmany(timeout=0.5) == {}
    waiting = asyncio.ensure_future(consumer.getmany(timeout=5.0))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await producer.commit_transaction()
    batch = await waiting
    assert time.perf_counter() - started < 1.0  # woken by the commit, not by the timeout
    assert [r.value for r in batch[TopicPartition(backend.topic, 1)]] == [b"pending"]
    await consumer.close()


async def test_a_fully_read_transactional_partition_is_at_its_end(backend: Backend) -> None:
    """Commit markers take offsets: after the last record, position() must still reach the
    last stable offset, or lag never drops to 0 and `drain()` never returns."""
    producer = backend.transport.producer(transactional_id=unique("tx"))
    await producer.init_transactions()
    for batch in range(3):
        await producer.begin_transaction()
        for i in range(5):
            producer.produce(backend.topic, b"%d-%d" % (batch, i), partition=0)
        await producer.commit_transaction()
    tp = TopicPartition(backend.topic, 0)
    consumer = backend.consumer(isolation=READ_COMMITTED)
    await consumer.assign([tp])
    records = await read(consumer, 15)
    assert len(records) == 15
    end = (await consumer.end_offsets([tp]))[tp]
    assert end > records[-1].offset  # the marker after the last record
    assert consumer.position(tp) >= end
    await consumer.close()


@pytest.mark.tansu_xfail(
    reason="ListOffsets reports the high watermark of non-transactional batches as the "
    "start of the last batch + 1 (tansu.md deviation 4)"
)
async def test_end_offsets_of_a_plain_topic(backend: Backend) -> None:
    producer = backend.transport.producer()
    for i in range(10):
        producer.produce(backend.topic, b"%d" % i, partition=3)
    await producer.flush()
    tp = TopicPartition(backend.topic, 3)
    consumer = backend.consumer()
    await consumer.assign([tp])
    assert (await consumer.end_offsets([tp]))[tp] == 10
    assert len(await read(consumer, 10)) == 10
    assert consumer.position(tp) == 10
    await consumer.close()


@pytest.mark.tansu_xfail(
    reason="ListOffsets under read_committed answers 0 while a transaction is open on the "
    "partition, not the open transaction's first offset"
)
async def test_partition_info_reports_the_last_stable_offset(backend: Backend) -> None:
    producer = backend.transport.producer(transactional_id=unique("tx"))
    await producer.init_transactions()
    await producer.begin_transaction()
    for i in range(3):
        producer.produce(backend.topic, b"c%d" % i, partition=0)
    await producer.commit_transaction()
    settled = await backend.transport.partition_info(backend.topic, 0)
    assert settled.last_stable == settled.high_watermark == 4  # 3 records and the marker
    await producer.begin_transaction()
    producer.produce(backend.topic, b"open", partition=0)
    await producer.flush()
    info = await backend.transport.partition_info(backend.topic, 0)
    assert (info.log_start, info.last_stable, info.high_watermark) == (0, 4, 5)
    await producer.abort_transaction()


@pytest.mark.tansu_xfail(
    reason="a zombie's commit is not answered with PRODUCER_FENCED: Tansu logs "
    "`err=Storage(Api(ProducerFenced))` and closes the connection, librdkafka retries EndTxn "
    "until commit_transaction times out (_TIMED_OUT); the zombie's commit never succeeds"
)
async def test_a_second_instance_fences_the_first(backend: Backend) -> None:
    transactional_id = unique("app")
    first = backend.transport.producer(
        transactional_id=transactional_id, transaction_timeout_ms=2000
    )
    await first.init_transactions()
    await first.begin_transaction()
    first.produce(backend.topic, b"zombie", partition=0)
    await first.flush()
    second = backend.transport.producer(transactional_id=transactional_id)
    await second.init_transactions()
    with pytest.raises(errors.ProducerFencedError):
        await first.commit_transaction()
    with pytest.raises(errors.ProducerFencedError):
        first.produce(backend.topic, b"more", partition=0)
    await second.begin_transaction()  # the new instance works
    second.produce(backend.topic, b"successor", partition=0)
    await second.commit_transaction()
    await first.init_transactions()  # a fenced instance can take over again (fencing `second`)
    await first.begin_transaction()
    await first.abort_transaction()


@pytest.mark.tansu_xfail(reason=ABORTED_VISIBLE)
async def test_a_fenced_instances_open_transaction_is_aborted(backend: Backend) -> None:
    """What a worker killed mid-transaction leaves: its successor (same transactional id)
    aborts it, and read_committed readers never see it."""
    transactional_id = unique("app")
    crashed = backend.transport.producer(transactional_id=transactional_id)
    await crashed.init_transactions()
    await crashed.begin_transaction()
    crashed.produce(backend.topic, b"zombie", partition=0)
    await crashed.flush()
    successor = backend.transport.producer(transactional_id=transactional_id)
    await successor.init_transactions()
    await successor.begin_transaction()
    successor.produce(backend.topic, b"successor", partition=0)
    await successor.commit_transaction()
    consumer = backend.consumer(isolation=READ_COMMITTED)
    await consumer.assign([TopicPartition(backend.topic, 0)])
    assert [r.value for r in await read(consumer, 1)] == [b"successor"]


@pytest.mark.tansu_xfail(
    reason="no transaction timeout: an open transaction stays open until its transactional "
    "id calls init_transactions again (tansu.md deviation 2)"
)
async def test_a_transaction_past_its_timeout_is_aborted(backend: Backend) -> None:
    producer = backend.transport.producer(
        transactional_id=unique("slow"), transaction_timeout_ms=1000
    )
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce(backend.topic, b"too late", partition=0)
    await producer.flush()
    other = backend.transport.producer()  # a write lets the embedded broker's upkeep run

    async def aborted() -> bool:
        if backend.kind == "sqlite":
            await backend.transport.maintain()  # type: ignore[attr-defined]
        await other.send(backend.topic, b"tick", partition=1)
        info = await backend.transport.partition_info(backend.topic, 0)
        return info.last_stable == info.high_watermark

    await asyncio.sleep(1.2)
    await eventually(aborted, timeout=15.0)  # Kafka checks timeouts every 10 s
    with pytest.raises((errors.ProducerFencedError, errors.TransactionAbortedError)):
        await producer.commit_transaction()
    await other.close()


async def test_transactional_producer_requires_begin(backend: Backend) -> None:
    producer = backend.transport.producer(transactional_id=unique("tx"))
    with pytest.raises(errors.InvalidTxnStateError, match="init_transactions"):
        await producer.begin_transaction()
    await producer.init_transactions()
    with pytest.raises(errors.InvalidTxnStateError, match="begin_transaction"):
        producer.produce(backend.topic, b"v")
    with pytest.raises(errors.InvalidTxnStateError):
        await producer.commit_transaction()


# --- reading ------------------------------------------------------------------------------


async def test_long_poll_waits_for_the_timeout_when_idle(backend: Backend) -> None:
    consumer = backend.consumer()
    await consumer.assign([TopicPartition(backend.topic, 0)])
    started = time.perf_counter()
    assert await consumer.getmany(timeout=0.3) == {}
    assert 0.25 <= time.perf_counter() - started < 1.5
    await consumer.close()


async def test_seek_rereads_from_the_offset(backend: Backend) -> None:
    producer = backend.transport.producer()
    for i in range(10):
        producer.produce(backend.topic, b"%d" % i, partition=2)
    await producer.flush()
    tp = TopicPartition(backend.topic, 2)
    consumer = backend.consumer()
    await consumer.assign([tp])
    consumer.seek(tp, 6)  # before the first fetch, as a restore does
    assert [r.offset for r in await read(consumer, 4)] == [6, 7, 8, 9]
    consumer.seek(tp, 3)
    assert consumer.position(tp) == 3
    assert [r.offset for r in await read(consumer, 7)] == list(range(3, 10))
    with pytest.raises(errors.InvalidRequestError):
        consumer.seek(TopicPartition(backend.topic, 0), 0)  # not assigned
    await consumer.close()
    await producer.close()


# --- groups -------------------------------------------------------------------------------


async def test_group_members_split_partitions_without_overlap(backend: Backend) -> None:
    group = unique("g")
    first = backend.consumer(group, heartbeat_interval_ms=50)
    revoked: list[set[TopicPartition]] = []
    await first.subscribe([backend.topic], on_revoke=revoked.append)
    await poll_until([first], lambda: len(first.assignment()) == 4)
    second = backend.consumer(group, heartbeat_interval_ms=50)
    assigned: list[set[TopicPartition]] = []
    await second.subscribe([backend.topic], on_assign=assigned.append)
    members = [first, second]

    def split() -> bool:
        assert not first.assignment() & second.assignment()  # never two owners
        return len(first.assignment()) == 2 and len(second.assignment()) == 2

    await poll_until(members, split)
    assert revoked and revoked[-1] == second.assignment() == assigned[-1]
    await second.close()  # leaving hands its partitions back
    await poll_until([first], lambda: len(first.assignment()) == 4)
    await first.close()


async def test_offsets_commit_with_the_transaction_and_rewind_after_abort(
    backend: Backend,
) -> None:
    setup = backend.transport.producer()
    for i in range(10):
        setup.produce(backend.topic, b"%d" % i, partition=0)
    await setup.flush()
    consumer = backend.consumer(unique("g"), isolation=READ_COMMITTED)
    await consumer.subscribe([backend.topic])
    producer = backend.transport.producer(transactional_id=unique("worker"))
    await producer.init_transactions()
    tp = TopicPartition(backend.topic, 0)

    async def next_four() -> list[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout=0.5, max_records=4)
            if tp in batch:
                return [r.offset for r in batch[tp]]
        raise AssertionError("no records")

    offsets = await next_four()
    assert offsets[0] == 0
    await producer.begin_transaction()
    await producer.send_offsets_to_transaction({tp: offsets[-1] + 1}, consumer.group_metadata())
    await producer.commit_transaction()
    assert await consumer.committed([tp]) == {tp: offsets[-1] + 1}
    committed = offsets[-1] + 1
    offsets = await next_four()
    assert offsets[0] == committed
    await producer.begin_transaction()
    await producer.send_offsets_to_transaction({tp: offsets[-1] + 1}, consumer.group_metadata())
    await producer.abort_transaction()
    assert await consumer.committed([tp]) == {tp: committed}
    await consumer.seek_to_committed()
    assert consumer.position(tp) == committed
    assert (await next_four())[0] == committed  # re-read after the rewind
    await consumer.close()


async def test_plain_commit_and_committed(backend: Backend) -> None:
    group = unique("g")
    consumer = backend.consumer(group)
    await consumer.subscribe([backend.topic])
    await poll_until([consumer], lambda: len(consumer.assignment()) == PARTITIONS)
    tp = TopicPartition(backend.topic, 1)
    await consumer.commit({tp: 7})
    assert await backend.consumer(group).committed([tp]) == {tp: 7}
    await consumer.close()


@pytest.mark.tansu_xfail(
    reason="offsets sent to an open transaction are not reported as pending: a "
    "read_committed consumer's committed() got no UNSTABLE_OFFSET_COMMIT and returned {} at "
    "once (the stale answer a new owner must never get)"
)
async def test_new_owner_waits_for_pending_transactional_offsets(backend: Backend) -> None:
    group = unique("g")
    owner = backend.consumer(group, isolation=READ_COMMITTED, heartbeat_interval_ms=50)
    await owner.subscribe([backend.topic])
    await poll_until([owner], lambda: len(owner.assignment()) == PARTITIONS)
    producer = backend.transport.producer(transactional_id=unique("owner"))
    await producer.init_transactions()
    await producer.begin_transaction()
    tps = owner.assignment()
    await producer.send_offsets_to_transaction({tp: 0 for tp in tps}, owner.group_metadata())
    reader = backend.consumer(group, isolation=READ_COMMITTED)
    fetching = asyncio.ensure_future(reader.committed(tps))
    await asyncio.sleep(0.5)
    assert not fetching.done()  # UNSTABLE_OFFSET_COMMIT: waits, never returns a stale offset
    await producer.commit_transaction()
    assert await asyncio.wait_for(fetching, 10) == {tp: 0 for tp in tps}
    await owner.close()


async def test_rebalance_callbacks_can_use_the_consumer(backend: Backend) -> None:
    """Callbacks run inside getmany and call back into the consumer (a commit, committed
    offsets, a rewind): nothing may deadlock."""
    consumer = backend.consumer(unique("g"))
    seen: dict[str, object] = {}

    async def on_assign(tps: set[TopicPartition]) -> None:
        seen["committed"] = await consumer.committed(tps)
        seen["positions"] = {tp: consumer.position(tp) for tp in tps}
        await consumer.commit({tp: 0 for tp in tps})
        await consumer.seek_to_committed(tps)

    await consumer.subscribe([backend.topic], on_assign=on_assign)
    await poll_until([consumer], lambda: "positions" in seen)
    assert seen["committed"] == {}
    assert seen["positions"] == {TopicPartition(backend.topic, p): 0 for p in range(PARTITIONS)}
    await consumer.close()


# --- topics -------------------------------------------------------------------------------


async def test_topics_are_described_as_created(backend: Backend) -> None:
    transport = backend.transport
    name = unique("changelog")
    created = await transport.create_topic(name, 3, compacted=True, retention_bytes=1 << 20)
    described = await transport.describe_topic(name)
    assert described == created
    assert (described.partitions, described.compacted, described.retention_bytes) == (
        3,
        True,
        1 << 20,
    )
    plain = await transport.describe_topic(backend.topic)
    assert (plain.partitions, plain.compacted, plain.retention_ms) == (PARTITIONS, False, None)
    assert {name, backend.topic} <= {t.name for t in await transport.list_topics()}
    with pytest.raises(errors.TopicExistsError):
        await transport.create_topic(name, 3)
    with pytest.raises(errors.UnknownTopicError, match="create it first"):
        await transport.describe_topic(unique("nope"))
    await transport.delete_topic(name)

    async def gone() -> bool:
        return name not in {t.name for t in await transport.list_topics()}

    await eventually(gone)
