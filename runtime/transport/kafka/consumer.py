"""The Kafka consumer: librdkafka's consumer behind the transport interface.

Every call into librdkafka runs on the consumer's own thread (see `consumer_thread`); what the
worker asks synchronously (`position`, `assignment`, `group_metadata`, `seek`) is answered from
a mirror kept on the event loop, so it never waits for that thread (a commit inside a rebalance
callback asks for positions while `consume()` is still running).

Positions: after every fetch the mirror takes librdkafka's own position when it is ahead of the
last record returned. librdkafka moves it past transaction markers and aborted records, which
take offsets in the log; so a fully read partition reports `position(tp) >= end_offsets()[tp]`
(the last stable offset), as with the embedded broker. librdkafka reports no position after an
assign or seek until it returns a record, so a stale one is never taken.

    consumer = transport.consumer("wordcount", isolation="read_committed")
    await consumer.subscribe(["words"], on_assign=restore, on_revoke=commit)
    batch = await consumer.getmany(timeout=0.5)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, Message
from confluent_kafka import Consumer as ClientConsumer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from runtime.errors import (
    ConfigurationError,
    InvalidRequestError,
    OffsetOutOfRangeError,
    StreamsError,
)
from runtime.transport.base import READ_COMMITTED, READ_UNCOMMITTED, Consumer, RebalanceCallback
from runtime.transport.kafka.consumer_thread import ConsumerThread
from runtime.transport.kafka.errors import to_streams_error
from runtime.transport.kafka.options import ASSIGNORS
from runtime.types import GroupMetadata, Record, TopicPartition

if TYPE_CHECKING:
    from runtime.transport.kafka.transport import KafkaTransport

log = logging.getLogger(__name__)
POLL_SLICE_S = 0.1  # a waiting fetch checks this often whether a position moved past markers
UNSTABLE_RETRY_S = 30.0  # how long committed() waits for pending transactional offsets


async def _run_callback(
    callback: RebalanceCallback | None, partitions: set[TopicPartition]
) -> None:
    if callback is None or not partitions:
        return
    result = callback(set(partitions))
    if inspect.isawaitable(result):
        await result


def _ktp(tp: TopicPartition, offset: int = OFFSET_INVALID) -> KafkaTopicPartition:
    return KafkaTopicPartition(tp.topic, tp.partition, offset)


def _tp(ktp: KafkaTopicPartition) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


def _record(message: Message) -> Record:
    headers = message.headers()
    return Record(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value(),
        message.timestamp()[1],
        list(headers) if headers else None,  # type: ignore[arg-type]
    )


class KafkaConsumer(Consumer):
    def __init__(
        self,
        transport: KafkaTransport,
        group_id: str | None,
        *,
        isolation: str,
        auto_offset_reset: str,
        client_id: str,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        rebalance_timeout_ms: int,
        assignor: str,
        instance_id: str | None,
    ) -> None:
        if isolation not in (READ_COMMITTED, READ_UNCOMMITTED):
            raise ConfigurationError(
                f"isolation must be read_committed or read_uncommitted, not {isolation!r}"
            )
        if auto_offset_reset not in ("earliest", "latest", "none"):
            raise ConfigurationError("auto_offset_reset must be earliest, latest or none")
        if assignor not in ASSIGNORS:
            raise ConfigurationError(f"assignor must be one of {sorted(ASSIGNORS)}")
        self.transport = transport
        self.group_id = group_id
        self.isolation = isolation
        self.auto_offset_reset = auto_offset_reset
        self._cooperative = ASSIGNORS[assignor] == "cooperative-sticky"
        config: dict[str, Any] = {
            **transport.options.base(),
            # librdkafka wants a group id even for assign(); one nobody joins or commits to
            "group.id": group_id or f"streams-unjoined-{uuid.uuid4().hex}",
            "client.id": client_id,
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error" if auto_offset_reset == "none" else auto_offset_reset,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "max.poll.interval.ms": max(rebalance_timeout_ms, session_timeout_ms),
            "partition.assignment.strategy": ASSIGNORS[assignor],
            "allow.auto.create.topics": False,
        }
        if instance_id and transport.options.static_membership:
            config["group.instance.id"] = instance_id
        try:
            self._client = ClientConsumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Kafka consumer settings: {exc}") from exc
        self._thread = ConsumerThread()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._positions: dict[TopicPartition, int] = {}  # the assignment and its positions
        self._pending_seeks: dict[TopicPartition, int] = {}  # applied before the next fetch
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._native_metadata: Any = None
        self._member_id = ""
        self._callback_error: BaseException | None = None
        self._subscribed = False
        self._closed = False

    # --- group membership ---------------------------------------------------------------

    async def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        """Join the group. Kafka hands out partitions asynchronously: they arrive (and the
        callbacks run) inside a later `getmany`."""
        if not self.group_id:
            raise ConfigurationError("subscribe() needs a consumer with a group_id")
        await self.transport.ensure_reachable()
        self._loop = asyncio.get_running_loop()
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._subscribed = True
        try:
            await self._thread.call(
                self._client.subscribe,
                list(topics),
                on_assign=self._assigned_on_thread,
                on_revoke=self._revoked_on_thread,
                on_lost=self._lost_on_thread,
            )
        except KafkaException as exc:
            raise to_streams_error(exc, "subscribe") from None

    # librdkafka calls these on the consumer thread, inside consume()/poll()/close().

    def _assigned_on_thread(self, client: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = {_tp(p) for p in partitions}
        starts: dict[TopicPartition, int] = {}
        try:
            self._refresh_metadata()
            starts = self._starting_offsets_now(tps)
            self._thread.run_on_loop(self._require_loop(), self._assigned, starts)
        except BaseException as exc:
            self._remember(exc)
        finally:
            offsets = [
                _ktp(tp, self._positions.get(tp, starts.get(tp, OFFSET_INVALID))) for tp in tps
            ]
            self._apply_assignment(offsets, add=True)

    def _revoked_on_thread(self, client: Any, partitions: list[KafkaTopicPartition]) -> None:
        self._end_ownership(partitions, lost=False)

    def _lost_on_thread(self, client: Any, partitions: list[KafkaTopicPartition]) -> None:
        self._end_ownership(partitions, lost=True)

    def _end_ownership(self, partitions: list[KafkaTopicPartition], lost: bool) -> None:
        try:
            self._thread.run_on_loop(
                self._require_loop(), self._revoked, {_tp(p) for p in partitions}, lost
            )
        except BaseException as exc:
            self._remember(exc)
        finally:
            self._apply_assignment(partitions, add=False)

    def _apply_assignment(self, partitions: list[KafkaTopicPartition], add: bool) -> None:
        """Tell librdkafka the rebalance is handled: eager (range) replaces the whole
        assignment, cooperative changes it incrementally."""
        try:
            if self._cooperative:
                if add:
                    self._client.incremental_assign(partitions)
                else:
                    self._client.incremental_unassign(partitions)
            elif add:
                self._client.assign(partitions)
            else:
                self._client.unassign()
        except KafkaException as exc:
            self._remember(to_streams_error(exc, "rebalance"))

    async def _assigned(self, starts: dict[TopicPartition, int]) -> None:
        for tp in starts:
            self._pending_seeks.pop(tp, None)
        self._positions.update(starts)
        await _run_callback(self._on_assign, set(starts))

    async def _revoked(self, tps: set[TopicPartition], lost: bool) -> None:
        """`on_revoke` before the partitions are given up (it may still commit them); for
        lost partitions (our membership expired), after: they are no longer ours to commit."""
        owned = tps & set(self._positions)
        if lost:
            self._forget(owned)
        await _run_callback(self._on_revoke, owned)
        self._forget(owned)

    def _forget(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._positions.pop(tp, None)
            self._pending_seeks.pop(tp, None)

    def _remember(self, exc: BaseException) -> None:
        """A callback's error, raised by the getmany (or close) it ran inside."""
        if self._callback_error is None:
            self._callback_error = exc
        else:
            log.warning("another error in a rebalance callback: %r", exc)

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise StreamsError("the consumer was never used from an event loop")
        return self._loop

    def _refresh_metadata(self) -> None:
        """On the consumer thread: the group metadata a transaction needs (KIP-447)."""
        if self._subscribed:
            self._native_metadata = self._client.consumer_group_metadata()
            self._member_id = self._client.memberid() or ""

    # --- offsets ------------------------------------------------------------------------

    def _starting_offsets_now(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """On the consumer thread: the committed offset of each partition, else where
        `auto_offset_reset` says."""
        if not tps:
            return {}
        starts = self._committed_now(tps)
        missing = [tp for tp in tps if tp not in starts]
        if missing and self.auto_offset_reset == "none":
            tp = missing[0]
            raise OffsetOutOfRangeError(
                f"no committed offset for {tp.topic}[{tp.partition}] and auto_offset_reset='none'"
            )
        which = "earliest" if self.auto_offset_reset == "earliest" else "latest"
        starts.update(self.transport.list_offsets_now(missing, which, self.isolation))
        return starts

    def _committed_now(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """On the consumer thread: committed offsets, waiting while a transaction holds
        pending offsets for a partition (UNSTABLE_OFFSET_COMMIT), never returning stale ones."""
        if not self.group_id:
            return {}
        request = [_ktp(tp) for tp in tps]
        deadline = time.monotonic() + UNSTABLE_RETRY_S
        delay = 0.01
        while True:
            try:
                result = self._client.committed(request, timeout=self.transport.options.timeout_s)
            except KafkaException as exc:
                raise to_streams_error(exc, "committed offsets") from None
            errors = [p.error for p in result if p.error is not None]
            unstable = any(e.code() == KafkaError.UNSTABLE_OFFSET_COMMIT for e in errors)
            if unstable and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            if errors:
                raise to_streams_error(errors[0], "committed offsets")
            return {_tp(p): p.offset for p in result if p.offset >= 0}

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        tps = {TopicPartition(*tp) for tp in partitions}
        await self.transport.ensure_reachable()
        self._loop = asyncio.get_running_loop()
        keep = {tp: pos for tp, pos in self._positions.items() if tp in tps}
        starts = await self._thread.call(self._starting_offsets_now, tps - set(keep))
        positions = {**keep, **starts}
        try:
            await self._thread.call(
                self._client.assign, [_ktp(tp, offset) for tp, offset in positions.items()]
            )
        except KafkaException as exc:
            raise to_streams_error(exc, "assign") from None
        self._positions = positions
        self._pending_seeks = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def position(self, tp: TopicPartition) -> int:
        return self._positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Move the position now; librdkafka follows before the next fetch."""
        if tp not in self._positions:
            raise InvalidRequestError(f"{tp} is not assigned to this consumer")
        if type(offset) is not int or offset < 0:
            raise InvalidRequestError(f"offset must be a non-negative int, not {offset!r}")
        self._positions[tp] = offset
        self._pending_seeks[tp] = offset

    async def seek_to_committed(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        tps = set(self._positions if partitions is None else partitions) & set(self._positions)
        starts = await self._thread.call(self._starting_offsets_now, tps)
        for tp, offset in starts.items():
            if tp in self._positions:
                self.seek(tp, offset)

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if not self.group_id:
            return {}
        return await self._thread.call(self._committed_now, list(partitions))

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        if not self.group_id:
            raise ConfigurationError("commit() needs a consumer with a group_id")
        chosen = dict(self._positions if offsets is None else offsets)
        if not chosen:
            return
        try:
            result: Any = await self._thread.call(
                self._client.commit,
                offsets=[_ktp(tp, offset) for tp, offset in chosen.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise to_streams_error(exc, "commit") from None
        for partition in result or []:
            if partition.error is not None:
                raise to_streams_error(partition.error, "commit")

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return await self.transport.list_offsets(list(partitions), "latest", self.isolation)

    def group_metadata(self) -> GroupMetadata:
        return GroupMetadata(self.group_id or "", -1, self._member_id, self._native_metadata)

    # --- reading ------------------------------------------------------------------------

    async def getmany(
        self, timeout: float = 0.5, max_records: int = 1000
    ) -> dict[TopicPartition, list[Record]]:
        if self._closed:
            raise StreamsError("consumer is closed")
        if not self._subscribed and not self._positions:
            await asyncio.sleep(timeout)
            return {}
        await self.transport.ensure_reachable()
        self._loop = asyncio.get_running_loop()
        seeks, self._pending_seeks = self._pending_seeks, {}
        try:
            records, positions = await self._thread.call(self._fetch, seeks, max_records, timeout)
        except BaseException:
            self._pending_seeks = {**seeks, **self._pending_seeks}
            raise
        self._raise_callback_error()
        return self._accept(records, positions)

    def _fetch(
        self, seeks: dict[TopicPartition, int], max_records: int, timeout: float
    ) -> tuple[dict[TopicPartition, list[Record]], dict[TopicPartition, int]]:
        """On the consumer thread: apply seeks, take what is buffered, else wait for a first
        record (or a position moved past markers) up to `timeout`, then what came with it."""
        for tp, offset in seeks.items():
            if tp in self._positions:
                self._seek_now(tp, offset)
        messages = self._client.consume(max_records, 0)
        deadline = time.monotonic() + timeout
        while not messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._moved():
                break
            first = self._client.poll(min(POLL_SLICE_S, remaining))
            if first is not None:
                messages = [first]
                if max_records > 1:
                    messages.extend(self._client.consume(max_records - 1, 0))
        records: dict[TopicPartition, list[Record]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._consumer_error(error)
                continue
            record = _record(message)
            records.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        self._refresh_metadata()
        return records, self._library_positions()

    def _seek_now(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._client.seek(_ktp(tp, offset))
        except KafkaException:
            # not fetching yet (just assigned): assigning with the offset is the same move
            if self._cooperative or self._subscribed:
                raise
            self._client.assign([_ktp(p, o) for p, o in self._positions.items()])

    def _library_positions(self) -> dict[TopicPartition, int]:
        assigned = list(self._positions)
        if not assigned:
            return {}
        return {
            _tp(p): p.offset
            for p in self._client.position([_ktp(tp) for tp in assigned])
            if p.offset >= 0
        }

    def _moved(self) -> bool:
        """Whether librdkafka's position of a partition passed ours with no record returned
        (markers or aborted records only): the fetch returns so the caller sees it."""
        for tp, position in self._library_positions().items():
            if position > self._positions.get(tp, position):
                return True
        return False

    def _consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise to_streams_error(error, "consume")
        log.warning("kafka consumer: %s", error.str())

    def _accept(
        self, records: dict[TopicPartition, list[Record]], positions: dict[TopicPartition, int]
    ) -> dict[TopicPartition, list[Record]]:
        """Take a fetch's records and positions, except for partitions revoked or sought
        while it ran (their records are fetched again from the new position)."""
        out = {}
        for tp, batch in records.items():
            if tp in self._positions and tp not in self._pending_seeks:
                out[tp] = batch
                self._positions[tp] = batch[-1].offset + 1
        for tp, position in positions.items():
            current = self._positions.get(tp)
            if current is not None and tp not in self._pending_seeks and position > current:
                self._positions[tp] = position
        return out

    async def close(self) -> None:
        """Leave the group (a static member, with an `instance_id`, stays in it until its
        session times out, as in Kafka); `on_revoke` runs for what it owned."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._thread.call(self._client.close)
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the Kafka consumer: %s", exc)
        finally:
            self._positions.clear()
            self._thread.shutdown()
        self._raise_callback_error()
