"""The embedded producer: buffers records, writes them in batches, one broker call per flush.

Idempotent always (a pid, an epoch and per-partition sequences, so a retried flush is never
written twice); transactional with a `transactional_id`.

    producer = transport.producer(transactional_id="wordcount-0")
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce("counts", b"1", key=b"word")
    await producer.commit_transaction()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from runtime.broker import ProduceBatch
from runtime.errors import (
    InvalidTxnStateError,
    PartitionOutOfRangeError,
    ProducerFencedError,
    StreamsError,
    TransactionAbortedError,
)
from runtime.partitioner import Partitioner, partition_for_key
from runtime.transport.base import DeliveryCallback, Producer
from runtime.transport.validation import check_record
from runtime.types import GroupMetadata, Headers, RecordMetadata, TopicPartition

if TYPE_CHECKING:
    from runtime.transport.embedded.transport import EmbeddedTransport

_Pending = tuple[
    str, int | None, bytes | None, bytes | None, Headers | None, int, DeliveryCallback | None
]
KEY_CACHE_SIZE = 100_000  # keys whose partition a producer remembers, per topic


class EmbeddedProducer(Producer):
    def __init__(
        self,
        transport: EmbeddedTransport,
        transactional_id: str | None,
        transaction_timeout_ms: int,
        linger_ms: float,
        batch_size: int,
    ) -> None:
        self.transport = transport
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self.linger_s = linger_ms / 1000
        self.batch_size = batch_size
        self._batches: dict[TopicPartition, _Batch] = {}  # records placed on a partition
        # the same batches by topic and partition number, and each topic's key placements
        # (the hot path: a keyed record is two dict lookups, a list index and three appends)
        self._by_topic: dict[str, list[_Batch | None]] = {}
        self._placements: dict[str, tuple[int, dict[bytes, int]]] = {}
        self._unplaced: list[_Pending] = []  # records of topics whose metadata is not cached
        self._buffered = 0
        self._partition_counts = transport._partitions
        self._partitioner = Partitioner()
        self._pid: int | None = None
        self._epoch = 0
        self._sequences: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._linger: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None
        self._in_transaction = False
        self._transaction_written = False
        self._fenced: BaseException | None = None

    # --- records ------------------------------------------------------------------------

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
        if (
            (value is not None and type(value) is not bytes)
            or headers is not None
            or (type(topic) is not str)
            or (key is not None and type(key) is not bytes)
            or (partition is not None and (type(partition) is not int or partition < 0))
            or (timestamp is not None and type(timestamp) is not int)
        ):
            check_record(topic, value, key, partition, headers, timestamp)
        if self._fenced is not None:
            raise self._fenced
        if self.transactional_id is not None and not self._in_transaction:
            raise InvalidTxnStateError("call begin_transaction() before producing")
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        # The hot path (a worker's outputs, changelog, repartitioned events): a record with
        # a key or a partition, no headers and no callback, for a topic with a batch open.
        batches = self._by_topic.get(topic)
        where = None
        if batches is not None and headers is None and on_delivery is None:
            if partition is not None:
                where = partition if partition < len(batches) else None
            elif key is not None:
                where = self._placements[topic][1].get(key)
                if where is None:
                    where = self._place_key(topic, key)
        batch = None if where is None or batches is None else batches[where]
        if batch is not None and batch.headers is None:
            batch.keys.append(key)
            batch.values.append(value)
            batch.timestamps.append(timestamp)
        else:
            count = self._partition_counts.get(topic)
            if count is None:
                self._unplaced.append(
                    (topic, partition, key, value, headers, timestamp, on_delivery)
                )
            else:
                self._place(count, topic, partition, key, value, headers, timestamp, on_delivery)
        self._buffered += 1
        if self._buffered >= self.batch_size:
            self._flush_soon(0)
        elif self._linger is None:
            self._flush_soon(self.linger_s)

    def produce_many(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None = None,
        *,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        # The columns' fast path: keyed records, one timestamp for all (`produce` takes the
        # time per record, which moves by less than a millisecond over a call), placed with
        # the key cache and appended to their partition's open batch without a call per
        # record. Anything else (a partition without an open batch, or whose batch has
        # headers, a key not yet placed, a topic not yet seen, a bad record) goes through
        # `produce`, record by record, in order.
        if (
            keys is None
            or partition is not None
            or type(topic) is not str
            or self._fenced is not None
            or (self.transactional_id is not None and not self._in_transaction)
            or len(keys) != len(values)
            or (timestamp is not None and type(timestamp) is not int)
        ):
            super().produce_many(topic, values, keys, partition=partition, timestamp=timestamp)
            return
        if timestamp is None:
            timestamp = time.time_ns() // 1_000_000
        batches = self._by_topic.get(topic)
        placements = self._placements.get(topic)
        where_of = None if placements is None else placements[1].get
        produce = self.produce
        added = 0
        try:
            for value, key in zip(values, keys, strict=True):
                if (
                    where_of is None
                    or batches is None
                    or type(key) is not bytes
                    or (where := where_of(key)) is None
                    or (batch := batches[where]) is None
                    or batch.headers is not None
                    or (value is not None and type(value) is not bytes)
                ):
                    produce(topic, value, key, timestamp=timestamp)
                    batches = self._by_topic.get(topic)
                    placements = self._placements.get(topic)
                    where_of = None if placements is None else placements[1].get
                else:
                    batch.keys.append(key)
                    batch.values.append(value)
                    batch.timestamps.append(timestamp)
                    self._buffered += 1
                added += 1
        finally:
            if added and self._buffered >= self.batch_size:
                self._flush_soon(0)
            elif added and self._linger is None:
                self._flush_soon(self.linger_s)

    def _flush_soon(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        if self._linger is not None:
            self._linger.cancel()
        self._linger = loop.call_later(delay, self._start_background_flush)

    def _start_background_flush(self) -> None:
        self._linger = None
        task = asyncio.ensure_future(self._background_flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_flush(self) -> None:
        try:
            async with self._lock:
                await self._write_pending()
        except Exception as exc:  # every record's callback has it; flush() raises it
            self._error = exc

    async def flush(self) -> None:
        async with self._lock:
            await self._write_pending()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def _write_pending(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        failed = await self._place_unplaced()
        batches, self._batches, self._by_topic = self._batches, {}, {}
        self._buffered = 0
        for topic in {tp.topic for tp in batches}:
            self._partitioner.next_batch(topic)
        if batches:
            await self._write(batches)
        if failed:
            raise failed

    async def _place_unplaced(self) -> Exception | None:
        """Fetch metadata for topics not seen before and place their records; records of
        unknown topics fail (their callbacks get the error), the others go on."""
        records, self._unplaced = self._unplaced, []
        failed: Exception | None = None
        for record in records:
            try:
                self._place(await self.transport.partitions_of(record[0]), *record)
            except Exception as exc:
                failed = failed or exc
                if record[6] is not None:
                    record[6](None, exc)
        return failed

    def _place(
        self,
        count: int,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
        timestamp: int,
        callback: DeliveryCallback | None,
    ) -> None:
        """Add a record to its partition's batch (`count`: the topic's partitions)."""
        if partition is None:
            partition = self._partitioner.partition(topic, key, count)
        elif partition >= count:
            raise PartitionOutOfRangeError(
                f"partition {partition} out of range for {topic!r} ({count} partitions)"
            )
        tp = TopicPartition(topic, partition)
        batch = self._batches.get(tp)
        if batch is None:
            batch = self._batches[tp] = _Batch()
            batches = self._by_topic.get(topic)
            if batches is None or len(batches) != count:
                batches = self._by_topic[topic] = [None] * count
                if self._placements.get(topic, (count,))[0] != count:
                    self._placements[topic] = (count, {})
                self._placements.setdefault(topic, (count, {}))
            batches[partition] = batch
        batch.add(key, value, timestamp, headers, callback)

    def _place_key(self, topic: str, key: bytes) -> int:
        """The partition of `key` in `topic` (murmur2, as Kafka's), remembered."""
        count, placed = self._placements[topic]
        if len(placed) >= KEY_CACHE_SIZE:
            placed.clear()
        where = placed[key] = partition_for_key(key, count)
        return where

    async def _write(self, batches: dict[TopicPartition, _Batch]) -> None:
        """Write `batches` in one broker call. Whatever fails (the producer id, the write),
        every record's delivery callback gets the error, so no `send()` waits forever."""
        try:
            await self._write_batches(batches)
        except BaseException as exc:
            if isinstance(exc, ProducerFencedError):
                self._fenced = exc
            error = exc if isinstance(exc, Exception) else StreamsError("the write was cancelled")
            for batch in batches.values():
                batch.fail(error)
            raise

    async def _write_batches(self, batches: dict[TopicPartition, _Batch]) -> None:
        if self._pid is None:
            if self.transactional_id is not None:
                raise InvalidTxnStateError("call init_transactions() first")
            self._pid, self._epoch = await self.transport._write(
                self.transport.broker.init_producer_id
            )
        requests = [
            ProduceBatch(
                tp.topic,
                tp.partition,
                self._sequences.get(tp, 0),
                batch.keys,
                batch.values,
                batch.timestamps,
                batch.headers,
            )
            for tp, batch in batches.items()
        ]
        transactional = self.transactional_id is not None
        offsets = await self.transport._write(
            self.transport.broker.produce,
            self._pid,
            self._epoch,
            requests,
            transactional=transactional,
        )
        if transactional:
            self._transaction_written = True
        for (tp, batch), base in zip(batches.items(), offsets, strict=True):
            self._sequences[tp] = self._sequences.get(tp, 0) + len(batch.values)
            batch.delivered(tp, base)

    def _drop_buffered(self, error: BaseException) -> None:
        for batch in self._batches.values():
            batch.fail(error)
        for record in self._unplaced:
            if record[6] is not None:
                record[6](None, error)
        self._batches, self._unplaced, self._buffered = {}, [], 0
        self._by_topic = {}

    # --- transactions -------------------------------------------------------------------

    def _require_transactional(self) -> None:
        if self.transactional_id is None:
            raise InvalidTxnStateError("this producer has no transactional_id")
        if self._pid is None:
            raise InvalidTxnStateError("call init_transactions() first")
        if self._fenced is not None:
            raise self._fenced

    async def init_transactions(self) -> None:
        if self.transactional_id is None:
            raise InvalidTxnStateError("init_transactions() needs a transactional_id")
        async with self._lock:
            self._drop_buffered(TransactionAbortedError("producer re-initialised"))
            self._pid, self._epoch = await self.transport._write(
                self.transport.broker.init_producer_id,
                self.transactional_id,
                self.transaction_timeout_ms,
            )
            self._sequences.clear()
            self._fenced = None
            self._in_transaction = False
            self._transaction_written = False

    async def begin_transaction(self) -> None:
        self._require_transactional()
        if self._in_transaction:
            raise InvalidTxnStateError("a transaction is already open")
        self._in_transaction = True
        self._transaction_written = False

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: GroupMetadata
    ) -> None:
        self._require_transactional()
        if not self._in_transaction:
            raise InvalidTxnStateError("send_offsets_to_transaction() outside a transaction")
        assert self._pid is not None
        try:
            await self.transport._write(
                self.transport.broker.send_offsets_to_transaction,
                self._pid,
                self._epoch,
                dict(offsets),
                group_metadata,
            )
        except ProducerFencedError as exc:
            self._fenced = exc
            raise
        self._transaction_written = True

    async def commit_transaction(self) -> None:
        self._require_transactional()
        if not self._in_transaction:
            raise InvalidTxnStateError("commit_transaction() with no open transaction")
        await self.flush()
        await self._end(commit=True)

    async def abort_transaction(self) -> None:
        self._require_transactional()
        if not self._in_transaction:
            raise InvalidTxnStateError("abort_transaction() with no open transaction")
        async with self._lock:
            self._drop_buffered(TransactionAbortedError("transaction aborted"))
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
        self._error = None
        await self._end(commit=False)

    async def _end(self, commit: bool) -> None:
        assert self._pid is not None
        async with self._lock:
            if self._transaction_written:
                try:
                    self._epoch = await self.transport._write(
                        self.transport.broker.end_transaction, self._pid, self._epoch, commit
                    )
                except ProducerFencedError as exc:
                    self._fenced = exc
                    self._in_transaction = False
                    raise
            self._sequences.clear()
            self._in_transaction = False
            self._transaction_written = False

    async def close(self) -> None:
        if self._in_transaction:
            await self.abort_transaction()
        elif self._fenced is None:
            await self.flush()
        for task in list(self._background):
            await task


