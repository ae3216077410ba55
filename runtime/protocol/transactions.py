"""Transaction requests: InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and
TxnOffsetCommit, over the broker's producers and transactions.

A stale epoch is PRODUCER_FENCED here (the coordinator's answer), INVALID_PRODUCER_EPOCH at a
partition (Produce). The broker's epoch is kept across transactions for these clients
(`bump_epoch=False`): Kafka clients without transactions v2 keep theirs.

    txns = TransactionHandlers(broker)
    body = txns.end_txn(header, request)
"""

from __future__ import annotations

from typing import Any

from runtime.broker import Broker
from runtime.errors import StreamsError
from runtime.protocol import errors as codes
from runtime.protocol.errors import error_code, same_code_for_all
from runtime.protocol.messages import RequestHeader, millis
from runtime.types import GroupMetadata, TopicPartition


class TransactionHandlers:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def init_producer_id(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        timeout = millis(request.transaction_timeout)
        try:
            txn_id = request.transactional_id
            pid, epoch = self.broker.init_producer_id(
                txn_id, timeout if txn_id is not None else 60_000
            )
        except StreamsError as exc:
            return {
                "throttle_time": 0,
                "error_code": error_code(exc, fenced=codes.PRODUCER_FENCED),
                "producer_id": -1,
                "producer_epoch": -1,
            }
        return {
            "throttle_time": 0,
            "error_code": codes.NONE,
            "producer_id": pid,
            "producer_epoch": epoch,
        }

    def add_partitions_to_txn(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        topics = request.v3_and_below_topics
        code = codes.NONE
        try:
            self.broker.begin_transaction(
                request.v3_and_below_producer_id, request.v3_and_below_producer_epoch
            )
        except StreamsError as exc:
            code = error_code(exc, fenced=codes.PRODUCER_FENCED)
        results = []
        for topic in topics:
            partitions = []
            for partition in topic.partitions:
                partition_code = code
                if code == codes.NONE:
                    try:
                        self.broker.describe_topic(topic.name)
                    except StreamsError as exc:
                        partition_code = error_code(exc)
                partitions.append(
                    {"partition_index": partition, "partition_error_code": partition_code}
                )
            results.append({"name": topic.name, "results_by_partition": partitions})
        return {"throttle_time": 0, "results_by_topic_v3_and_below": results}

    def add_offsets_to_txn(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        try:
            self.broker.begin_transaction(request.producer_id, request.producer_epoch)
        except StreamsError as exc:
            return {"throttle_time": 0, "error_code": error_code(exc, fenced=codes.PRODUCER_FENCED)}
        return {"throttle_time": 0, "error_code": codes.NONE}

    def end_txn(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        try:
            self.broker.end_transaction(
                request.producer_id, request.producer_epoch, request.committed, bump_epoch=False
            )
        except StreamsError as exc:
            return {"throttle_time": 0, "error_code": error_code(exc, fenced=codes.PRODUCER_FENCED)}
        return {"throttle_time": 0, "error_code": codes.NONE}

    def txn_offset_commit(self, header: RequestHeader, request: Any) -> dict[str, Any]:
        offsets = {
            TopicPartition(topic.name, p.partition_index): p.committed_offset
            for topic in request.topics
            for p in topic.partitions
        }
        group = GroupMetadata(
            request.group_id,
            getattr(request, "generation_id", -1),
            getattr(request, "member_id", ""),
        )
        code = codes.NONE
        try:
            self.broker.send_offsets_to_transaction(
                request.producer_id,
                request.producer_epoch,
                offsets,
                group,
                # versions 0-2 carry no member: Kafka's legacy path, fenced by the epoch alone
                fence_member=header.api_version >= 3,
            )
        except StreamsError as exc:
            code = error_code(exc, fenced=codes.PRODUCER_FENCED)
        return same_code_for_all(request.topics, code)
