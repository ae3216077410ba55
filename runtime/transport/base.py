"""The transport interface: what the worker uses, what each back end implements.

Shaped after the Kafka clients (confluent-kafka, aiokafka) so the Kafka back end is a thin
adapter. Every call is async and never blocks the event loop.

    broker = connect("sqlite:///app.db")
    await broker.create_topic("words", partitions=4)
    producer = broker.producer(transactional_id="wordcount-0")
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce("counts", value=b"1", key=b"w")       # buffered, no await
    await producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
    await producer.commit_transaction()
    consumer = broker.consumer(group_id="wordcount", isolation="read_committed")
    await consumer.subscribe(["words"], on_assign=..., on_revoke=...)
    batch = await consumer.getmany(timeout=0.5, max_records=1000)
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from runtime.errors import InvalidRequestError
from runtime.types import (
    GroupMetadata,
    Headers,
    PartitionInfo,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"

RebalanceCallback = Callable[[set[TopicPartition]], Awaitable[None] | None]
DeliveryCallback = Callable[[RecordMetadata | None, BaseException | None], None]


class Producer(abc.ABC):
    """An idempotent producer; with a transactional id, a transactional one."""

    transactional_id: str | None

    @abc.abstractmethod
    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Buffer one record (no await). It is written by the next flush: when `linger_ms`
        passes, when a batch fills, at `flush()` or at `commit_transaction()`. Errors reach
        `on_delivery` and the next `flush()`."""

    def produce_many(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None = None,
        *,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Buffer records given as columns (no await): the same as calling `produce(topic,
        values[i], keys[i], partition=partition, timestamp=timestamp)` for each i in order
        (same checks, same placement, same order within a partition), without a call per
        record where the back end can avoid it. `keys`, when given, is as long as `values`.
        On a bad record the records before it are buffered, as with a loop of `produce`."""
        if keys is not None and len(keys) != len(values):
            raise InvalidRequestError(
                f"keys and values differ in length ({len(keys)} and {len(values)})"
            )
        produce = self.produce
        if keys is None:
            for value in values:
                produce(topic, value, None, partition=partition, timestamp=timestamp)
        else:
            for value, key in zip(values, keys, strict=True):
                produce(topic, value, key, partition=partition, timestamp=timestamp)

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp: int | None = None,
    ) -> RecordMetadata:
        """Produce one record and wait until it is written; returns where it was written."""
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()

        def delivered(meta: RecordMetadata | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert meta is not None
                future.set_result(meta)

        self.produce(
            topic,
            value,
            key,
            partition=partition,
            headers=headers,
            timestamp=timestamp,
            on_delivery=delivered,
        )
        return await future

    @abc.abstractmethod
    async def flush(self) -> None:
        """Write every buffered record; raises the first delivery error."""

    @abc.abstractmethod
    async def init_transactions(self) -> None:
        """Register the transactional id: fences older instances, aborts their open
        transaction. Call once before the first transaction."""

    @abc.abstractmethod
    async def begin_transaction(self) -> None: ...

    @abc.abstractmethod
    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: GroupMetadata
    ) -> None:
        """Make `offsets` (next offset to read, per partition) the group's committed offsets
        if, and only if, this transaction commits."""

    @abc.abstractmethod
    async def commit_transaction(self) -> None: ...

    @abc.abstractmethod
    async def abort_transaction(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release the producer."""


class Consumer(abc.ABC):
    """Reads partitions given by a consumer group (`subscribe`) or by hand (`assign`)."""

    @abc.abstractmethod
    async def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        """Join the group. Callbacks run inside `getmany`: `on_revoke` before partitions are
        given up (commit or abort in-flight work there), `on_assign` after new partitions
        arrive and before any of their records is returned."""

    @abc.abstractmethod
    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read these partitions without a group (e.g. to restore a changelog)."""

    @abc.abstractmethod
    async def getmany(
        self, timeout: float = 0.5, max_records: int = 1000
    ) -> dict[TopicPartition, list[Record]]:
        """Records of assigned partitions, waiting up to `timeout` seconds for some."""

    @abc.abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    @abc.abstractmethod
    def position(self, tp: TopicPartition) -> int:
        """The offset the next record of `tp` will have (or at least start from)."""

    @abc.abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    @abc.abstractmethod
    async def seek_to_committed(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Rewind to the group's committed offsets (after an aborted transaction)."""

    @abc.abstractmethod
    async def committed(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit offsets outside a transaction (default: the current positions)."""

    @abc.abstractmethod
    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Last offset + 1 visible at this consumer's isolation level (the LSO under
        read_committed)."""

    @abc.abstractmethod
    def group_metadata(self) -> GroupMetadata: ...

    def standby(self) -> set[TopicPartition]:
        """Partitions this member should keep warm copies of (standby replicas), if the
        group assigns any; a back end without them returns nothing."""
        return set()

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group (its partitions move at once) and release the consumer."""


class Transport(abc.ABC):
    """A connection to one broker (embedded or Kafka)."""

    url: str

    @abc.abstractmethod
    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        compacted: bool = False,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicDescription: ...

    @abc.abstractmethod
    async def delete_topic(self, name: str) -> None: ...

    @abc.abstractmethod
    async def list_topics(self) -> list[TopicDescription]: ...

    @abc.abstractmethod
    async def describe_topic(self, name: str) -> TopicDescription: ...

    @abc.abstractmethod
    async def partition_info(self, topic: str, partition: int) -> PartitionInfo: ...

    @abc.abstractmethod
    async def list_groups(self) -> list[str]: ...

    @abc.abstractmethod
    async def describe_group(self, group_id: str) -> Any: ...

    @abc.abstractmethod
    async def offsets_for_time(
        self, tps: Iterable[TopicPartition], timestamp_ms: int
    ) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose record timestamp is at or after
        `timestamp_ms` (Kafka's ListOffsets by timestamp); the high watermark where none is."""

    @abc.abstractmethod
    async def alter_group_offsets(
        self, group_id: str, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """Set a group's committed offsets (next offset to read, per partition), as
        `kafka-consumer-groups --reset-offsets` does: GroupNotEmptyError while the group has
        live members; each offset must lie within [log start, high watermark]."""

    @abc.abstractmethod
    async def delete_group(self, group_id: str) -> None:
        """Delete a group and its committed offsets: GroupNotEmptyError while it has live
        members, GroupIdNotFoundError when there is no such group."""

    @abc.abstractmethod
    def producer(
        self,
        transactional_id: str | None = None,
        *,
        transaction_timeout_ms: int = 60_000,
        linger_ms: float = 5.0,
        batch_size: int = 10_000,
    ) -> Producer: ...

    @abc.abstractmethod
    def consumer(
        self,
        group_id: str | None = None,
        *,
        isolation: str = READ_UNCOMMITTED,
        auto_offset_reset: str = "earliest",
        client_id: str = "streams",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        rebalance_timeout_ms: int = 60_000,
        assignor: str = "sticky",
        instance_id: str | None = None,
        standby_replicas: int = 0,
    ) -> Consumer:
        """A consumer; `assignor="copartitioned"` gives partition p of topics with equal
        partition counts to one member (what stream processing with tables needs); a static
        `instance_id` (Kafka's group.instance.id) lets a restarted member take over at once."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def committed_records(self, topic: str, partitions: int) -> AsyncIterator[Record]:
        """Every committed record of partitions 0..partitions-1 of `topic`, up to where they
        end now; each partition's in offset order (tests, `streams table`, TestRun.read)."""
        reader = self.consumer(isolation=READ_COMMITTED)
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            await reader.assign(tps)
            ends = await reader.end_offsets(tps)
            while any(reader.position(tp) < end for tp, end in ends.items()):
                for records in (await reader.getmany(timeout=1.0, max_records=10_000)).values():
                    for record in records:
                        yield record
        finally:
            await reader.close()

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
