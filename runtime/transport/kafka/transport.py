"""The Kafka back end: the transport interface over confluent-kafka (librdkafka).

Admin calls return librdkafka futures, awaited without a thread; the few blocking calls
(metadata) run in the loop's executor. Producers and consumers are in their own modules.

    transport = KafkaTransport("kafka://127.0.0.1:9092")
    transport = KafkaTransport(url, client_config={"sasl.password": secret})
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaException,
    TopicCollection,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from runtime.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    GroupNotEmptyError,
    InvalidPartitionsError,
    InvalidRequestError,
    OffsetOutOfRangeError,
    StreamsError,
    UnknownMemberIdError,
    UnknownTopicError,
)
from runtime.transport.base import READ_COMMITTED, READ_UNCOMMITTED, Transport
from runtime.transport.kafka.consumer import KafkaConsumer
from runtime.transport.kafka.errors import to_streams_error
from runtime.transport.kafka.options import KafkaOptions
from runtime.transport.kafka.producer import KafkaProducer
from runtime.types import PartitionInfo, TopicDescription, TopicPartition

log = logging.getLogger(__name__)
T = TypeVar("T")


class GroupMember(NamedTuple):
    member_id: str
    client_id: str
    assignment: frozenset[TopicPartition]
    instance_id: str | None


class GroupDescription(NamedTuple):
    """A consumer group as Kafka describes it (Kafka does not report the generation: -1)."""

    group_id: str
    generation: int
    members: list[GroupMember]
    offsets: dict[TopicPartition, int]
    state: str


class KafkaTransport(Transport):
    """Transport for `kafka://host:port[,host:port][?options]` (see `options` for the URL)."""

    def __init__(self, url: str, client_config: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = KafkaOptions.from_url(url, client_config)
        try:
            self.admin = AdminClient(self.options.base())
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(f"bad Kafka client settings for {url!r}: {exc}") from exc
        self._reachable = False
        self._closed = False

    # --- plumbing -----------------------------------------------------------------------

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking librdkafka call, off the event loop."""
        if self._closed:
            raise StreamsError(f"transport {self.url!r} is closed")
        self.admin.poll(0)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def _result(self, future: concurrent.futures.Future[Any], doing: str) -> Any:
        """Await an admin future; its error as ours."""
        self.admin.poll(0)  # serve librdkafka's queued log lines (they go to `logging`)
        try:
            return await asyncio.wrap_future(future)
        except KafkaException as exc:
            raise to_streams_error(exc, doing) from None

    async def ensure_reachable(self) -> None:
        """Fail within `timeout` seconds (BrokerUnavailableError) when no broker answers,
        instead of librdkafka's endless reconnecting; checked once per transport."""
        if self._reachable:
            return
        timeout = self.options.timeout_s
        try:
            await self._blocking(self.admin.list_topics, timeout=timeout)
        except KafkaException as exc:
            raise BrokerUnavailableError(
                f"cannot reach Kafka at {self.options.bootstrap} within {timeout:g} s "
                f"({exc.args[0].str() if exc.args else exc}): check the kafka:// URL, the "
                "client settings and that the brokers are up (URL option timeout=<seconds>)"
            ) from None
        self._reachable = True

    def _admin_kwargs(self) -> dict[str, float]:
        return {"request_timeout": self.options.timeout_s}

    # --- topics -------------------------------------------------------------------------

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        compacted: bool = False,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
    ) -> TopicDescription:
        _check_topic_args(name, partitions, compacted, retention_ms, retention_bytes)
        await self.ensure_reachable()
        config = self.options.topic_config(compacted, retention_ms, retention_bytes)
        topic = NewTopic(name, partitions, self.options.replication_factor, config=config)
        futures = self.admin.create_topics(
            [topic], operation_timeout=self.options.timeout_s, **self._admin_kwargs()
        )
        await self._result(futures[name], f"create topic {name!r}")
        await self._wait_visible(name)
        return TopicDescription(name, partitions, compacted, retention_ms, retention_bytes)

    async def _wait_visible(self, name: str) -> None:
        """Wait until the new topic's metadata is served, so producing to it works at once."""
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            try:
                await self._partition_count(name)
                return
            except UnknownTopicError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _partition_count(self, name: str) -> int:
        futures = self.admin.describe_topics(TopicCollection([name]), **self._admin_kwargs())
        description = await self._result(futures[name], f"describe topic {name!r}")
        return len(description.partitions)

    async def delete_topic(self, name: str) -> None:
        await self.ensure_reachable()
        futures = self.admin.delete_topics(
            [name], operation_timeout=self.options.timeout_s, **self._admin_kwargs()
        )
        await self._result(futures[name], f"delete topic {name!r}")

    async def list_topics(self) -> list[TopicDescription]:
        await self.ensure_reachable()
        try:
            metadata = await self._blocking(self.admin.list_topics, timeout=self.options.timeout_s)
        except KafkaException as exc:
            raise to_streams_error(exc, "list topics") from None
        names = sorted(n for n in metadata.topics if not n.startswith("__"))
        configs = await self._configs(names)
        return [
            _description(name, len(metadata.topics[name].partitions), configs[name])
            for name in names
        ]

    async def describe_topic(self, name: str) -> TopicDescription:
        await self.ensure_reachable()
        try:
            partitions = await self._partition_count(name)
        except UnknownTopicError:
            raise UnknownTopicError(f"unknown topic {name!r}: create it first") from None
        return _description(name, partitions, (await self._configs([name]))[name])

    async def _configs(self, names: list[str]) -> dict[str, dict[str, str | None]]:
        """The configs of topics; missing keys are absent (some brokers report only configs
        given at creation)."""
        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
        futures = self.admin.describe_configs(resources, **self._admin_kwargs())
        out: dict[str, dict[str, str | None]] = {}
        for resource, future in futures.items():
            entries = await self._result(future, f"describe configs of {resource.name!r}")
            out[resource.name] = {key: entry.value for key, entry in entries.items()}
        return out

    async def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        """Log start, high watermark and last stable offset (ListOffsets at both isolation
        levels). Kafka does not report batches or bytes here: both are -1."""
        tp = TopicPartition(topic, partition)
        earliest, high, stable = await asyncio.gather(
            self.list_offsets([tp], "earliest", READ_UNCOMMITTED),
            self.list_offsets([tp], "latest", READ_UNCOMMITTED),
            self.list_offsets([tp], "latest", READ_COMMITTED),
        )
        return PartitionInfo(topic, partition, earliest[tp], high[tp], stable[tp], -1, -1)

    async def list_offsets(
        self, tps: list[TopicPartition], which: str, isolation: str
    ) -> dict[TopicPartition, int]:
        """The earliest or latest offset of each partition, at an isolation level (latest
        under read_committed: the last stable offset)."""
        if not tps:
            return {}
        await self.ensure_reachable()
        futures = self._offsets_request(tps, which, isolation)
        return {
            tp: (await self._result(future, f"list offsets of {tp.topic}[{tp.partition}]")).offset
            for tp, future in futures.items()
        }

    def list_offsets_now(
        self, tps: list[TopicPartition], which: str, isolation: str
    ) -> dict[TopicPartition, int]:
        """As `list_offsets`, blocking: for a consumer's own thread."""
        out = {}
        for tp, future in self._offsets_request(tps, which, isolation).items():
            try:
                out[tp] = future.result().offset
            except KafkaException as exc:
                raise to_streams_error(exc, f"list offsets of {tp.topic}[{tp.partition}]") from None
        return out

    async def offsets_for_time(
        self, tps: Iterable[TopicPartition], timestamp_ms: int
    ) -> dict[TopicPartition, int]:
        tps = sorted(set(tps))
        if not tps:
            return {}
        await self.ensure_reachable()
        futures = self._offsets_request(tps, timestamp_ms, READ_UNCOMMITTED)
        found = {
            tp: (await self._result(future, f"offset by time of {tp.topic}[{tp.partition}]")).offset
            for tp, future in futures.items()
        }
        missing = [tp for tp, offset in found.items() if offset < 0]  # no record that late
        found.update(await self.list_offsets(missing, "latest", READ_UNCOMMITTED))
        return found

    def _offsets_request(
        self, tps: list[TopicPartition], which: str | int, isolation: str
    ) -> dict[TopicPartition, concurrent.futures.Future[Any]]:
        if not tps:
            return {}
        if isinstance(which, int):
            spec = OffsetSpec.for_timestamp(which)
        elif which == "earliest":
            spec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
        else:
            spec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        level = (
            IsolationLevel.READ_COMMITTED
            if isolation == READ_COMMITTED
            else IsolationLevel.READ_UNCOMMITTED
        )
        futures = self.admin.list_offsets(
            {KafkaTopicPartition(tp.topic, tp.partition): spec for tp in tps},
            isolation_level=level,
            **self._admin_kwargs(),
        )
        return {TopicPartition(k.topic, k.partition): f for k, f in futures.items()}

    # --- groups -------------------------------------------------------------------------

    async def list_groups(self) -> list[str]:
        await self.ensure_reachable()
        result = await self._result(
            self.admin.list_consumer_groups(**self._admin_kwargs()), "list groups"
        )
        return sorted(group.group_id for group in result.valid)

    async def describe_group(self, group_id: str) -> GroupDescription:
        await self.ensure_reachable()
        futures = self.admin.describe_consumer_groups([group_id], **self._admin_kwargs())
        description = await self._result(futures[group_id], f"describe group {group_id!r}")
        offsets_futures = self.admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group_id)], **self._admin_kwargs()
        )
        committed = await self._result(offsets_futures[group_id], f"offsets of {group_id!r}")
        members = [
            GroupMember(
                m.member_id,
                m.client_id,
                frozenset(
                    TopicPartition(p.topic, p.partition) for p in m.assignment.topic_partitions
                ),
                m.group_instance_id,
            )
            for m in description.members
        ]
        offsets = {
            TopicPartition(p.topic, p.partition): p.offset
            for p in committed.topic_partitions
            if p.offset >= 0
        }
        return GroupDescription(group_id, -1, members, offsets, str(description.state.name))

    async def alter_group_offsets(
        self, group_id: str, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """AlterConsumerGroupOffsets, after the checks kafka-consumer-groups makes: the group
        must be empty (Kafka itself answers a live group's commit with UNKNOWN_MEMBER_ID) and
        each offset within its partition's log."""
        tps = sorted(offsets)
        await self.ensure_reachable()
        members = await self._live_members(group_id)
        if members:
            raise GroupNotEmptyError(
                f"cannot reset the offsets of group {group_id!r}: it has {len(members)} live "
                f"member(s) ({', '.join(sorted(members))}); stop its workers first"
            )
        starts, ends = await asyncio.gather(
            self.list_offsets(tps, "earliest", READ_UNCOMMITTED),
            self.list_offsets(tps, "latest", READ_UNCOMMITTED),
        )
        for tp in tps:
            if type(offsets[tp]) is not int or not starts[tp] <= offsets[tp] <= ends[tp]:
                raise OffsetOutOfRangeError(
                    f"offset {offsets[tp]!r} out of range for {tp.topic}[{tp.partition}]: "
                    f"valid offsets are {starts[tp]}..{ends[tp]}"
                )
        request = ConsumerGroupTopicPartitions(
            group_id, [KafkaTopicPartition(tp.topic, tp.partition, offsets[tp]) for tp in tps]
        )
        futures = self.admin.alter_consumer_group_offsets([request], **self._admin_kwargs())
        try:
            for future in futures.values():
                result = await self._result(future, f"reset offsets of group {group_id!r}")
                for partition in result.topic_partitions:
                    if partition.error is not None:
                        raise to_streams_error(
                            partition.error,
                            f"reset offset of {partition.topic}[{partition.partition}]",
                        )
        except UnknownMemberIdError:  # Kafka's answer to a tool's commit for a live group
            raise GroupNotEmptyError(
                f"cannot reset the offsets of group {group_id!r}: it has live members; stop "
                "its workers first"
            ) from None

    async def _live_members(self, group_id: str) -> list[str]:
        futures = self.admin.describe_consumer_groups([group_id], **self._admin_kwargs())
        description = await self._result(futures[group_id], f"describe group {group_id!r}")
        return [m.member_id for m in description.members]

    async def delete_group(self, group_id: str) -> None:
        await self.ensure_reachable()
        futures = self.admin.delete_consumer_groups([group_id], **self._admin_kwargs())
        await self._result(futures[group_id], f"delete group {group_id!r}")

    # --- clients ------------------------------------------------------------------------

    def producer(
        self,
        transactional_id: str | None = None,
        *,
        transaction_timeout_ms: int = 60_000,
        linger_ms: float = 5.0,
        batch_size: int = 10_000,
    ) -> KafkaProducer:
        return KafkaProducer(self, transactional_id, transaction_timeout_ms, linger_ms, batch_size)

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
    ) -> KafkaConsumer:
        """A consumer; Kafka has no standby assignments, so `standby_replicas` is ignored
        (tables are restored from their changelogs on takeover)."""
        return KafkaConsumer(
            self,
            group_id,
            isolation=isolation,
            auto_offset_reset=auto_offset_reset,
            client_id=client_id,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            rebalance_timeout_ms=rebalance_timeout_ms,
            assignor=assignor,
            instance_id=instance_id,
        )

    async def close(self) -> None:
        self._closed = True


def _check_topic_args(
    name: Any, partitions: Any, compacted: Any, retention_ms: Any, retention_bytes: Any
) -> None:
    """Wrong types fail here with our error, before a request is sent."""
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"topic name must be a non-empty string, not {name!r}")
    if type(partitions) is not int or partitions < 1:
        raise InvalidPartitionsError(f"partitions must be a positive integer, not {partitions!r}")
    if not isinstance(compacted, bool):
        raise InvalidRequestError(f"compacted must be True or False, not {compacted!r}")
    for label, value in (("retention_ms", retention_ms), ("retention_bytes", retention_bytes)):
        if value is not None and (type(value) is not int or value <= 0):
            raise InvalidRequestError(f"{label} must be a positive integer or None")


def _description(name: str, partitions: int, config: Mapping[str, str | None]) -> TopicDescription:
    def limit(key: str) -> int | None:
        text = config.get(key)
        return None if text is None or int(text) < 0 else int(text)

    policy = config.get("cleanup.policy") or "delete"
    return TopicDescription(
        name, partitions, "compact" in policy, limit("retention.ms"), limit("retention.bytes")
    )
