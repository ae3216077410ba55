"""The one exception hierarchy of `runtime` (and so of `streams`).

Every error a broker, transport or worker raises is a `StreamsError`. Kafka's error code, where
one exists, is on the class, so both back ends map to the same types:

    try:
        await producer.commit_transaction()
    except ProducerFencedError:
        ...  # another instance with our transactional id took over: stop

`retriable` says whether the same call may succeed if made again later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Exit codes of a worker process (sysexits.h), read by the supervisor:
EXIT_DATAERR = 65  # a record could not be processed (on_error="fail"): restart, give up if stuck
EXIT_TEMPFAIL = 75  # a resource is short (ResourceError): restart with backoff
EXIT_CONFIG = 78  # configuration, topology, a foreign or corrupt file: do not restart


class StreamsError(Exception):
    """Base of every error raised by streams."""

    retriable: bool = False
    kafka_code: int | None = None


# --- configuration and storage --------------------------------------------------------------


class ConfigurationError(StreamsError):
    """A setting, URL or argument is invalid."""


class TopologyError(ConfigurationError):
    """The topics on the broker do not fit the app (a partition count, a lost changelog)."""


class BrokerUnavailableError(StreamsError):
    """The broker cannot be reached or opened."""


class DatabaseError(StreamsError):
    """The broker's database file cannot be used."""


class NotADatabaseError(DatabaseError):
    """The broker path names a file that is not an SQLite database."""


class ForeignDatabaseError(DatabaseError):
    """The broker path names an SQLite database written by another program."""


class SchemaVersionError(DatabaseError):
    """The database was written by a different version of the streams broker."""


class ResourceError(StreamsError):
    """A resource is short for now (the disk is full, an I/O error, a file stays locked):
    the same work may succeed later, so a worker exits with EXIT_TEMPFAIL and is restarted."""

    retriable = True


class DiskFullError(ResourceError):
    """The disk (or the file system) holding a database is full."""


class StoreCorruptError(ResourceError):
    """A worker's local store (a cache) turned out corrupt while in use: it was discarded,
    and the restarted worker rebuilds it from the changelogs."""


class DatabaseLockedError(DatabaseError, ResourceError):
    """The database stayed locked by another connection for longer than the busy timeout."""

    retriable = True


# --- bad requests ---------------------------------------------------------------------------


class InvalidRequestError(StreamsError, ValueError):
    """A request with wrong types or values; nothing was changed."""


class UnknownTopicError(StreamsError, LookupError):
    kafka_code = 3


class TopicExistsError(StreamsError):
    kafka_code = 36


class InvalidTopicError(InvalidRequestError):
    kafka_code = 17


class InvalidPartitionsError(InvalidRequestError):
    kafka_code = 37


class PartitionOutOfRangeError(UnknownTopicError):
    """The partition number is not in [0, partitions)."""

    kafka_code = 3


class OffsetOutOfRangeError(StreamsError):
    kafka_code = 1


class RecordTooLargeError(InvalidRequestError):
    kafka_code = 10


# --- producers and transactions -------------------------------------------------------------


class ProducerError(StreamsError):
    """Base of errors about idempotent and transactional producers."""


class OutOfOrderSequenceError(ProducerError):
    """A batch's sequence number does not follow the last one written for that partition."""

    kafka_code = 45


class ProducerFencedError(ProducerError):
    """A newer producer with the same transactional id exists, or our epoch was bumped by a
    transaction timeout. This producer can no longer write; create a new one."""

    kafka_code = 90


class InvalidProducerEpochError(ProducerFencedError):
    kafka_code = 47


class UnknownProducerIdError(ProducerError):
    kafka_code = 59


class InvalidTxnStateError(ProducerError):
    """The call does not fit the transaction's state (e.g. commit with no transaction)."""

    kafka_code = 48


class InvalidTransactionTimeoutError(InvalidRequestError):
    kafka_code = 50


class TransactionAbortedError(ProducerError):
    """The transaction was aborted (by its timeout or by a newer producer) before it could
    commit; nothing it wrote is visible to read_committed readers."""


# --- consumer groups ------------------------------------------------------------------------


class GroupError(StreamsError):
    """Base of consumer group errors."""


class UnknownMemberIdError(GroupError):
    """The member is not (or no longer) in the group, e.g. after its session timed out."""

    kafka_code = 25


class IllegalGenerationError(GroupError):
    """The request carries a stale generation or a partition the member no longer owns."""

    kafka_code = 22


class RebalanceInProgressError(GroupError):
    retriable = True
    kafka_code = 27


class UnstableOffsetCommitError(GroupError):
    """A transaction holds pending offsets for the partition; ask again when it ends."""

    retriable = True
    kafka_code = 88


class GroupNotEmptyError(GroupError):
    """The group has live members: its offsets can be moved, or it deleted, only when every
    member has stopped (Kafka's rule)."""

    kafka_code = 68


class GroupIdNotFoundError(GroupError, LookupError):
    """No group of that name (no members, no committed offsets)."""

    kafka_code = 69


# --- apps, agents and tables ----------------------------------------------------------------


class AppError(StreamsError):
    """Base of errors raised by the worker and the stream API."""


class TableKeyNotOwnedError(AppError):
    """A table key whose partition this worker does not own (the stream is not partitioned
    like the table: use `stream.group_by(...)`)."""


class TableWriteOutsideAgentError(AppError):
    """A table was written outside an agent, where no transaction can carry the change."""


class RecordError(AppError):
    """A record could not be processed (decoded, re-keyed, processed by an agent, its output
    encoded) under on_error="fail": the worker stops at it (exit code EXIT_DATAERR) and
    nothing of its cycle commits. The message is one line ending with where and why:
    "agent 'total' failed at orders[0]@6 (key 'ada'): KeyError('total')".

    `events` are the events that failed (with topic, partition, offset), `agent` the agent
    whose policy applies, `stage` "decode", "group_by", "agent" or "sink"."""

    def __init__(
        self,
        message: str,
        *,
        events: Sequence[Any] = (),
        agent: str | None = None,
        stage: str = "agent",
    ) -> None:
        super().__init__(message)
        self.events = list(events)
        self.agent = agent
        self.stage = stage


class AgentError(RecordError):
    """An agent (or its group_by) raised while processing an event, or its output could not
    be encoded; nothing of its batch was committed."""


class AgentStoppedError(AppError):
    """An agent returned while its stream still had events to process."""


class RecordDecodeError(RecordError):
    """A record's key or value could not be decoded (on_decode_error / on_error "fail")."""


def exit_code(exc: BaseException) -> int:
    """The exit code a worker process reports for the error that stopped it."""
    if isinstance(exc, ResourceError):
        return EXIT_TEMPFAIL
    if isinstance(exc, (ConfigurationError, DatabaseError)):
        return EXIT_CONFIG
    if isinstance(exc, RecordError):
        return EXIT_DATAERR
    return 1
