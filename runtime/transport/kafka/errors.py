"""Kafka's errors as ours: the one place where a librdkafka error becomes a `StreamsError`.

    try:
        producer.commit_transaction()
    except KafkaException as exc:
        raise to_streams_error(exc, "commit_transaction") from exc

Kafka's error code picks the class (both back ends raise the same types for the same
condition); the message keeps librdkafka's own words and says what to do where we can.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from runtime.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InvalidPartitionsError,
    InvalidProducerEpochError,
    InvalidTopicError,
    InvalidTransactionTimeoutError,
    InvalidTxnStateError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    PartitionOutOfRangeError,
    ProducerError,
    ProducerFencedError,
    RebalanceInProgressError,
    RecordTooLargeError,
    StreamsError,
    TopicExistsError,
    TransactionAbortedError,
    UnknownMemberIdError,
    UnknownProducerIdError,
    UnknownTopicError,
    UnstableOffsetCommitError,
)

# Kafka (and librdkafka's local, negative) error codes -> our classes.
_BY_CODE: dict[int, type[StreamsError]] = {
    KafkaError._FENCED: ProducerFencedError,
    KafkaError.PRODUCER_FENCED: ProducerFencedError,
    KafkaError.INVALID_PRODUCER_EPOCH: InvalidProducerEpochError,
    KafkaError.INVALID_PRODUCER_ID_MAPPING: ProducerFencedError,
    KafkaError.ILLEGAL_GENERATION: IllegalGenerationError,
    KafkaError.UNKNOWN_MEMBER_ID: UnknownMemberIdError,
    KafkaError.FENCED_INSTANCE_ID: UnknownMemberIdError,
    KafkaError.REBALANCE_IN_PROGRESS: RebalanceInProgressError,
    KafkaError.NON_EMPTY_GROUP: GroupNotEmptyError,
    KafkaError.GROUP_ID_NOT_FOUND: GroupIdNotFoundError,
    KafkaError.UNSTABLE_OFFSET_COMMIT: UnstableOffsetCommitError,
    KafkaError.UNKNOWN_TOPIC_OR_PART: UnknownTopicError,
    KafkaError._UNKNOWN_TOPIC: UnknownTopicError,
    KafkaError._UNKNOWN_PARTITION: PartitionOutOfRangeError,
    KafkaError.TOPIC_ALREADY_EXISTS: TopicExistsError,
    KafkaError.INVALID_PARTITIONS: InvalidPartitionsError,
    KafkaError.TOPIC_EXCEPTION: InvalidTopicError,
    KafkaError.INVALID_REPLICATION_FACTOR: ConfigurationError,
    KafkaError.POLICY_VIOLATION: ConfigurationError,
    KafkaError.INVALID_CONFIG: ConfigurationError,
    KafkaError._INVALID_ARG: ConfigurationError,
    KafkaError.MSG_SIZE_TOO_LARGE: RecordTooLargeError,
    KafkaError.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER: OutOfOrderSequenceError,
    KafkaError.UNKNOWN_PRODUCER_ID: UnknownProducerIdError,
    KafkaError.INVALID_TXN_STATE: InvalidTxnStateError,
    KafkaError._STATE: InvalidTxnStateError,
    KafkaError.INVALID_TRANSACTION_TIMEOUT: InvalidTransactionTimeoutError,
    KafkaError._PURGE_QUEUE: TransactionAbortedError,
    KafkaError._PURGE_INFLIGHT: TransactionAbortedError,
    KafkaError._TRANSPORT: BrokerUnavailableError,
    KafkaError._ALL_BROKERS_DOWN: BrokerUnavailableError,
    KafkaError._RESOLVE: BrokerUnavailableError,
    KafkaError._TIMED_OUT: BrokerUnavailableError,
    KafkaError._MSG_TIMED_OUT: BrokerUnavailableError,
    KafkaError.NETWORK_EXCEPTION: BrokerUnavailableError,
    KafkaError._AUTHENTICATION: ConfigurationError,
    KafkaError.SASL_AUTHENTICATION_FAILED: ConfigurationError,
    KafkaError._SSL: ConfigurationError,
}

_ADVICE: dict[type[StreamsError], str] = {
    ProducerFencedError: "another producer with this transactional id took over",
    BrokerUnavailableError: "check the kafka:// URL and that the brokers are up",
    TopicExistsError: "it already exists",
    UnknownTopicError: "create it first",
}


def to_streams_error(error: BaseException | KafkaError, doing: str = "") -> StreamsError:
    """The `StreamsError` for a librdkafka error (a KafkaException, a KafkaError, or a
    BufferError from a full produce queue); `doing` names the call, for the message.

    By code first; an error librdkafka says needs an abort (`txn_requires_abort`) and that has
    no class of its own is a TransactionAbortedError, so the worker aborts and rewinds."""
    if isinstance(error, StreamsError):
        return error
    if isinstance(error, BufferError):
        return ProducerError(
            f"{doing or 'produce'}: the producer's queue is full ({error}); flush more often "
            "or raise queue.buffering.max.messages in the client settings"
        )
    kafka_error = _kafka_error(error)
    if kafka_error is None:
        return StreamsError(f"{doing}: {error}" if doing else str(error))
    cls = _BY_CODE.get(kafka_error.code())
    if cls is None:
        cls = TransactionAbortedError if kafka_error.txn_requires_abort() else StreamsError
    message = f"{kafka_error.str()} ({kafka_error.name()})"
    advice = _ADVICE.get(cls)
    if advice:
        message = f"{message}: {advice}"
    result = cls(f"{doing}: {message}" if doing else message)
    if kafka_error.retriable() and not cls.retriable:
        result.retriable = True
    if cls.kafka_code is None and kafka_error.code() > 0:
        result.kafka_code = kafka_error.code()
    return result


def _kafka_error(error: BaseException | KafkaError) -> KafkaError | None:
    if isinstance(error, KafkaError):
        return error
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def kafka_code(error: BaseException | KafkaError) -> int | None:
    """The librdkafka code of an error, if it is one."""
    kafka_error = _kafka_error(error)
    return None if kafka_error is None else kafka_error.code()


def is_retriable(error: BaseException | KafkaError) -> bool:
    """Whether librdkafka says the same call may succeed if made again."""
    kafka_error = _kafka_error(error)
    return kafka_error is not None and kafka_error.retriable()
