"""What only the embedded transport does: per-batch keyless placement, long polling across
connections and processes, SQLite and named in-memory URLs, retention, and group edge cases
that need to stop a member's heartbeats. The behaviour both back ends share is in
test_contract.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.transport import Transport, connect
from runtime.types import TopicPartition
from tests.transport.conftest import read

TOPIC = "events"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Transport]:
    async with connect(f"sqlite:///{tmp_path}/broker.db") as transport:
        await transport.create_topic(TOPIC, 4)
        yield transport


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
        assert [r.value for r in await read(consumer, 2)] == [b"new", b"newer"]


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
