"""The embedded broker: a Kafka-faithful log in one SQLite file, shared by processes.

Every public method is one SQLite transaction (writes take `BEGIN IMMEDIATE`, so concurrent
writers queue instead of failing), so a process killed at any point leaves the file as it was
before or after the call, never in between. The class is synchronous; `runtime.transport`
runs it off the event loop.

    broker = Broker("app.db")
    broker.create_topic("words", partitions=4)
    pid, epoch = broker.init_producer_id()
    broker.produce(pid, epoch, [ProduceBatch("words", 0, 0, [b"k"], [b"v"], [now_ms])])
    broker.fetch([(TopicPartition("words", 0), 0)], isolation="read_committed")
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from runtime.broker.classic import ClassicGroup, ClassicGroups, JoinResult
from runtime.broker.groups import GroupDescription, Groups, MemberState
from runtime.broker.integrity import (
    BackupReport,
    OpenGuard,
    backup,
    check_at_open,
    mark_open,
    opened_uncleanly,
    wal_bytes,
)
from runtime.broker.log import Log, StoredBatch, Topic
from runtime.broker.schema import DATA, TXN, open_database, storage_error
from runtime.broker.transactions import NO_PRODUCER, Transactions
from runtime.errors import (
    InvalidRequestError,
    InvalidTxnStateError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    UnknownTopicError,
)
from runtime.types import (
    GroupMetadata,
    Headers,
    PartitionInfo,
    Record,
    TopicDescription,
    TopicPartition,
)

READ_COMMITTED = "read_committed"
READ_UNCOMMITTED = "read_uncommitted"
ISOLATION_LEVELS = (READ_COMMITTED, READ_UNCOMMITTED)
EARLIEST = "earliest"
LATEST = "latest"
DEFAULT_MAX_RECORD_BYTES = 1 << 20
DEFAULT_DELETE_RETENTION_MS = 86_400_000
EXPIRY_CHECK_INTERVAL_MS = 100

T = TypeVar("T")
log = logging.getLogger(__name__)


class ProduceBatch(NamedTuple):
    """Records for one partition, in one request. `base_seq` is the producer's sequence
    number of the first record (ignored for pid -1)."""

    topic: str
    partition: int
    base_seq: int
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]
    timestamps: Sequence[int]
    headers: Sequence[Headers | None] | None = None


class FetchResult(NamedTuple):
    records: list[Record]
    next_offset: int  # where the next fetch of this partition starts
    high_watermark: int
    last_stable: int
    log_start: int


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Broker:
    """One connection to a broker database (a file path, or ":memory:")."""

    def __init__(
        self,
        path: str = ":memory:",
        *,
        synchronous: str = "normal",
        busy_timeout_ms: int = 60_000,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.path = path
        self.conn = open_database(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        self._guard: OpenGuard | None = None
        if path != ":memory:":
            self._check_at_open()
        self.clock = clock
        self.max_record_bytes = max_record_bytes
        self.log = Log(self.conn)
        self.groups = Groups(self.conn)
        self.txns = Transactions(self.conn, self.log, self.groups)
        self.classic = ClassicGroups(self.conn, self.groups)
        self._next_expiry_check = 0

    def _check_at_open(self) -> None:
        """Hold the file's open guard. As the first connection to the file: refuse it if it
        was not closed cleanly and fails SQLite's integrity_check; then mark it in use and
        let other connections in (they wait for the check)."""
        try:
            self._guard = OpenGuard.acquire(self.path)
            if self._guard is None or not self._guard.first:
                return
            if opened_uncleanly(self.conn, wal_bytes(self.path)):
                started = time.perf_counter()
                check_at_open(self.conn, self.path)
                log.info(
                    "broker database %s was not closed cleanly: its check passed in %.2f s",
                    self.path,
                    time.perf_counter() - started,
                )
            mark_open(self.conn, True)
            self._guard.share()
        except BaseException as exc:
            self.conn.close()
            if self._guard is not None:
                self._guard.release()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path) from exc
            raise

    def close(self) -> None:
        if self._guard is not None and self._guard.last() and not self.conn.in_transaction:
            mark_open(self.conn, False)  # the last connection: the file is closed cleanly
        self.conn.close()
        if self._guard is not None:
            self._guard.release()
            self._guard = None

    def backup(self, dest: str) -> BackupReport:
        """Copy this database, as of now, to the new file `dest` while others keep writing
        (SQLite's online backup API), and check the copy."""
        if self.path == ":memory:":
            raise InvalidRequestError("an in-memory broker has no file to back up")
        if self.conn.in_transaction:  # a failed call may have left one open
            self.conn.execute("ROLLBACK")
        return backup(self.conn, self.path, dest)

    # --- transactions of the database ---------------------------------------------------

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[None]:
        """One SQLite transaction. When it fails, whatever it did is rolled back (SQLite may
        have done so already, e.g. on a full disk) and the cached topic metadata is dropped,
        so the next call starts from what the file holds."""
        try:
            self._rollback()  # a rollback that failed earlier must not wedge the connection
            self.conn.execute(mode)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from exc
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as exc:
            self.log.forget()
            try:
                self._rollback()
            except sqlite3.Error:
                log.warning("rollback failed on %s; retried at the next call", self.path)
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path) from exc
            raise

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _run(self, mode: str, operation: Callable[[], T]) -> T:
        """Run `operation` in one transaction, with topic metadata checked against the
        database (another connection may have created, deleted or re-created a topic)."""
        for attempt in (0, 1):
            try:
                with self._transaction(mode):
                    self.log.refresh()
                    return operation()
            except UnknownTopicError:
                if attempt:
                    raise
                self.log.forget()
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path) from exc
        raise AssertionError("unreachable")

    def _write(self, operation: Callable[[int], T]) -> T:
        def run() -> T:
            now = self.clock()
            self.txns.expire(now)
            return operation(now)

        return self._run("BEGIN IMMEDIATE", run)

    def _read(self, operation: Callable[[], T]) -> T:
        return self._run("BEGIN", operation)

    def data_version(self) -> int:
        """Changes when another connection commits to the database (for long polling)."""
        try:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from exc

    # --- topics -------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        compacted: bool = False,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        delete_retention_ms: int = DEFAULT_DELETE_RETENTION_MS,
    ) -> TopicDescription:
        topic = self._write(
            lambda now: self.log.create_topic(
                name,
                partitions,
                compacted,
                retention_ms,
                retention_bytes,
                delete_retention_ms,
                now,
            )
        )
        return _describe(topic)

    def delete_topic(self, name: str) -> None:
        self._write(lambda now: self.log.delete_topic(name))

    def list_topics(self) -> list[TopicDescription]:
        return self._read(self.log.topics)

    def describe_topic(self, name: str) -> TopicDescription:
        return _describe(self._read(lambda: self.log.topic(name)))

    def partition_info(self, topic: str, partition: int) -> PartitionInfo:
        def run() -> PartitionInfo:
            tp_id = self.log.tp_id(topic, partition)
            log_start, hw, size = self.log.offsets(tp_id)
            batches = self.conn.execute(
                "SELECT count(*) FROM batches WHERE tp = ?", (tp_id,)
            ).fetchone()[0]
            return PartitionInfo(
                topic, partition, log_start, hw, self.log.last_stable(tp_id, hw), batches, size
            )

        return self._read(run)

    # --- producing ----------------------------------------------------------------------

    def init_producer_id(
        self, transactional_id: str | None = None, transaction_timeout_ms: int = 60_000
    ) -> tuple[int, int]:
        """(pid, epoch) for a new idempotent producer, or for a transactional id its pid at
        a new epoch: the previous instance is fenced and its open transaction aborted."""
        return self._write(
            lambda now: self.txns.init(transactional_id, transaction_timeout_ms, now)
        )

    def produce(
        self,
        pid: int,
        epoch: int,
        batches: Sequence[ProduceBatch],
        *,
        transactional: bool = False,
    ) -> list[int]:
        """Append batches atomically (all or none); returns each batch's base offset. A batch
        that repeats one already written (same pid, epoch and sequences) is not written again:
        its original base offset is returned."""

        def run(now: int) -> list[int]:
            offsets = []
            producer = self.txns.producer_state(pid, epoch)
            for batch in batches:
                count = self._validate(batch)
                if pid != NO_PRODUCER and batch.base_seq < 0:
                    raise InvalidRequestError("an idempotent batch needs a sequence >= 0")
                tp_id = self.log.tp_id(batch.topic, batch.partition)
                if self.log.topic(batch.topic).compacted and None in batch.keys:
                    raise InvalidRequestError(
                        f"topic {batch.topic!r} is compacted: every record needs a key"
                    )
                duplicate, recent = self.txns.check_append(
                    pid, epoch, tp_id, batch.base_seq, count, transactional, producer
                )
                if duplicate is not None:
                    offsets.append(duplicate)
                    continue
                base = self.log.append(
                    tp_id,
                    batch.keys,
                    batch.values,
                    batch.timestamps,
                    batch.headers,
                    pid,
                    epoch,
                    batch.base_seq,
                    TXN if transactional else DATA,
                    now,
                )
                self.txns.record_append(
                    pid, epoch, tp_id, batch.base_seq, count, base, transactional, now, recent
                )
                offsets.append(base)
            return offsets

        return self._write(run)

    def _validate(self, batch: ProduceBatch) -> int:
        if not isinstance(batch, ProduceBatch):
            raise InvalidRequestError(f"expected a ProduceBatch, not {type(batch).__name__}")
        columns: list[Sequence[Any]] = [batch.keys, batch.values, batch.timestamps]
        if batch.headers is not None:
            columns.append(batch.headers)
        if not all(isinstance(column, (list, tuple)) for column in columns):
            raise InvalidRequestError("keys, values, timestamps and headers must be lists")
        count = len(batch.values)
        if count == 0:
            raise InvalidRequestError("a batch needs at least one record")
        if any(len(column) != count for column in columns):
            raise InvalidRequestError("keys, values, timestamps and headers differ in length")
        if type(batch.base_seq) is not int or batch.base_seq < NO_PRODUCER:
            raise InvalidRequestError("base_seq must be a non-negative integer (or -1)")
        if not all(type(ts) is int for ts in batch.timestamps):
            raise InvalidRequestError("timestamps must be int milliseconds")
        for column in (batch.values, batch.keys):
            for item in column:
                if item is not None and type(item) is not bytes:
                    raise InvalidRequestError(
                        f"keys and values must be bytes or None, not {type(item).__name__}"
                    )
                if item is not None and len(item) > self.max_record_bytes:
                    raise RecordTooLargeError(
                        f"a record of {len(item)} bytes exceeds the limit of "
                        f"{self.max_record_bytes} bytes"
                    )
        for headers in batch.headers or ():
            if headers is not None and not (
                isinstance(headers, list)
                and all(
                    isinstance(h, tuple)
                    and len(h) == 2
                    and type(h[0]) is str
                    and type(h[1]) is bytes
                    for h in headers
                )
            ):
                raise InvalidRequestError("headers must be None or a list of (str, bytes) pairs")
        return count

    # --- transactions -------------------------------------------------------------------

    def begin_transaction(self, pid: int, epoch: int) -> None:
        """Open a transaction before its first write (its timeout starts now); fenced
        producers are refused. Writes and offsets open one too: this is for a protocol whose
        clients announce a transaction before writing."""
        self._write(lambda now: self.txns.begin(pid, epoch, now))

    def end_transaction(
        self, pid: int, epoch: int, commit: bool, *, bump_epoch: bool = True
    ) -> int:
        """Write COMMIT or ABORT markers to every partition the transaction touched and
        publish (or drop) its offsets. Returns the producer's epoch after it: the next one,
        which fences writes delayed past the end (or, with `bump_epoch=False`, the same one,
        for Kafka clients that keep their epoch across transactions)."""
        return self._write(lambda now: self.txns.end(pid, epoch, commit, now, bump_epoch))

    def send_offsets_to_transaction(
        self,
        pid: int,
        epoch: int,
        offsets: Mapping[TopicPartition, int],
        group: GroupMetadata,
        *,
        fence_member: bool = True,
    ) -> None:
        """Offsets committed with the transaction. The member (id and generation) must own
        the partitions; `fence_member=False` is for Kafka clients whose TxnOffsetCommit
        (versions 0-2) carries no member: as in Kafka, only the producer's epoch fences."""
        if not isinstance(group, GroupMetadata):
            raise InvalidTxnStateError("send_offsets_to_transaction needs group metadata")
        if fence_member and not group.member_id:
            raise InvalidTxnStateError(
                "send_offsets_to_transaction needs the consumer's group metadata (member id and "
                "generation), so that a zombie member cannot commit"
            )
        checked = self._check_offsets(offsets)

        def run(now: int) -> None:
            self._check_partitions(checked)
            self.txns.add_offsets(pid, epoch, group, checked, now, fence_member)

        self._write(run)

    def expire_transactions(self) -> list[int]:
        """Abort transactions past their timeout now; returns the fenced producer ids."""
        return self._run("BEGIN IMMEDIATE", lambda: self.txns.expire(self.clock()))

    def _expire_if_due(self) -> None:
        now = self.clock()
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + EXPIRY_CHECK_INTERVAL_MS
        if self._read(lambda: self.txns.has_expired(now)):
            self._write(lambda now: None)

    # --- fetching -----------------------------------------------------------------------

    def fetch(
        self,
        requests: Iterable[tuple[TopicPartition, int]],
        *,
        max_records: int = 1000,
        isolation: str = READ_UNCOMMITTED,
    ) -> dict[TopicPartition, FetchResult]:
        """Records from each (partition, offset), at most `max_records` in all, in request
        order. read_committed stops at the last stable offset and skips aborted records."""
        if isolation not in ISOLATION_LEVELS:
            raise InvalidRequestError(f"isolation must be one of {ISOLATION_LEVELS}")
        if type(max_records) is not int or max_records < 1:
            raise InvalidRequestError("max_records must be a positive integer")
        committed = isolation == READ_COMMITTED
        requests = list(requests)
        if committed:
            self._expire_if_due()

        def run() -> dict[TopicPartition, FetchResult]:
            results = {}
            budget = max_records
            for tp, offset in requests:
                tp_id = self.log.tp_id(tp.topic, tp.partition)
                log_start, hw, lso = self.log.offsets_and_last_stable(tp_id)
                try:
                    self.log.check_offset(tp, offset, log_start, hw)
                except OffsetOutOfRangeError as exc:
                    exc.args = (*exc.args, TopicPartition(*tp))
                    raise
                end = lso if committed else hw
                records: list[Record] = []
                position = offset
                if budget > 0 and offset < end:
                    records, position = self.log.read(tp, tp_id, offset, end, budget, committed)
                    budget -= len(records)
                results[TopicPartition(*tp)] = FetchResult(records, position, hw, lso, log_start)
            return results

        return self._read(run)

    def fetch_batches(
        self,
        tp: TopicPartition,
        offset: int,
        *,
        max_bytes: int = 1 << 20,
        isolation: str = READ_UNCOMMITTED,
    ) -> tuple[list[StoredBatch], int, int, int]:
        """Stored batches of one partition from `offset`, whole (as a Kafka broker returns
        them, markers included), at least one and then up to `max_bytes`; and the partition's
        (high watermark, last stable offset, log start). read_committed stops at the LSO and
        leaves out batches of aborted transactions."""
        if isolation not in ISOLATION_LEVELS:
            raise InvalidRequestError(f"isolation must be one of {ISOLATION_LEVELS}")
        committed = isolation == READ_COMMITTED
        if committed:
            self._expire_if_due()

        def run() -> tuple[list[StoredBatch], int, int, int]:
            tp_id = self.log.tp_id(tp.topic, tp.partition)
            log_start, hw, _ = self.log.offsets(tp_id)
            self.log.check_offset(TopicPartition(*tp), offset, log_start, hw)
            lso = self.log.last_stable(tp_id, hw)
            end = lso if committed else hw
            batches = (
                self.log.read_batches(tp_id, offset, end, max_bytes, committed)
                if offset < end
                else []
            )
            return batches, hw, lso, log_start

        return self._read(run)

    def list_offset(
        self, tp: TopicPartition, spec: str | int, isolation: str = READ_UNCOMMITTED
    ) -> int:
        """ "earliest", "latest" (the LSO under read_committed) or the first offset whose
        timestamp is at or after `spec` (ms); the end offset when none is."""

        if isolation not in ISOLATION_LEVELS:
            raise InvalidRequestError(f"isolation must be one of {ISOLATION_LEVELS}")

        def run() -> int:
            tp_id = self.log.tp_id(tp.topic, tp.partition)
            log_start, hw, _ = self.log.offsets(tp_id)
            end = self.log.last_stable(tp_id, hw) if isolation == READ_COMMITTED else hw
            if spec == EARLIEST:
                return log_start
            if spec == LATEST:
                return end
            if type(spec) is not int:
                raise InvalidRequestError(
                    f"offset spec must be 'earliest', 'latest' or a timestamp, not {spec!r}"
                )
            found = self.log.offset_for_time(tp_id, spec)
            return end if found is None else min(found, end)

        return self._read(run)

    # --- consumer groups ----------------------------------------------------------------

    def join_group(
        self,
        group_id: str,
        topics: Iterable[str],
        *,
        client_id: str = "streams",
        session_timeout_ms: int = 10_000,
        rebalance_timeout_ms: int = 60_000,
        assignor: str = "sticky",
        instance_id: str | None = None,
        standby_replicas: int = 0,
    ) -> tuple[str, int]:
        """Join a group; `assignor` is "sticky" (balanced per partition) or "copartitioned"
        (partition p of co-partitioned topics to one member, for stream processing). A static
        `instance_id` replaces a previous member with that id at once (a restarted worker).
        With `standby_replicas`, heartbeats also name partitions whose tables the member
        should keep warm for a fast takeover."""
        topics = list(topics)
        return self._write(
            lambda now: self.groups.join(
                group_id,
                topics,
                client_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                now,
                assignor,
                instance_id,
                standby_replicas,
            )
        )

    def heartbeat(
        self, group_id: str, member_id: str, released: Iterable[TopicPartition] = ()
    ) -> MemberState:
        released = list(released)
        return self._write(lambda now: self.groups.heartbeat(group_id, member_id, released, now))

    def leave_group(self, group_id: str, member_id: str) -> None:
        self._write(lambda now: self.groups.leave(group_id, member_id, now))

    def commit_offsets(self, group: GroupMetadata, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit consumed offsets outside a transaction, fenced like a transactional one."""
        checked = self._check_offsets(offsets)

        def run(now: int) -> None:
            self._check_partitions(checked)
            self.groups.commit(group, checked, now)

        self._write(run)

    def committed_offsets(
        self, group_id: str, tps: Iterable[TopicPartition], *, require_stable: bool = True
    ) -> dict[TopicPartition, int]:
        """The group's committed offsets; with `require_stable`, UnstableOffsetCommitError
        while an open transaction holds offsets for one of the partitions."""
        tps = list(tps)
        self._expire_if_due()
        return self._read(lambda: self.groups.committed(group_id, tps, require_stable))

    def describe_group(self, group_id: str) -> GroupDescription:
        return self._write(lambda now: self.groups.describe(group_id, now))

    def list_groups(self) -> list[str]:
        return self._read(self.groups.list)

    def alter_group_offsets(self, group_id: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Set a group's committed offsets (a tool's reset), only while it has no live
        members (GroupNotEmptyError); each offset must be within the partition's log."""
        checked = self._check_offsets(offsets)

        def run(now: int) -> None:
            for tp, offset in checked.items():
                tp_id = self.log.tp_id(tp.topic, tp.partition)
                log_start, hw, _ = self.log.offsets(tp_id)
                self.log.check_offset(tp, offset, log_start, hw)
            self.groups.alter_offsets(group_id, checked, now)

        self._write(run)

    def delete_group(self, group_id: str) -> None:
        """Delete a group and its committed offsets, only while it has no live members
        (classic-protocol members included)."""

        def run(now: int) -> None:
            self.classic.check_empty(group_id, now)
            self.groups.delete(group_id, now)
            self.classic.forget(group_id)

        self._write(run)

    # --- classic-protocol groups (client-side assignment; runtime.broker.classic) ----------

    def classic_join(
        self,
        group_id: str,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Sequence[tuple[str, bytes]],
    ) -> str:
        """Join (or rejoin) a classic group; returns the member id. Poll
        `classic_join_result` for the answer: the round completes once every member joined."""
        return self._write(
            lambda now: self.classic.join(
                group_id,
                member_id,
                instance_id,
                client_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocol_type,
                protocols,
                now,
            )
        )

    def classic_join_result(self, group_id: str, member_id: str) -> JoinResult | None:
        return self._write(lambda now: self.classic.join_result(group_id, member_id, now))

    def classic_sync(
        self,
        group_id: str,
        member_id: str,
        generation: int,
        assignments: Mapping[str, bytes],
        owned: Mapping[str, Sequence[TopicPartition]],
    ) -> None:
        """A SyncGroup: the leader's carries every member's assignment (opaque bytes) and
        the partitions each names (so that commits are fenced by ownership)."""
        self._write(
            lambda now: self.classic.sync(group_id, member_id, generation, assignments, owned, now)
        )

    def classic_sync_result(self, group_id: str, member_id: str, generation: int) -> bytes | None:
        return self._write(
            lambda now: self.classic.sync_result(group_id, member_id, generation, now)
        )

    def classic_heartbeat(self, group_id: str, member_id: str, generation: int) -> None:
        self._write(lambda now: self.classic.heartbeat(group_id, member_id, generation, now))

    def classic_leave(self, group_id: str, members: Sequence[tuple[str, str | None]]) -> None:
        self._write(lambda now: self.classic.leave(group_id, members, now))

    def classic_describe(self, group_id: str) -> ClassicGroup | None:
        return self._write(lambda now: self.classic.describe(group_id, now))

    def classic_list(self) -> list[tuple[str, str, str | None]]:
        return self._write(lambda now: self.classic.list())

    def _check_offsets(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets as {TopicPartition: next offset}, each naming an existing partition."""
        if not isinstance(offsets, Mapping):
            raise InvalidRequestError("offsets must map TopicPartition to the next offset")
        checked = {}
        for tp, offset in offsets.items():
            if not isinstance(tp, tuple) or len(tp) != 2 or type(offset) is not int or offset < 0:
                raise InvalidRequestError(f"bad offset entry {tp!r}: {offset!r}")
            checked[TopicPartition(*tp)] = offset
        return checked

    def _check_partitions(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.log.tp_id(tp.topic, tp.partition)  # UnknownTopicError, PartitionOutOfRange

    def delete_records(self, tp: TopicPartition, before: int | str) -> int:
        """Delete the records of a partition below offset `before` (LATEST: all of them, up
        to the high watermark): the log start moves there. Returns the new log start."""

        def run(now: int) -> int:
            tp_id = self.log.tp_id(tp.topic, tp.partition)
            if before == LATEST:
                before_offset = self.log.offsets(tp_id)[1]
            elif type(before) is int:
                before_offset = before
            else:
                raise InvalidRequestError(f"delete before an offset or 'latest', not {before!r}")
            return self.log.delete_before(TopicPartition(*tp), tp_id, before_offset)

        return self._write(run)

    # --- maintenance --------------------------------------------------------------------

    def maintain(self, *, force_compaction: bool = False) -> dict[str, int]:
        """Abort expired transactions, apply retention and compact compacted topics."""

        def run(now: int) -> dict[str, int]:
            deleted = compacted = 0
            for description in self.log.topics():
                topic = self.log.topic(description.name)
                if topic.retention_ms is not None or topic.retention_bytes is not None:
                    deleted += self.log.enforce_retention(topic, now)
                if topic.compacted:
                    compacted += self.log.compact(topic, now, force=force_compaction)
            return {"batches_deleted": deleted, "records_compacted": compacted}

        return self._write(run)


def _describe(topic: Topic) -> TopicDescription:
    return TopicDescription(
        topic.name, topic.partitions, topic.compacted, topic.retention_ms, topic.retention_bytes
    )


__all__ = [
    "EARLIEST",
    "LATEST",
    "NO_PRODUCER",
    "READ_COMMITTED",
    "READ_UNCOMMITTED",
    "Broker",
    "FetchResult",
    "ProduceBatch",
]
