"""The embedded transport: producers, consumers, groups and long polling through `connect`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.partitioner import partition_for_key
from runtime.transport import READ_COMMITTED, Transport, connect
from runtime.types import Record, TopicPartition

TOPIC = "events"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Transport]:
    async with connect(f"sqlite:///{tmp_path}/broker.db") as transport:
        await transport.create_topic(TOPIC, 4)
        yield transport


async def drain(consumer, timeout: float = 0.3) -> list[Record]:  # type: ignore[no-untyped-def]
    out: list[Record] = []
    while batch := await consumer.getmany(timeout=timeout):
        for records in batch.values():
            out.extend(records)
    return out


async def test_send_returns_where_the_record_was_written(broker: Transport) -> None:
    producer = broker.producer()
    meta = await producer.send(TOPIC, b"v", key=b"user-1")
    assert meta.partition == partition_for_key(b"user-1", 4)
    assert meta.offset == 0
    again = await producer.send(TOPIC, b"w", key=b"user-1")
    assert (again.partition, again.offset) == (meta.partition, 1)
    await producer.close()


async def test_buffered_records_are_written_by_flush_in_order(broker: Transport) -> None:
    producer = broker.producer(linger_ms=10_000)
    for i in range(1000):
        producer.produce(TOPIC, b"%d" % i, key=b"same-key")
    await producer.flush()
    consumer = broker.consumer()
    await consumer.assign([TopicPartition(TOPIC, partition_for_key(b"same-key", 4))])
    records = await drain(consumer)
    assert [r.value for r in records] == [b"%d" % i for i in range(1000)]
    assert [r.offset for r in records] == list(range(1000))


async def test_linger_flushes_without_an_explicit_flush(broker: Transport) -> None:
    producer = broker.producer(linger_ms=5)
    producer.produce(TOPIC, b"lingered", partition=2)
    consumer = broker.consumer()
    await consumer.assign([TopicPartition(TOPIC, 2)])
    batch = await consumer.getmany(timeout=2.0)
    assert [r.value for r in batch[TopicPartition(TOPIC, 2)]] == [b"lingered"]


async def test_keyless_records_stick_to_a_partition_per_batch(broker: Transport) -> None:
    producer = broker.producer(linger_ms=10_000)
    partitions = set()
    for _ in range(8):
        metas = [asyncio.ensure_future(producer.send(TOPIC, b"x")) for _ in range(10)]
        await asyncio.sleep(0)
        await producer.flush()
        batch_partitions = {(await m).partition for m in metas}
        assert len(batch_partitions) == 1  # one batch, one partition
        partitions |= batch_partitions
    assert len(partitions) > 1  # batches move across partitions


async def test_wrong_types_are_rejected_at_produce(broker: Transport) -> None:
    producer = broker.producer()
    with pytest.raises(errors.InvalidRequestError, match="bytes"):
        producer.produce(TOPIC, "a str")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequestError, match="timestamp"):
        producer.produce(TOPIC, b"v", timestamp=1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequestError, match="headers"):
        producer.produce(TOPIC, b"v", headers=[("k", "not bytes")])  # type: ignore[list-item]
    await producer.flush()


async def test_unknown_topic_fails_its_records_only(broker: Transport) -> None:
    producer = broker.producer(linger_ms=10_000)
    good = asyncio.ensure_future(producer.send(TOPIC, b"ok", partition=0))
    bad = asyncio.ensure_future(producer.send("no-such-topic", b"lost?"))
    await asyncio.sleep(0)
    with pytest.raises(errors.UnknownTopicError):
        await producer.flush()
    assert (await good).offset == 0
    with pytest.raises(errors.UnknownTopicError):
        await bad


async def test_read_committed_sees_commits_only(broker: Transport) -> None:
    producer = broker.producer(transactional_id="tx")
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce(TOPIC, b"committed", partition=0)
    await producer.commit_transaction()
    await producer.begin_transaction()
    producer.produce(TOPIC, b"aborted", partition=0)
    await producer.flush()
    await producer.abort_transaction()
    committed = broker.consumer(isolation=READ_COMMITTED)
    await committed.assign([TopicPartition(TOPIC, 0)])
    assert [r.value for r in await drain(committed)] == [b"committed"]
    uncommitted = broker.consumer()
    await uncommitted.assign([TopicPartition(TOPIC, 0)])
    assert [r.value for r in await drain(uncommitted)] == [b"committed", b"aborted"]


async def test_read_committed_waits_at_the_open_transaction(broker: Transport) -> None:
    producer = broker.producer(transactional_id="tx")
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce(TOPIC, b"pending", partition=1)
    await producer.flush()
    consumer = broker.consumer(isolation=READ_COMMITTED)
    await consumer.assign([TopicPartition(TOPIC, 1)])
    assert await consumer.getmany(timeout=0.1) == {}
    waiting = asyncio.ensure_future(consumer.getmany(timeout=5.0))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await producer.commit_transaction()
    batch = await waiting
    assert time.perf_counter() - started < 0.5  # woken by the commit, not by the timeout
    assert [r.value for r in batch[TopicPartition(TOPIC, 1)]] == [b"pending"]


async def test_long_poll_waits_for_the_timeout_when_idle(broker: Transport) -> None:
    consumer = broker.consumer()
    await consumer.assign([TopicPartition(TOPIC, 0)])
    started = time.perf_counter()
    assert await consumer.getmany(timeout=0.3) == {}
    assert 0.25 <= time.perf_counter() - started < 1.5


async def test_long_poll_wakes_on_a_write_from_another_connection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    async with connect(url) as reader_side, connect(url) as writer_side:
        await writer_side.create_topic(TOPIC, 1)
        consumer = reader_side.consumer()
        await consumer.assign([TopicPartition(TOPIC, 0)])
        waiting = asyncio.ensure_future(consumer.getmany(timeout=5.0))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        await writer_side.producer().send(TOPIC, b"hello", partition=0)
        batch = await waiting
        assert time.perf_counter() - started < 0.5
        assert [r.value for r in batch[TopicPartition(TOPIC, 0)]] == [b"hello"]


async def test_group_members_split_partitions_without_overlap(broker: Transport) -> None:
    first = broker.consumer("g", heartbeat_interval_ms=50)
    revoked: list[set[TopicPartition]] = []
    await first.subscribe([TOPIC], on_revoke=revoked.append)
    await first.getmany(timeout=0.05)
    assert len(first.assignment()) == 4
    second = broker.consumer("g", heartbeat_interval_ms=50)
    assigned: list[set[TopicPartition]] = []
    await second.subscribe([TOPIC], on_assign=assigned.append)
    deadline = time.monotonic() + 5
    while len(second.assignment()) < 2 and time.monotonic() < deadline:
        await asyncio.gather(first.getmany(timeout=0.05), second.getmany(timeout=0.05))
        assert not first.assignment() & second.assignment()  # never two owners
    assert len(first.assignment()) == 2 and len(second.assignment()) == 2
    assert revoked and revoked[0] == second.assignment() == assigned[0]
    await second.close()  # leaving hands its partitions back
    deadline = time.monotonic() + 5
    while len(first.assignment()) < 4 and time.monotonic() < deadline:
        await first.getmany(timeout=0.05)
    assert len(first.assignment()) == 4
    await first.close()


async def test_dead_member_loses_its_partitions_after_the_session_timeout(
    broker: Transport,
) -> None:
    survivor = broker.consumer("g", heartbeat_interval_ms=50, session_timeout_ms=400)
    doomed = broker.consumer("g", heartbeat_interval_ms=50, session_timeout_ms=400)
    await survivor.subscribe([TOPIC])
    await doomed.subscribe([TOPIC])
    deadline = time.monotonic() + 5
    while len(doomed.assignment()) < 2 and time.monotonic() < deadline:
        await asyncio.gather(survivor.getmany(timeout=0.05), doomed.getmany(timeout=0.05))
    assert len(doomed.assignment()) == 2
    doomed._heartbeats.cancel()  # type: ignore[union-attr]  # the process "dies"
    deadline = time.monotonic() + 5
    while len(survivor.assignment()) < 4 and time.monotonic() < deadline:
        await survivor.getmany(timeout=0.05)
    assert len(survivor.assignment()) == 4
    # The dead member's late commit is fenced: it is no longer in the group.
    producer = broker.producer(transactional_id="zombie")
    await producer.init_transactions()
    await producer.begin_transaction()
    stale = {tp: 1 for tp in doomed.assignment()}
    with pytest.raises(errors.UnknownMemberIdError):
        await producer.send_offsets_to_transaction(stale, doomed.group_metadata())
    await producer.abort_transaction()
    await survivor.close()


async def test_offsets_commit_with_the_transaction_and_rewind_after_abort(
    broker: Transport,
) -> None:
    setup = broker.producer()
    for i in range(10):
        setup.produce(TOPIC, b"%d" % i, partition=0)
    await setup.flush()
    consumer = broker.consumer("g", isolation=READ_COMMITTED)
    await consumer.subscribe([TOPIC])
    producer = broker.producer(transactional_id="worker-0")
    await producer.init_transactions()
    tp = TopicPartition(TOPIC, 0)
    records = (await consumer.getmany(timeout=1.0, max_records=4))[tp]
    await producer.begin_transaction()
    await producer.send_offsets_to_transaction(
        {tp: records[-1].offset + 1}, consumer.group_metadata()
    )
    await producer.commit_transaction()
    assert await consumer.committed([tp]) == {tp: 4}
    records = (await consumer.getmany(timeout=1.0, max_records=4))[tp]
    assert records[0].offset == 4
    await producer.begin_transaction()
    await producer.send_offsets_to_transaction(
        {tp: records[-1].offset + 1}, consumer.group_metadata()
    )
    await producer.abort_transaction()
    assert await consumer.committed([tp]) == {tp: 4}
    await consumer.seek_to_committed()
    assert consumer.position(tp) == 4
    await consumer.close()


async def test_new_owner_waits_for_pending_transactional_offsets(broker: Transport) -> None:
    owner = broker.consumer("g", isolation=READ_COMMITTED, heartbeat_interval_ms=50)
    await owner.subscribe([TOPIC])
    await owner.getmany(timeout=0.05)
    producer = broker.producer(transactional_id="owner")
    await producer.init_transactions()
    await producer.begin_transaction()
    tps = owner.assignment()
    await producer.send_offsets_to_transaction({tp: 0 for tp in tps}, owner.group_metadata())
    reader = broker.consumer("g", isolation=READ_COMMITTED)
    fetching = asyncio.ensure_future(reader.committed(tps))
    await asyncio.sleep(0.2)
    assert not fetching.done()  # UNSTABLE_OFFSET_COMMIT: waits, never returns a stale offset
    await producer.commit_transaction()
    assert await asyncio.wait_for(fetching, 5) == {tp: 0 for tp in tps}
    await owner.close()


async def test_a_second_instance_fences_the_first(broker: Transport) -> None:
    first = broker.producer(transactional_id="app-0")
    await first.init_transactions()
    await first.begin_transaction()
    first.produce(TOPIC, b"zombie", partition=0)
    await first.flush()
    second = broker.producer(transactional_id="app-0")
    await second.init_transactions()
    with pytest.raises(errors.ProducerFencedError):
        await first.commit_transaction()
    with pytest.raises(errors.ProducerFencedError):
        first.produce(TOPIC, b"more", partition=0)
    consumer = broker.consumer(isolation=READ_COMMITTED)
    await consumer.assign([TopicPartition(TOPIC, 0)])
    assert await drain(consumer) == []


async def test_transactional_producer_requires_begin(broker: Transport) -> None:
    producer = broker.producer(transactional_id="tx")
    with pytest.raises(errors.InvalidTxnStateError, match="init_transactions"):
        await producer.begin_transaction()
    await producer.init_transactions()
    with pytest.raises(errors.InvalidTxnStateError, match="begin_transaction"):
        producer.produce(TOPIC, b"v")
    with pytest.raises(errors.InvalidTxnStateError):
        await producer.commit_transaction()


async def test_named_memory_brokers_are_shared_in_process() -> None:
    async with connect("memory://shared-test") as one, connect("memory://shared-test") as two:
        await one.create_topic("t", 1)
        assert [t.name for t in await two.list_topics()] == ["t"]
    async with connect("memory://") as private:
        assert await private.list_topics() == []


async def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with connect("sqlite:///relative.db?synchronous=full") as transport:
        await transport.create_topic("t", 1)
    assert (tmp_path / "relative.db").exists()
    async with connect(f"sqlite:///{tmp_path}/absolute.db") as transport:
        await transport.create_topic("t", 1)
    assert (tmp_path / "absolute.db").exists()
    with pytest.raises(errors.ConfigurationError, match="unknown broker URL options"):
        connect("sqlite:///x.db?colour=blue")
    with pytest.raises(errors.ConfigurationError, match="unknown broker URL scheme"):
        connect("redis://localhost")


async def test_retention_runs_by_itself_after_writes(tmp_path: Path) -> None:
    async with connect(f"sqlite:///{tmp_path}/r.db?maintenance_interval_s=0") as transport:
        await transport.create_topic("short", 1, retention_ms=60_000)
        producer = transport.producer()
        hour_ago = int(time.time() * 1000) - 3_600_000
        await producer.send("short", b"old", partition=0, timestamp=hour_ago)
        await producer.send("short", b"new", partition=0)  # this write triggers maintenance
        await producer.send("short", b"newer", partition=0)
        info = await transport.partition_info("short", 0)
        assert info.log_start == 1
        consumer = transport.consumer()
        await consumer.assign([TopicPartition("short", 0)])
        assert [r.value for r in await drain(consumer)] == [b"new", b"newer"]


async def test_restarted_static_member_releases_what_the_group_took_meanwhile(
    broker: Transport,
) -> None:
    """A worker killed while asked to give up partitions comes back (same instance id): it
    must release them at once, not sit on them until its rebalance timeout expels it."""
    first = broker.consumer("g", heartbeat_interval_ms=50, instance_id="worker-0")
    await first.subscribe([TOPIC])
    await first.getmany(timeout=0.05)
    assert len(first.assignment()) == 4
    other = broker.consumer("g", heartbeat_interval_ms=50)
    await other.subscribe([TOPIC])  # the group now wants 2 partitions moved to `other`
    first._heartbeats.cancel()  # type: ignore[union-attr]  # killed before it released them
    restarted = broker.consumer("g", heartbeat_interval_ms=50, instance_id="worker-0")
    await restarted.subscribe([TOPIC])
    deadline = time.monotonic() + 5
    while len(other.assignment()) < 2 and time.monotonic() < deadline:
        await asyncio.gather(restarted.getmany(timeout=0.05), other.getmany(timeout=0.05))
    assert len(other.assignment()) == 2 and len(restarted.assignment()) == 2
    await restarted.close()
    await other.close()