class _Batch:
    """Records buffered for one partition, as the columns the broker stores."""

    __slots__ = ("callbacks", "headers", "keys", "timestamps", "values")

    def __init__(self) -> None:
        self.keys: list[bytes | None] = []
        self.values: list[bytes | None] = []
        self.timestamps: list[int] = []
        self.headers: list[Headers | None] | None = None
        self.callbacks: list[tuple[int, DeliveryCallback]] | None = None

    def add(
        self,
        key: bytes | None,
        value: bytes | None,
        timestamp: int,
        headers: Headers | None,
        callback: DeliveryCallback | None,
    ) -> None:
        index = len(self.values)
        self.keys.append(key)
        self.values.append(value)
        self.timestamps.append(timestamp)
        if headers is not None:
            if self.headers is None:
                self.headers = [None] * index
            self.headers.append(headers)
        elif self.headers is not None:
            self.headers.append(None)
        if callback is not None:
            if self.callbacks is None:
                self.callbacks = []
            self.callbacks.append((index, callback))

    def delivered(self, tp: TopicPartition, base: int) -> None:
        for index, callback in self.callbacks or ():
            callback(
                RecordMetadata(tp.topic, tp.partition, base + index, self.timestamps[index]), None
            )

    def fail(self, error: BaseException) -> None:
        for _, callback in self.callbacks or ():
            callback(None, error)
