"""Request handlers: a kio request entity in, broker calls, a plain-dict response out.

Every handler runs on the broker's thread (one SQLite connection), so a request's broker calls
are never interleaved with another request's. Errors of one partition or topic are answered in
that entry's error code; the others go on.

    handlers = Handlers(broker, Node(0, "127.0.0.1", 9092))
    response = handlers.handle(header, request)
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from runtime.broker import EARLIEST, LATEST, READ_COMMITTED, READ_UNCOMMITTED, Broker
from runtime.broker.core import ProduceBatch
from runtime.broker.log import StoredBatch
from runtime.broker.schema import ABORTED, COMMIT_MARKER, TXN
from runtime.errors import StreamsError, UnknownTopicError
from runtime.protocol import errors as codes
from runtime.protocol.errors import error_code
from runtime.protocol.groups import GroupHandlers
from runtime.protocol.messages import SUPPORTED, RequestHeader, millis
from runtime.protocol.records import (
    CONTROL,
    TRANSACTIONAL,
    WireBatch,
    decode_batches,
    encode_batch,
)
from runtime.protocol.transactions import TransactionHandlers
from runtime.types import TopicPartition

log = logging.getLogger(__name__)
CLUSTER_ID = "streams-embedded"
MARKER_VALUE = struct.pack(">hi", 0, 0)  # control record value: version 0, coordinator epoch 0
EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1


class Node(NamedTuple):
    node_id: int
    host: str
    port: int


class Handlers:
    def __init__(self, broker: Broker, node: Node, *, auto_create_topics: bool = False) -> None:
        self.broker = broker
        self.node = node
        self.auto_create_topics = auto_create_topics
        self.groups = GroupHandlers(broker)
        self.txns = TransactionHandlers(broker)
        self.table: dict[int, Callable[[RequestHeader, Any], dict[str, Any]]] = {
            0: self.produce,
            2: self.list_offsets,
            21: self.delete_records,
            3: self.metadata,
            8: lambda h, r: self.groups.offset_commit(r),
            9: lambda h, r: self.groups.offset_fetch(r),
            10: self.find_coordinator,
            12: lambda h, r: self.groups.heartbeat(r),
            13: lambda h, r: self.groups.leave(r),
            15: lambda h, r: self.groups.describe_groups(r),
            16: lambda h, r: self.groups.list_groups(r),
            42: lambda h, r: self.groups.delete_groups(r),
            18: self.api_versions,
            19: self.create_topics,
            20: self.delete_topics,
            22: self.txns.init_producer_id,
            24: self.txns.add_partitions_to_txn,
            25: self.txns.add_offsets_to_txn,
            26: self.txns.end_txn,
            28: self.txns.txn_offset_commit,
            32: self.describe_configs,
            60: self.describe_cluster,
        }

    def handle(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        return self.table[header.api_key](header, request)

    # --- cluster ------------------------------------------------------------------------

    def api_versions(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        return {
            "error_code": codes.NONE,
            "api_keys": [
                {"api_key": key, "min_version": lo, "max_version": hi}
                for key, (lo, hi) in sorted(SUPPORTED.items())
            ],
            "throttle_time": 0,
        }

    def _broker_entry(self) -> dict[str, Any]:
        return {"node_id": self.node.node_id, "host": self.node.host, "port": self.node.port}

    def metadata(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        wanted = request.topics
        if wanted is None:
            names = [t.name for t in self.broker.list_topics()]
        else:
            names = [t.name for t in wanted if t.name is not None]
        topics = []
        allow_create = getattr(request, "allow_auto_topic_creation", True)
        for name in names:
            try:
                description = self.broker.describe_topic(name)
            except UnknownTopicError:
                if not (self.auto_create_topics and allow_create):
                    topics.append({"error_code": codes.UNKNOWN_TOPIC_OR_PARTITION, "name": name})
                    continue
                try:
                    description = self.broker.create_topic(name, 1)
                except StreamsError as exc:
                    topics.append({"error_code": error_code(exc), "name": name})
                    continue
            except StreamsError as exc:
                topics.append({"error_code": error_code(exc), "name": name})
                continue
            topics.append(
                {
                    "error_code": codes.NONE,
                    "name": name,
                    "is_internal": False,
                    "partitions": [
                        {
                            "error_code": codes.NONE,
                            "partition_index": p,
                            "leader_id": self.node.node_id,
                            "leader_epoch": 0,
                            "replica_nodes": [self.node.node_id],
                            "isr_nodes": [self.node.node_id],
                            "offline_replicas": [],
                        }
                        for p in range(description.partitions)
                    ],
                    "topic_authorized_operations": -2147483648,
                }
            )
        return {
            "throttle_time": 0,
            "brokers": [self._broker_entry()],
            "cluster_id": CLUSTER_ID,
            "controller_id": self.node.node_id,
            "topics": topics,
            "cluster_authorized_operations": -2147483648,
        }

    def describe_cluster(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        return {
            "throttle_time": 0,
            "error_code": codes.NONE,
            "endpoint_type": 1,
            "cluster_id": CLUSTER_ID,
            "controller_id": self.node.node_id,
            "brokers": [self._broker_entry()],
            "cluster_authorized_operations": -2147483648,
        }

    def find_coordinator(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        found = {"error_code": codes.NONE, **self._broker_entry()}
        if header.api_version >= 4:
            return {
                "throttle_time": 0,
                "coordinators": [{"key": key, **found} for key in request.coordinator_keys],
            }
        return {"throttle_time": 0, **found}

    # --- topics -------------------------------------------------------------------------

    def create_topics(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        results = []
        for topic in request.topics:
            result: dict[str, Any] = {"name": topic.name, "error_code": codes.NONE}
            try:
                settings = _topic_settings(topic.configs)
            except ValueError as exc:
                results.append(
                    {**result, "error_code": codes.INVALID_CONFIG, "error_message": str(exc)}
                )
                continue
            partitions = 1 if topic.num_partitions == -1 else topic.num_partitions
            if topic.replication_factor not in (-1, 1):
                results.append(
                    {
                        **result,
                        "error_code": codes.INVALID_REPLICATION_FACTOR,
                        "error_message": "a single-node broker: the replication factor is 1",
                    }
                )
                continue
            if topic.assignments:
                partitions = len(topic.assignments)
            try:
                if request.validate_only:
                    if any(t.name == topic.name for t in self.broker.list_topics()):
                        raise codes_topic_exists(topic.name)
                else:
                    self.broker.create_topic(topic.name, partitions, **settings)
            except StreamsError as exc:
                results.append({**result, "error_code": error_code(exc), "error_message": str(exc)})
                continue
            results.append({**result, "num_partitions": partitions, "replication_factor": 1})
        return {"throttle_time": 0, "topics": results}

    def delete_topics(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        names = (
            list(request.topic_names)
            if header.api_version < 6
            else [t.name for t in request.topics]
        )
        responses = []
        for name in names:
            try:
                self.broker.delete_topic(name)
                responses.append({"name": name, "error_code": codes.NONE})
            except StreamsError as exc:
                responses.append(
                    {"name": name, "error_code": error_code(exc), "error_message": str(exc)}
                )
        return {"throttle_time": 0, "responses": responses}

    def describe_configs(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        results = []
        for resource in request.resources:
            entry: dict[str, Any] = {
                "error_code": codes.NONE,
                "resource_type": resource.resource_type,
                "resource_name": resource.resource_name,
                "configs": [],
            }
            if resource.resource_type != 2:  # brokers: nothing configurable
                results.append(entry)
                continue
            try:
                description = self.broker.describe_topic(resource.resource_name)
            except StreamsError as exc:
                results.append({**entry, "error_code": error_code(exc), "error_message": str(exc)})
                continue
            values = {
                "cleanup.policy": "compact" if description.compacted else "delete",
                "retention.ms": str(
                    -1 if description.retention_ms is None else description.retention_ms
                ),
                "retention.bytes": str(
                    -1 if description.retention_bytes is None else description.retention_bytes
                ),
            }
            keys = resource.configuration_keys
            entry["configs"] = [
                {
                    "name": name,
                    "value": value,
                    "read_only": False,
                    "is_default": False,
                    "config_source": 1,
                    "is_sensitive": False,
                    "synonyms": [],
                }
                for name, value in values.items()
                if keys is None or name in keys
            ]
            results.append(entry)
        return {"throttle_time": 0, "results": results}

    # --- producing ----------------------------------------------------------------------

    def produce(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        """Every partition's batches in one broker call (one SQLite transaction) when they
        all succeed; when that call fails, partition by partition, so that each partition
        gets its own answer (the failed call changed nothing)."""
        answers: list[tuple[str, dict[str, Any]]] = []
        decoded: list[tuple[dict[str, Any], list[WireBatch], list[ProduceBatch]]] = []
        for topic in request.topic_data:
            for part in topic.partition_data:
                answer: dict[str, Any] = {
                    "index": part.index,
                    "error_code": codes.NONE,
                    "base_offset": -1,
                    "log_append_time": -1,
                    "log_start_offset": -1,
                    "record_errors": [],
                }
                answers.append((topic.name, answer))
                try:
                    if part.records is None:
                        raise codes_corrupt("a produce request without records")
                    wire = decode_batches(part.records)
                    if any(batch.control for batch in wire):
                        raise codes_corrupt("clients may not produce control batches")
                except StreamsError as exc:
                    _failed(answer, exc)
                    continue
                batches = [
                    ProduceBatch(
                        topic.name,
                        part.index,
                        batch.base_sequence,
                        batch.keys,
                        batch.values,
                        batch.timestamps,
                        batch.headers,
                    )
                    for batch in wire
                ]
                decoded.append((answer, wire, batches))
        producers = {
            (b.producer_id, b.producer_epoch, b.transactional) for _, w, _ in decoded for b in w
        }
        together = False
        if len(producers) == 1 and decoded:
            pid, epoch, transactional = producers.pop()
            try:
                offsets = self.broker.produce(
                    pid,
                    epoch,
                    [batch for _, _, batches in decoded for batch in batches],
                    transactional=transactional,
                )
                together = True
            except StreamsError:
                pass  # answered partition by partition below
            if together:
                position = 0
                for answer, _, batches in decoded:
                    answer["base_offset"] = offsets[position]
                    position += len(batches)
        if not together:
            for answer, wire, batches in decoded:
                try:
                    base = -1
                    for batch, stored in zip(wire, batches, strict=True):
                        offset = self.broker.produce(
                            batch.producer_id,
                            batch.producer_epoch,
                            [stored],
                            transactional=batch.transactional,
                        )[0]
                        base = offset if base < 0 else base
                    answer["base_offset"] = base
                except StreamsError as exc:
                    _failed(answer, exc)
        topics: dict[str, list[dict[str, Any]]] = {}
        for name, answer in answers:
            topics.setdefault(name, []).append(answer)
        return {
            "responses": [{"name": n, "partition_responses": p} for n, p in topics.items()],
            "throttle_time": 0,
        }

    # --- fetching -----------------------------------------------------------------------

    def fetch_partition(
        self, topic: str, partition: int, offset: int, max_bytes: int, isolation: str
    ) -> tuple[dict[str, Any], int]:
        """One partition of a Fetch response, and its record bytes."""
        answer: dict[str, Any] = {
            "partition_index": partition,
            "error_code": codes.NONE,
            "high_watermark": -1,
            "last_stable_offset": -1,
            "log_start_offset": -1,
            "aborted_transactions": [],
            "preferred_read_replica": -1,
            "records": b"",
        }
        try:
            batches, hw, lso, log_start = self.broker.fetch_batches(
                TopicPartition(topic, partition),
                offset,
                max_bytes=max_bytes,
                isolation=isolation,
            )
        except StreamsError as exc:
            answer["error_code"] = error_code(exc)
            return answer, 0
        data = b"".join([_wire_batch(b) for b in batches])
        answer.update(
            high_watermark=hw, last_stable_offset=lso, log_start_offset=log_start, records=data
        )
        return answer, len(data)

    def list_offsets(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        isolation = (
            READ_COMMITTED if getattr(request, "isolation_level", 0) == 1 else READ_UNCOMMITTED
        )
        topics = []
        for topic in request.topics:
            partitions = []
            for part in topic.partitions:
                answer: dict[str, Any] = {
                    "partition_index": part.partition_index,
                    "error_code": codes.NONE,
                    "timestamp": -1,
                    "offset": -1,
                    "leader_epoch": 0,
                }
                stamp = millis(part.timestamp)
                spec: str | int = (
                    EARLIEST
                    if stamp == EARLIEST_TIMESTAMP
                    else LATEST
                    if stamp == LATEST_TIMESTAMP
                    else stamp
                )
                try:
                    answer["offset"] = self.broker.list_offset(
                        TopicPartition(topic.name, part.partition_index), spec, isolation
                    )
                except StreamsError as exc:
                    answer["error_code"] = error_code(exc)
                partitions.append(answer)
            topics.append({"name": topic.name, "partitions": partitions})
        return {"throttle_time": 0, "topics": topics}

    def delete_records(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        topics = []
        for topic in request.topics:
            partitions = []
            for part in topic.partitions:
                answer: dict[str, Any] = {
                    "partition_index": part.partition_index,
                    "low_watermark": -1,
                    "error_code": codes.NONE,
                }
                before: int | str = LATEST if part.offset == -1 else part.offset
                try:
                    answer["low_watermark"] = self.broker.delete_records(
                        TopicPartition(topic.name, part.partition_index), before
                    )
                except StreamsError as exc:
                    answer["error_code"] = error_code(exc)
                partitions.append(answer)
            topics.append({"name": topic.name, "partitions": partitions})
        return {"throttle_time": 0, "topics": topics}


def _failed(answer: dict[str, Any], exc: StreamsError) -> None:
    answer["error_code"] = error_code(exc)
    answer["error_message"] = str(exc)
    log.debug("produce to partition %d failed: %s", answer["index"], exc)


def codes_corrupt(message: str) -> StreamsError:
    from runtime.protocol.records import CorruptRecordError

    return CorruptRecordError(message)


def codes_topic_exists(name: str) -> StreamsError:
    from runtime.errors import TopicExistsError

    return TopicExistsError(f"topic {name!r} already exists")


def _topic_settings(configs: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for config in configs or ():
        name, value = config.name, config.value
        if value is None:
            continue
        if name == "cleanup.policy":
            settings["compacted"] = "compact" in value.split(",")
        elif name in ("retention.ms", "retention.bytes", "delete.retention.ms"):
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, not {value!r}") from None
            key = name.replace(".", "_")
            if name == "delete.retention.ms" or number >= 0:
                settings[key] = number
    return settings


def _wire_batch(batch: StoredBatch) -> bytes:
    if batch.batch is None:  # a COMMIT or ABORT marker: one control record
        key = struct.pack(">hh", 0, 1 if batch.kind == COMMIT_MARKER else 0)
        return encode_batch(
            batch.base_offset,
            [key],
            [MARKER_VALUE],
            [0],
            None,
            None,
            producer_id=batch.pid,
            producer_epoch=batch.epoch,
            attributes=TRANSACTIONAL | CONTROL,
        )
    keys, values, timestamps, headers, deltas = batch.batch
    return encode_batch(
        batch.base_offset,
        keys,
        values,
        timestamps,
        headers,
        deltas,
        producer_id=batch.pid,
        producer_epoch=batch.epoch,
        base_sequence=batch.base_seq,
        attributes=TRANSACTIONAL if batch.kind in (TXN, ABORTED) else 0,
        last_offset_delta=batch.last_offset - batch.base_offset,
    )
