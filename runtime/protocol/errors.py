"""Kafka error codes for the broker's typed errors.

code = error_code(exc)        # e.g. UnknownTopicError -> 3 (UNKNOWN_TOPIC_OR_PARTITION)
"""

from __future__ import annotations

from typing import Any

from runtime.errors import (
    DatabaseLockedError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InvalidPartitionsError,
    InvalidProducerEpochError,
    InvalidRequestError,
    InvalidTopicError,
    InvalidTransactionTimeoutError,
    InvalidTxnStateError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    RebalanceInProgressError,
    RecordTooLargeError,
    ResourceError,
    TopicExistsError,
    UnknownMemberIdError,
    UnknownProducerIdError,
    UnknownTopicError,
    UnstableOffsetCommitError,
)
from runtime.protocol.records import CorruptRecordError, UnsupportedCompressionError

NONE = 0
UNKNOWN_SERVER_ERROR = -1
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
COORDINATOR_NOT_AVAILABLE = 15
INVALID_TOPIC_EXCEPTION = 17
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_REPLICATION_FACTOR = 38
INVALID_CONFIG = 40
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_TRANSACTION_TIMEOUT = 50
CONCURRENT_TRANSACTIONS = 51
KAFKA_STORAGE_ERROR = 56
UNKNOWN_PRODUCER_ID = 59
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
UNSUPPORTED_COMPRESSION_TYPE = 76
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82
UNSTABLE_OFFSET_COMMIT = 88
PRODUCER_FENCED = 90
INVALID_RECORD = 87

_CODES: list[tuple[type[Exception], int]] = [
    (CorruptRecordError, CORRUPT_MESSAGE),
    (UnsupportedCompressionError, UNSUPPORTED_COMPRESSION_TYPE),
    (UnknownTopicError, UNKNOWN_TOPIC_OR_PARTITION),
    (OffsetOutOfRangeError, OFFSET_OUT_OF_RANGE),
    (RecordTooLargeError, MESSAGE_TOO_LARGE),
    (OutOfOrderSequenceError, OUT_OF_ORDER_SEQUENCE_NUMBER),
    (InvalidProducerEpochError, INVALID_PRODUCER_EPOCH),
    (ProducerFencedError, PRODUCER_FENCED),
    (UnknownProducerIdError, UNKNOWN_PRODUCER_ID),
    (InvalidTxnStateError, INVALID_TXN_STATE),
    (InvalidTransactionTimeoutError, INVALID_TRANSACTION_TIMEOUT),
    (TopicExistsError, TOPIC_ALREADY_EXISTS),
    (InvalidTopicError, INVALID_TOPIC_EXCEPTION),
    (InvalidPartitionsError, INVALID_PARTITIONS),
    (UnknownMemberIdError, UNKNOWN_MEMBER_ID),
    (IllegalGenerationError, ILLEGAL_GENERATION),
    (RebalanceInProgressError, REBALANCE_IN_PROGRESS),
    (UnstableOffsetCommitError, UNSTABLE_OFFSET_COMMIT),
    (GroupNotEmptyError, NON_EMPTY_GROUP),
    (GroupIdNotFoundError, GROUP_ID_NOT_FOUND),
    (DatabaseLockedError, KAFKA_STORAGE_ERROR),
    (ResourceError, KAFKA_STORAGE_ERROR),
    (InvalidRequestError, INVALID_REQUEST),
]


def error_code(exc: BaseException, *, fenced: int = INVALID_PRODUCER_EPOCH) -> int:
    """The Kafka error code for a broker error. `fenced` is what a stale producer epoch
    becomes: INVALID_PRODUCER_EPOCH at a partition, PRODUCER_FENCED at the coordinator."""
    if isinstance(exc, InvalidProducerEpochError):
        return fenced
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return UNKNOWN_SERVER_ERROR


def same_code_for_all(topics: Any, code: int) -> dict[str, Any]:
    """The body of an offset commit's answer (OffsetCommit, TxnOffsetCommit) whose one broker
    call succeeded or failed as a whole: every partition of the request gets `code`."""
    return {
        "throttle_time": 0,
        "topics": [
            {
                "name": topic.name,
                "partitions": [
                    {"partition_index": p.partition_index, "error_code": code}
                    for p in topic.partitions
                ],
            }
            for topic in topics
        ],
    }
