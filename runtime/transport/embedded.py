"""The embedded back end: the transport interface over `runtime.broker.Broker`.

One `Broker` (one SQLite connection) runs on one thread of its own; each broker operation is
one hop to that thread, so the event loop never blocks on SQLite and an operation's statements
are never interleaved with another's. Consumers long-poll: a write through the same connection
wakes them at once, a commit by another connection or process is seen through
`PRAGMA data_version`, polled with backoff (2 ms doubling to 50 ms) only while a consumer waits.

    transport = EmbeddedTransport.open("sqlite:///app.db")
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from runtime.broker import EARLIEST, LATEST, Broker, FetchResult, GroupDescription, ProduceBatch
from runtime.broker.groups import MemberState
from runtime.errors import (
    ConfigurationError,
    DatabaseLockedError,
    InvalidRequestError,
    InvalidTxnStateError,
    OffsetOutOfRangeError,
    ProducerFencedError,
    StreamsError,
    TransactionAbortedError,
    UnknownMemberIdError,
    UnknownTopicError,
    UnstableOffsetCommitError,
)
from runtime.partitioner import Partitioner
from runtime.transport.base import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Consumer,
    DeliveryCallback,
    Producer,
    RebalanceCallback,
    Transport,
)
from runtime.types import (
    GroupMetadata,
    Headers,
    PartitionInfo,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_MIN_S = 0.002
POLL_MAX_S = 0.05
LOCKED_RETRIES = 5


class _Core:
    """One broker connection, the thread that owns it, and the consumers waiting on it."""

    def __init__(self, broker: Broker, shared_file: bool) -> None:
        self.broker = broker
        self.shared_file = shared_file  # other connections may write: poll data_version
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="streams-broker")
        self.version = 0  # bumped by every write through this core
        self.waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.users = 0

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call that changes the database: wakes every consumer waiting on this core."""
        try:
            return await self.call(fn, *args, **kwargs)
        finally:
            self.version += 1
            for loop, event in list(self.waiters):
                loop.call_soon_threadsafe(event.set)

    def fetch_with_version(self, *args: Any, **kwargs: Any) -> tuple[dict[TopicPartition,
                                                                        FetchResult], int]:
        version = self.broker.data_version()  # read first: a commit after it changes it
        return self.broker.fetch(*args, **kwargs), version

    async def wait(
        self, timeout: float, since: int, data_version: int, wakeup: asyncio.Event
    ) -> None:
        """Wait up to `timeout` s for a write after the fetch that saw `since` and
        `data_version`, or for `wakeup`."""
        if self.version != since or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        key = (loop, wakeup)
        self.waiters.add(key)
        try:
            deadline = loop.time() + timeout
            delay = POLL_MIN_S if self.shared_file else timeout
            while self.version == since:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(wakeup.wait(), min(delay, remaining))
                    return
                except TimeoutError:
                    pass
                if self.shared_file and await self.call(self.broker.data_version) != data_version:
                    return
                delay = min(delay * 2, POLL_MAX_S)
        finally:
            self.waiters.discard(key)
            wakeup.clear()

    def close(self) -> None:
        self.executor.submit(self.broker.close).result()
        self.executor.shutdown(wait=True)


_memory_cores: dict[str, _Core] = {}
_memory_lock = threading.Lock()


