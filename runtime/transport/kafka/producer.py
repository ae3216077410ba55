"""The Kafka producer: librdkafka's idempotent (and, with an id, transactional) producer.

`produce()` never waits: librdkafka queues the record and sends it from its own threads.
Delivery reports are served by a background task polling the client in a thread while records
are outstanding (and by flushes); each report hops to the event loop before any callback of
ours runs. Blocking calls (flush, transactions) run on the producer's own thread, one at a time.

    producer = transport.producer(transactional_id="wordcount-0")
    await producer.init_transactions()
    await producer.begin_transaction()
    producer.produce("counts", b"1", key=b"word")
    await producer.commit_transaction()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import Producer as ClientProducer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from runtime.errors import (
    ConfigurationError,
    InvalidRequestError,
    InvalidTxnStateError,
    ProducerFencedError,
    StreamsError,
    TransactionAbortedError,
)
from runtime.transport.base import DeliveryCallback, Producer
from runtime.transport.kafka.errors import to_streams_error
from runtime.transport.validation import check_record
from runtime.types import GroupMetadata, Headers, RecordMetadata, TopicPartition

if TYPE_CHECKING:
    from runtime.transport.kafka.transport import KafkaTransport

T = TypeVar("T")
MESSAGE_TIMEOUT_MS = 300_000  # librdkafka's default message.timeout.ms
RETRIES = 3  # attempts of a transactional call that fails with a retriable error
MIN_CALL_TIMEOUT_S = 5.0
POLL_S = 0.05
STICKY_MS = 10


class KafkaProducer(Producer):
    def __init__(
        self,
        transport: KafkaTransport,
        transactional_id: str | None,
        transaction_timeout_ms: int,
        linger_ms: float,
        batch_size: int,
    ) -> None:
        self.transport = transport
        self.transactional_id = transactional_id
        # a transactional call waits this long per attempt: past its timeout the broker
        # aborts the transaction anyway
        self._timeout_s = max(MIN_CALL_TIMEOUT_S, transaction_timeout_ms / 1000)
        self._config: dict[str, Any] = {
            **transport.options.base(),
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # keys land where the Java client puts them
            # librdkafka wants records sent before they time out (message.timeout.ms, which
            # is the transaction timeout for a transactional producer): linger half of it
            "linger.ms": min(
                max(float(linger_ms), 0.0),
                _message_timeout_ms(transactional_id, transaction_timeout_ms) / 2,
            ),
            "batch.num.messages": max(1, min(int(batch_size), 1_000_000)),
            # keyless records stick to a partition for a moment, then move on (librdkafka's
            # default, twice linger.ms, would pin a long-lingering worker to one partition)
            "sticky.partitioning.linger.ms": STICKY_MS,
            # a record for a topic that does not exist fails after this, not after 30 s
            "topic.metadata.propagation.max.ms": int(transport.options.timeout_s * 1000),
            "queue.buffering.max.messages": 1_000_000,
            "allow.auto.create.topics": False,  # a typo must not create a topic
            "on_delivery": self._report_error,
        }
        if transactional_id is not None:
            self._config["transactional.id"] = transactional_id
            self._config["transaction.timeout.ms"] = transaction_timeout_ms
        self._client = self._new_client()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="streams-kafka-producer")
        self._poll_executor = ThreadPoolExecutor(1, thread_name_prefix="streams-kafka-poll")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._error: StreamsError | None = None  # first delivery error since the last flush
        self._fenced: StreamsError | None = None
        self._initialized = False
        self._in_transaction = False

    def _new_client(self) -> ClientProducer:
        try:
            return ClientProducer(self._config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Kafka producer settings: {exc}") from exc

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
        check_record(topic, value, key, partition, headers, timestamp)
        if self._fenced is not None:
            raise self._fenced
        if self.transactional_id is not None and not self._in_transaction:
            raise InvalidTxnStateError("call begin_transaction() before producing")
        self._loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        if partition is not None:
            options["partition"] = partition
        if timestamp is not None:
            options["timestamp"] = timestamp
        if headers:
            options["headers"] = headers
        if on_delivery is not None:
            options["on_delivery"] = functools.partial(self._report, on_delivery)
        try:
            try:
                self._client.produce(topic, value, key, **options)
            except BufferError:
                self._client.poll(0)  # serve reports, which frees queue space; then once more
                self._client.produce(topic, value, key, **options)
        except (KafkaException, BufferError) as exc:
            raise to_streams_error(exc, f"produce to {topic!r}") from None
        self._ensure_poller()

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
        await self.transport.ensure_reachable()  # an unreachable cluster fails, not waits
        return await super().send(
            topic, value, key, partition=partition, headers=headers, timestamp=timestamp
        )

    # librdkafka calls these on whichever thread serves its queue (poll, flush, commit).

    def _report_error(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._report(None, error, message)

    def _report(
        self, callback: DeliveryCallback | None, error: KafkaError | None, message: Message
    ) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if error is not None:
            loop.call_soon_threadsafe(self._deliver, callback, None, to_streams_error(error))
            return
        meta = RecordMetadata(
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
            message.timestamp()[1],
        )
        loop.call_soon_threadsafe(self._deliver, callback, meta, None)

    def _deliver(
        self,
        callback: DeliveryCallback | None,
        meta: RecordMetadata | None,
        error: StreamsError | None,
    ) -> None:
        """On the loop: remember the first failure for flush(), then the record's callback.
        Records dropped by an abort are not failures of the next flush."""
        if error is not None and not isinstance(error, TransactionAbortedError):
            if isinstance(error, ProducerFencedError):
                self._fenced = error
            if self._error is None:
                self._error = error
        if callback is not None:
            callback(meta, error)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll_reports())

    async def _poll_reports(self) -> None:
        """Serve delivery reports while records are outstanding (poll waits in a thread)."""
        loop = asyncio.get_running_loop()
        while len(self._client) > 0:
            await loop.run_in_executor(self._poll_executor, self._client.poll, POLL_S)

    async def _run(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        """A blocking client call on the producer's thread; its error as ours."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except (KafkaException, BufferError) as exc:
            error = to_streams_error(exc, doing)
            if isinstance(error, ProducerFencedError):
                self._fenced = error
            raise error from None

    async def _run_retrying(self, doing: str, fn: Callable[..., T], *args: Any) -> T:
        """As `_run`; a retriable failure (e.g. a timeout) is retried, as librdkafka says
        transactional calls may be."""
        for attempt in range(RETRIES):
            try:
                return await self._run(doing, fn, *args)
            except StreamsError as exc:
                if not exc.retriable or attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def flush(self) -> None:
        if len(self._client) > 0:
            await self.transport.ensure_reachable()
            await self._run("flush", self._flush_all)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _flush_all(self) -> None:
        while self._client.flush(1.0) > 0:
            pass  # every record is delivered or has failed by message.timeout.ms

    # --- transactions -------------------------------------------------------------------

    def _require_transactional(self) -> None:
        if self.transactional_id is None:
            raise InvalidTxnStateError("this producer has no transactional_id")
        if not self._initialized:
            raise InvalidTxnStateError("call init_transactions() first")
        if self._fenced is not None:
            raise self._fenced

    async def init_transactions(self) -> None:
        """Register the transactional id (fencing older producers with it). Again after a
        fence: a fenced librdkafka producer is unusable, so a new client takes its place."""
        if self.transactional_id is None:
            raise InvalidTxnStateError("init_transactions() needs a transactional_id")
        await self.transport.ensure_reachable()
        if self._initialized or self._fenced is not None:
            self._client.purge()
            self._client = self._new_client()
        self._fenced = self._error = None
        self._in_transaction = False
        await self._run_retrying(
            "init_transactions", self._client.init_transactions, self._timeout_s
        )
        self._initialized = True

    async def begin_transaction(self) -> None:
        self._require_transactional()
        if self._in_transaction:
            raise InvalidTxnStateError("a transaction is already open")
        try:
            self._client.begin_transaction()  # local state only: does not block
        except KafkaException as exc:
            raise to_streams_error(exc, "begin_transaction") from None
        self._in_transaction = True

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_metadata: GroupMetadata
    ) -> None:
        self._require_transactional()
        if not self._in_transaction:
            raise InvalidTxnStateError("send_offsets_to_transaction() outside a transaction")
        if group_metadata.native is None:
            raise InvalidRequestError(
                "send_offsets_to_transaction() needs the group_metadata() of a Kafka consumer "
                "that has joined its group"
            )
        if not offsets:
            return
        partitions = [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        await self._run_retrying(
            "send_offsets_to_transaction",
            self._client.send_offsets_to_transaction,
            partitions,
            group_metadata.native,
            self._timeout_s,
        )

    async def commit_transaction(self) -> None:
        """Flush and commit. A failure that needs an abort (TransactionAbortedError and the
        group errors) leaves the transaction open for `abort_transaction()`."""
        self._require_transactional()
        if not self._in_transaction:
            raise InvalidTxnStateError("commit_transaction() with no open transaction")
        try:
            await self._run_retrying(
                "commit_transaction", self._client.commit_transaction, self._timeout_s
            )
        except ProducerFencedError:
            self._in_transaction = False
            raise
        self._in_transaction = False
        self._error = None

    async def abort_transaction(self) -> None:
        self._require_transactional()
        if not self._in_transaction:
            raise InvalidTxnStateError("abort_transaction() with no open transaction")
        try:
            await self._run_retrying(
                "abort_transaction", self._client.abort_transaction, self._timeout_s
            )
        finally:
            self._error = None
        self._in_transaction = False

    async def close(self) -> None:
        try:
            if self._in_transaction and self._fenced is None:
                await self.abort_transaction()
            elif self._fenced is None:
                await self.flush()
        finally:
            if self._poller is not None:
                self._poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._poller
            self._executor.shutdown(wait=False)
            self._poll_executor.shutdown(wait=False)


def _message_timeout_ms(transactional_id: str | None, transaction_timeout_ms: int) -> int:
    return MESSAGE_TIMEOUT_MS if transactional_id is None else transaction_timeout_ms
