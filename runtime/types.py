"""Value types shared by every layer: the broker, both transports and the worker.

tp = TopicPartition("words", 3)
record.key, record.value, record.offset  # bytes | None, bytes | None, int
"""

from __future__ import annotations

from typing import Any, NamedTuple

Headers = list[tuple[str, bytes]]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # create time, milliseconds since the epoch
    headers: Headers | None = None


class RecordMetadata(NamedTuple):
    """Where a produced record was written."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class GroupMetadata(NamedTuple):
    """What a transaction needs to commit consumed offsets for a group member (KIP-447).

    `native` is the back end's own handle for it where the client needs one (confluent-kafka's
    ConsumerGroupMetadata, which carries the generation librdkafka does not expose); the
    embedded broker needs none. Kafka reports `generation` as -1 for the same reason."""

    group_id: str
    generation: int
    member_id: str
    native: Any = None


class TopicDescription(NamedTuple):
    name: str
    partitions: int
    compacted: bool
    retention_ms: int | None
    retention_bytes: int | None


class PartitionInfo(NamedTuple):
    """Offsets of one partition. `last_stable` is the LSO: the first offset of the oldest
    open transaction, or `high_watermark` when none is open."""

    topic: str
    partition: int
    log_start: int
    high_watermark: int
    last_stable: int
    batches: int
    bytes: int


class Event(NamedTuple):
    """A decoded record, as an agent sees it (`stream.events()`)."""

    key: Any
    value: Any
    headers: Headers | None
    timestamp: int
    topic: str
    partition: int
    offset: int