def _open_core(url: str) -> tuple[_Core, str | None]:
    """The core for a URL; for named in-memory brokers, the name to release it by."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    kwargs: dict[str, Any] = {}
    if "synchronous" in options:
        kwargs["synchronous"] = options.pop("synchronous")
    if "busy_timeout_ms" in options:
        kwargs["busy_timeout_ms"] = int(options.pop("busy_timeout_ms"))
    if options:
        raise ConfigurationError(f"unknown broker URL options {sorted(options)} in {url!r}")
    if parts.scheme == "memory":
        name = (parts.netloc + parts.path).strip("/")
        if not name:
            return _Core(Broker(":memory:", **kwargs), shared_file=False), None
        with _memory_lock:
            core = _memory_cores.get(name)
            if core is None:
                core = _memory_cores[name] = _Core(Broker(":memory:", **kwargs), False)
            core.users += 1
        return core, name
    if parts.scheme == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        if not path.startswith("/") or path == "/":
            raise ConfigurationError(
                f"bad sqlite URL {url!r}: use sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
        return _Core(Broker(path[1:], **kwargs), shared_file=True), None
    raise ConfigurationError(f"the embedded broker does not serve {url!r}")


class EmbeddedTransport(Transport):
    """Transport for `sqlite:///path` (a file, shared by processes) and `memory://[name]`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._core, self._memory_name = _open_core(url)
        self._partitions: dict[str, int] = {}
        self._closed = False

    @property
    def broker(self) -> Broker:
        """The synchronous broker (for tools and tests; not for use on the event loop)."""
        return self._core.broker

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StreamsError(f"transport {self.url!r} is closed")
        return await self._core.call(fn, *args, **kwargs)

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StreamsError(f"transport {self.url!r} is closed")
        for attempt in range(LOCKED_RETRIES):
            try:
                return await self._core.write(fn, *args, **kwargs)
            except DatabaseLockedError:
                if attempt == LOCKED_RETRIES - 1:
                    raise
                log.warning("broker database busy; retrying")
                await asyncio.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def partitions_of(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = (await self.describe_topic(topic)).partitions
        return count

    # --- admin --------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        compacted: bool = False,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicDescription:
        return await self._write(
            self.broker.create_topic, name, partitions, compacted=compacted,
            retention_ms=retention_ms, retention_bytes=retention_bytes,
        )

    async def delete_topic(self, name: str) -> None:
        self._partitions.pop(name, None)
        await self._write(self.broker.delete_topic, name)

    async def list_topics(self) -> list[TopicDescription]:
        return await self._call(self.broker.list_topics)

    async def describe_topic(self, name: str) -> TopicDescription:
        return await self._call(self.broker.describe_topic, name)

    async def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        return await self._call(self.broker.partition_info, topic, partition)

    async def list_groups(self) -> list[str]:
        return await self._call(self.broker.list_groups)

    async def describe_group(self, group_id: str) -> GroupDescription:
        return await self._write(self.broker.describe_group, group_id)

    async def maintain(self, force_compaction: bool = False) -> dict[str, int]:
        """Retention, compaction and transaction timeouts, now."""
        return await self._write(self.broker.maintain, force_compaction=force_compaction)

    # --- clients ------------------------------------------------------------------------

    def producer(
        self,
        transactional_id: str | None = None,
        *,
        transaction_timeout_ms: int = 60_000,
        linger_ms: float = 5.0,
        batch_size: int = 10_000,
    ) -> EmbeddedProducer:
        return EmbeddedProducer(
            self, transactional_id, transaction_timeout_ms, linger_ms, batch_size
        )

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
    ) -> EmbeddedConsumer:
        return EmbeddedConsumer(
            self, group_id, isolation, auto_offset_reset, client_id, session_timeout_ms,
            heartbeat_interval_ms, rebalance_timeout_ms,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._memory_name is not None:
            with _memory_lock:
                self._core.users -= 1
                if self._core.users > 0:
                    return
                _memory_cores.pop(self._memory_name, None)
        await asyncio.get_running_loop().run_in_executor(None, self._core.close)


# --- producer ---------------------------------------------------------------------------

_Pending = tuple[str, int | None, bytes | None, bytes | None, Headers | None, int,
                 DeliveryCallback | None]


def _check_record(topic: Any, value: Any, key: Any, partition: Any, headers: Any,
                  timestamp: Any) -> None:
    if not isinstance(topic, str):
        raise InvalidRequestError(f"topic must be a string, not {type(topic).__name__}")
    for label, item in (("value", value), ("key", key)):
        if item is not None and type(item) is not bytes:
            raise InvalidRequestError(
                f"{label} must be bytes or None, not {type(item).__name__} (encode it first)"
            )
    if partition is not None and (type(partition) is not int or partition < 0):
        raise InvalidRequestError(f"partition must be a non-negative int, not {partition!r}")
    if timestamp is not None and type(timestamp) is not int:
        raise InvalidRequestError(f"timestamp must be int milliseconds, not {timestamp!r}")
    if headers is not None and not all(
        isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and type(h[1]) is bytes
        for h in headers
    ):
        raise InvalidRequestError("headers must be a list of (str, bytes) pairs")


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
        self._pending: list[_Pending] = []
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
        if (value is not None and type(value) is not bytes) or headers is not None or (
            type(topic) is not str
        ) or (key is not None and type(key) is not bytes) or (
            partition is not None or (timestamp is not None and type(timestamp) is not int)
        ):
            _check_record(topic, value, key, partition, headers, timestamp)
        if self._fenced is not None:
            raise self._fenced
        if self.transactional_id is not None and not self._in_transaction:
            raise InvalidTxnStateError("call begin_transaction() before producing")
        self._pending.append(
            (topic, partition, key, value, headers,
             time.time_ns() // 1_000_000 if timestamp is None else timestamp, on_delivery)
        )
        if len(self._pending) >= self.batch_size:
            self._flush_soon(0)
        elif self._linger is None:
            self._flush_soon(self.linger_s)

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
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()

        def delivered(meta: RecordMetadata | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert meta is not None
                future.set_result(meta)

        self.produce(topic, value, key, partition=partition, headers=headers,
                     timestamp=timestamp, on_delivery=delivered)
        return await future

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
        except StreamsError as exc:
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
        records, self._pending = self._pending, []
        if not records:
            return
        if self._pid is None:
            if self.transactional_id is not None:
                _fail(records, InvalidTxnStateError("call init_transactions() first"))
                raise InvalidTxnStateError("call init_transactions() first")
            self._pid, self._epoch = await self.transport._write(
                self.transport.broker.init_producer_id
            )
        columns: dict[TopicPartition, tuple[list[Any], ...]] = {}
        failed: list[tuple[_Pending, StreamsError]] = []
        counts: dict[str, int | StreamsError] = {}
        for record in records:
            topic, partition, key, value, headers, timestamp, _ = record
            count = counts.get(topic)
            if count is None:
                try:
                    count = counts[topic] = await self.transport.partitions_of(topic)
                except UnknownTopicError as exc:
                    count = counts[topic] = exc
            if isinstance(count, StreamsError):
                failed.append((record, count))
                continue
            if partition is None:
                partition = self._partitioner.partition(topic, key, count)
            elif partition >= count:
                failed.append((record, UnknownTopicError(
                    f"partition {partition} out of range for topic {topic!r} ({count} partitions)"
                )))
                continue
            tp = TopicPartition(topic, partition)
            batch = columns.get(tp)
            if batch is None:
                batch = columns[tp] = ([], [], [], [], [])
            batch[0].append(key)
            batch[1].append(value)
            batch[2].append(timestamp)
            batch[3].append(headers)
            batch[4].append(record[6])
        for topic in counts:
            self._partitioner.next_batch(topic)
        for record, error in failed:
            _fail([record], error)
        if not columns:
            if failed:
                raise failed[0][1]
            return
        batches = [
            ProduceBatch(tp.topic, tp.partition, self._sequences.get(tp, 0), keys, values,
                         timestamps, headers if any(headers) else None)
            for tp, (keys, values, timestamps, headers, _) in columns.items()
        ]
        transactional = self.transactional_id is not None
        try:
            offsets = await self.transport._write(
                self.transport.broker.produce, self._pid, self._epoch, batches,
                transactional=transactional,
            )
        except StreamsError as exc:
            if isinstance(exc, ProducerFencedError):
                self._fenced = exc
            for keys, values, timestamps, headers, callbacks in columns.values():
                for callback in callbacks:
                    if callback is not None:
                        callback(None, exc)
            raise
        if transactional:
            self._transaction_written = True
        for (tp, (_, _, timestamps, _, callbacks)), base in zip(columns.items(), offsets,
                                                                  strict=True):
            self._sequences[tp] = self._sequences.get(tp, 0) + len(timestamps)
            for i, callback in enumerate(callbacks):
                if callback is not None:
                    callback(RecordMetadata(tp.topic, tp.partition, base + i, timestamps[i]),
                             None)
        if failed:
            raise failed[0][1]

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
            _fail(self._pending, TransactionAbortedError("producer re-initialised"))
            self._pending = []
            self._pid, self._epoch = await self.transport._write(
                self.transport.broker.init_producer_id, self.transactional_id,
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
                self.transport.broker.send_offsets_to_transaction, self._pid, self._epoch,
                dict(offsets), group_metadata,
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
            _fail(self._pending, TransactionAbortedError("transaction aborted"))
            self._pending = []
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


def _fail(records: Iterable[_Pending], error: BaseException) -> None:
    for record in records:
        callback = record[6]
        if callback is not None:
            callback(None, error)


# --- consumer ---------------------------------------------------------------------------


async def _run_callback(callback: RebalanceCallback | None, partitions: set[TopicPartition]) -> None:
    if callback is None or not partitions:
        return
    result = callback(set(partitions))
    if inspect.isawaitable(result):
        await result


class EmbeddedConsumer(Consumer):
    def __init__(
        self,
        transport: EmbeddedTransport,
        group_id: str | None,
        isolation: str,
        auto_offset_reset: str,
        client_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        rebalance_timeout_ms: int,
    ) -> None:
        if isolation not in (READ_COMMITTED, READ_UNCOMMITTED):
            raise ConfigurationError(f"isolation must be read_committed or read_uncommitted, "
                                     f"not {isolation!r}")
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ConfigurationError("auto_offset_reset must be earliest, latest or none")
        self.transport = transport
        self.group_id = group_id
        self.isolation = isolation
        self.auto_offset_reset = auto_offset_reset
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_s = heartbeat_interval_ms / 1000
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self._positions: dict[TopicPartition, int] = {}
        self._topics: list[str] = []
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._member_id = ""
        self._generation = -1
        self._state: MemberState | None = None
        self._lost = False
        self._heartbeats: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._rotation = 0
        self._closed = False

    # --- assignment ---------------------------------------------------------------------

    async def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        if not self.group_id:
            raise ConfigurationError("subscribe() needs a consumer with a group_id")
        self._topics = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        await self._join()
        self._heartbeats = asyncio.ensure_future(self._heartbeat_loop())

    async def _join(self) -> None:
        assert self.group_id is not None
        broker = self.transport.broker
        self._member_id, self._generation = await self.transport._write(
            broker.join_group, self.group_id, self._topics, client_id=self.client_id,
            session_timeout_ms=self.session_timeout_ms,
            rebalance_timeout_ms=self.rebalance_timeout_ms,
        )
        self._state = await self.transport._write(broker.heartbeat, self.group_id,
                                                  self._member_id)
        self._lost = False

    async def _heartbeat_loop(self) -> None:
        assert self.group_id is not None
        while not self._closed:
            pending = self._state is not None and (self._state.pending or self._state.revoking)
            await asyncio.sleep(0.05 if pending else self.heartbeat_interval_s)
            if self._lost:
                continue
            try:
                state = await self.transport._write(
                    self.transport.broker.heartbeat, self.group_id, self._member_id
                )
            except UnknownMemberIdError:
                log.warning("consumer %s left group %s (session expired); rejoining",
                            self._member_id, self.group_id)
                self._lost = True
                self._wakeup.set()
                continue
            except StreamsError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            if state != self._state:
                self._state = state
                self._wakeup.set()

    async def _apply_group_changes(self) -> None:
        """Run revocations and assignments the group asked for (inside getmany)."""
        if self.group_id is None or not self._topics:
            return
        if self._lost:
            lost = set(self._positions)
            self._positions.clear()
            await _run_callback(self._on_revoke, lost)
            await self._join()
        state = self._state
        if state is None:
            return
        owned = set(self._positions)
        revoked = owned & state.revoking | (owned - state.assignment)
        if revoked:
            await _run_callback(self._on_revoke, revoked)
            for tp in revoked:
                self._positions.pop(tp, None)
            state = self._state = await self.transport._write(
                self.transport.broker.heartbeat, self.group_id, self._member_id, revoked
            )
        self._generation = state.generation
        added = set(state.assignment - state.revoking) - set(self._positions)
        if added:
            start = await self._starting_offsets(added)
            self._positions.update(start)
            await _run_callback(self._on_assign, added)

    async def _starting_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        committed = await self.committed(tps) if self.group_id else {}
        for tp in tps - set(committed):
            committed[tp] = await self._reset_offset(tp)
        return committed

    async def _reset_offset(self, tp: TopicPartition) -> int:
        if self.auto_offset_reset == "none":
            raise OffsetOutOfRangeError(f"no committed offset for {tp.topic}[{tp.partition}] "
                                        "and auto_offset_reset='none'")
        spec = EARLIEST if self.auto_offset_reset == "earliest" else LATEST
        return await self.transport._call(
            self.transport.broker.list_offset, tp, spec, self.isolation
        )

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        tps = {TopicPartition(*tp) for tp in partitions}
        self._positions = {tp: pos for tp, pos in self._positions.items() if tp in tps}
        self._positions.update(await self._starting_offsets(tps - set(self._positions)))

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise InvalidRequestError(f"{tp} is not assigned to this consumer")
        self._positions[tp] = offset

    async def seek_to_committed(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        tps = set(self._positions if partitions is None else partitions) & set(self._positions)
        self._positions.update(await self._starting_offsets(tps))

    def group_metadata(self) -> GroupMetadata:
        return GroupMetadata(self.group_id or "", self._generation, self._member_id)

    # --- reading ------------------------------------------------------------------------

    async def getmany(
        self, timeout: float = 0.5, max_records: int = 1000
    ) -> dict[TopicPartition, list[Record]]:
        if self._closed:
            raise StreamsError("consumer is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        core = self.transport._core
        while True:
            await self._apply_group_changes()
            since = core.version
            data_version = 0
            out: dict[TopicPartition, list[Record]] = {}
            if self._positions:
                requests = list(self._positions.items())
                self._rotation = (self._rotation + 1) % len(requests)
                requests = requests[self._rotation:] + requests[:self._rotation]
                try:
                    results, data_version = await self.transport._call(
                        core.fetch_with_version, requests, max_records=max_records,
                        isolation=self.isolation,
                    )
                except OffsetOutOfRangeError as exc:
                    tp = exc.args[-1]
                    log.warning("%s; resetting to %s", exc.args[0], self.auto_offset_reset)
                    if tp in self._positions:
                        self._positions[tp] = await self._reset_offset(tp)
                    continue
                for tp, result in results.items():
                    if self._positions.get(tp) != dict(requests)[tp]:
                        continue  # seeked or revoked meanwhile
                    self._positions[tp] = result.next_offset
                    if result.records:
                        out[tp] = result.records
            if out:
                return out
            remaining = deadline - loop.time()
            if remaining <= 0:
                return out
            await core.wait(remaining, since, data_version, self._wakeup)

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if not self.group_id:
            return {}
        tps = list(partitions)
        delay = 0.01
        while True:
            try:
                return await self.transport._call(
                    self.transport.broker.committed_offsets, self.group_id, tps
                )
            except UnstableOffsetCommitError:
                await asyncio.sleep(delay)  # a transaction holds offsets: wait for its end
                delay = min(delay * 2, 0.25)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        if not self.group_id:
            raise ConfigurationError("commit() needs a consumer with a group_id")
        await self.transport._write(
            self.transport.broker.commit_offsets, self.group_metadata(),
            dict(self._positions if offsets is None else offsets),
        )

    async def end_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {
            tp: await self.transport._call(
                self.transport.broker.list_offset, tp, LATEST, self.isolation
            )
            for tp in partitions
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            try:
                await self._heartbeats
            except asyncio.CancelledError:
                pass
        if self.group_id and self._member_id and not self._lost:
            await _run_callback(self._on_revoke, set(self._positions))
            try:
                await self.transport._write(
                    self.transport.broker.leave_group, self.group_id, self._member_id
                )
            except StreamsError as exc:
                log.warning("leaving group %s failed: %s", self.group_id, exc)
        self._positions.clear()
