"""Idempotent and transactional producers: ids, epochs, sequences, markers and timeouts.

Kafka's rules (see the semantics digest, sections 1 and 2), on one node:

- a producer id (pid) and epoch per producer; a transactional id maps to one pid, and
  `init` bumps its epoch, which fences the previous instance and aborts what it left open;
- per (pid, partition) the last 5 batches' sequences: a resent batch is acknowledged with its
  original offset and not written again; a gap is OutOfOrderSequence;
- the epoch is bumped at every end of a transaction (as Kafka's "transactions v2"), so a write
  or an EndTxn delayed past the end of its transaction is rejected as fenced, never joins the
  next transaction;
- an open transaction that outlives its timeout is aborted, and its producer fenced.

    pid, epoch = txns.init("wordcount-0", timeout_ms=60_000, now=now)
    epoch = txns.end(pid, epoch, commit=True, now=now)
"""

from __future__ import annotations

import sqlite3

import orjson

from runtime.broker.groups import Groups
from runtime.broker.log import Log
from runtime.broker.schema import TXN_EMPTY, TXN_ONGOING
from runtime.errors import (
    InvalidProducerEpochError,
    InvalidRequestError,
    InvalidTransactionTimeoutError,
    InvalidTxnStateError,
    OutOfOrderSequenceError,
    UnknownProducerIdError,
)
from runtime.types import GroupMetadata, TopicPartition

RECENT_BATCHES = 5
MAX_TRANSACTION_TIMEOUT_MS = 900_000
NO_PRODUCER = -1


class Transactions:
    def __init__(self, conn: sqlite3.Connection, log: Log, groups: Groups) -> None:
        self.conn = conn
        self.log = log
        self.groups = groups

    # --- producer ids -------------------------------------------------------------------

    def init(self, transactional_id: str | None, timeout_ms: int, now: int) -> tuple[int, int]:
        """A new producer id at epoch 0, or for a transactional id its pid at the next epoch
        (aborting the transaction the previous instance left open)."""
        if type(timeout_ms) is not int or not 1 <= timeout_ms <= MAX_TRANSACTION_TIMEOUT_MS:
            raise InvalidTransactionTimeoutError(
                f"transaction timeout must be 1..{MAX_TRANSACTION_TIMEOUT_MS} ms, "
                f"not {timeout_ms!r}"
            )
        if transactional_id is not None:
            if not isinstance(transactional_id, str) or not transactional_id:
                raise InvalidRequestError("transactional_id must be a non-empty string")
            row = self.conn.execute(
                "SELECT pid, epoch, txn_state FROM producers WHERE transactional_id = ?",
                (transactional_id,),
            ).fetchone()
            if row is not None:
                pid, epoch, state = row
                if state == TXN_ONGOING:
                    epoch = self._finish(pid, epoch, commit=False, now=now)
                epoch += 1
                self.conn.execute(
                    "UPDATE producers SET epoch = ?, txn_timeout_ms = ?, updated_ms = ?"
                    " WHERE pid = ?",
                    (epoch, timeout_ms, now, pid),
                )
                return pid, epoch
        cursor = self.conn.execute(
            "INSERT INTO producers (epoch, transactional_id, txn_timeout_ms, updated_ms)"
            " VALUES (0, ?, ?, ?)",
            (transactional_id, timeout_ms, now),
        )
        pid = cursor.lastrowid
        assert pid is not None
        return pid, 0

    def _producer(self, pid: int, epoch: int) -> tuple[str | None, int, int]:
        """(transactional id, txn state, timeout) of a producer whose epoch is current."""
        row = self.conn.execute(
            "SELECT epoch, transactional_id, txn_state, txn_timeout_ms FROM producers"
            " WHERE pid = ?",
            (pid,),
        ).fetchone()
        if row is None:
            raise UnknownProducerIdError(f"unknown producer id {pid}: call init first")
        if epoch != row[0]:
            if epoch < row[0]:
                raise InvalidProducerEpochError(
                    f"producer {pid} epoch {epoch} is fenced (current epoch {row[0]}): a newer "
                    "instance took over its transactional id, or its transaction timed out"
                )
            raise InvalidProducerEpochError(f"producer {pid} epoch {epoch} is in the future")
        return row[1], row[2], row[3]

    # --- appends ------------------------------------------------------------------------

    def producer_state(self, pid: int, epoch: int) -> tuple[str | None, int]:
        """(transactional id, txn state) of a producer whose epoch is current, read once per
        produce call and passed to `check_append` for each of its batches (nothing in the call
        changes either before its batches are checked: `record_append` only moves an empty
        transaction to ongoing, which no batch of a transactional call is checked against)."""
        if pid == NO_PRODUCER:
            return None, TXN_EMPTY
        txn_id, state, _ = self._producer(pid, epoch)
        return txn_id, state

    def check_append(
        self,
        pid: int,
        epoch: int,
        tp_id: int,
        base_seq: int,
        count: int,
        transactional: bool,
        producer: tuple[str | None, int],
    ) -> tuple[int | None, list[list[int]]]:
        """Validate a batch before it is written. Returns the original base offset when the
        batch is a resend of one already written, else None; and the partition's recent
        sequences of this epoch, for `record_append` (one read of the row per batch)."""
        if pid == NO_PRODUCER:
            if transactional:
                raise InvalidTxnStateError("a transactional batch needs a producer id")
            return None, []
        txn_id, state = producer
        row = self.conn.execute(
            "SELECT epoch, recent FROM sequences WHERE pid = ? AND tp = ?", (pid, tp_id)
        ).fetchone()
        last_seq = base_seq + count - 1
        expected: int | None = None  # no state for this producer here: any sequence (Kafka)
        recent: list[list[int]] = []
        if row is not None and row[0] == epoch:
            recent = orjson.loads(row[1])
            for first, last, offset in recent:
                if first == base_seq and last == last_seq:
                    return int(offset), recent
            expected = recent[-1][1] + 1
        elif row is not None:
            expected = 0  # a new epoch restarts the sequences at 0
        if expected is not None and base_seq != expected:
            raise OutOfOrderSequenceError(
                f"producer {pid} sent sequence {base_seq} for partition id {tp_id}, "
                f"expected {expected}"
            )
        if transactional and txn_id is None:
            raise InvalidTxnStateError(
                "a transactional batch from a producer without a transactional id"
            )
        if not transactional and state == TXN_ONGOING:
            raise InvalidTxnStateError(
                f"producer {pid} has an open transaction: its writes must be transactional"
            )
        return None, recent

    def record_append(
        self,
        pid: int,
        epoch: int,
        tp_id: int,
        base_seq: int,
        count: int,
        base_offset: int,
        transactional: bool,
        now: int,
        recent: list[list[int]],
    ) -> None:
        """Remember a written batch's sequences (`recent`: what `check_append` read for this
        batch, in the same write transaction); start the transaction on its first write."""
        if pid == NO_PRODUCER:
            return
        recent = [*recent[-(RECENT_BATCHES - 1) :], [base_seq, base_seq + count - 1, base_offset]]
        self.conn.execute(
            "INSERT OR REPLACE INTO sequences VALUES (?, ?, ?, ?)",
            (pid, tp_id, epoch, orjson.dumps(recent)),
        )
        if transactional:
            self._begin(pid, now)
            self.conn.execute(
                "INSERT OR IGNORE INTO txn_partitions VALUES (?, ?, ?)", (pid, tp_id, base_offset)
            )

    def _begin(self, pid: int, now: int) -> None:
        self.conn.execute(
            "UPDATE producers SET txn_state = ?, txn_deadline_ms = ? + txn_timeout_ms,"
            " updated_ms = ? WHERE pid = ? AND txn_state = ?",
            (TXN_ONGOING, now, now, pid, TXN_EMPTY),
        )

    # --- offsets and the end of a transaction -------------------------------------------

    def add_offsets(
        self,
        pid: int,
        epoch: int,
        group: GroupMetadata,
        offsets: dict[TopicPartition, int],
        now: int,
        fence_member: bool = True,
    ) -> None:
        """Offsets that become the group's committed offsets if the transaction commits.
        The group member must own every partition (zombie members are fenced), unless
        `fence_member` is False: the producer's epoch is then the only fence."""
        txn_id, _, _ = self._producer(pid, epoch)
        if txn_id is None:
            raise InvalidTxnStateError("send_offsets_to_transaction needs a transactional id")
        if fence_member:
            self.groups.check_owner(group, offsets, now)
        self._begin(pid, now)
        self.conn.executemany(
            "INSERT OR REPLACE INTO txn_offsets VALUES (?, ?, ?, ?, ?, NULL)",
            [(pid, group.group_id, tp.topic, tp.partition, off) for tp, off in offsets.items()],
        )

    def begin(self, pid: int, epoch: int, now: int) -> None:
        """Start a transaction (and its timeout) before its first write: Kafka's
        AddPartitionsToTxn and AddOffsetsToTxn, which also fence a stale epoch."""
        txn_id, _, _ = self._producer(pid, epoch)
        if txn_id is None:
            raise InvalidTxnStateError(f"producer {pid} is not transactional")
        self._begin(pid, now)

    def end(self, pid: int, epoch: int, commit: bool, now: int, bump_epoch: bool = True) -> int:
        """Commit or abort the open transaction; returns the producer's epoch after it (the
        next one, unless `bump_epoch` is False: Kafka clients without transactions v2 keep
        their epoch across transactions)."""
        txn_id, state, _ = self._producer(pid, epoch)
        if txn_id is None:
            raise InvalidTxnStateError(f"producer {pid} is not transactional")
        if state != TXN_ONGOING:
            raise InvalidTxnStateError(f"producer {pid} has no open transaction to end")
        return self._finish(pid, epoch, commit, now, bump_epoch)

    def _finish(self, pid: int, epoch: int, commit: bool, now: int, bump_epoch: bool = True) -> int:
        touched = self.conn.execute(
            "SELECT tp, first_offset FROM txn_partitions WHERE pid = ? ORDER BY tp", (pid,)
        ).fetchall()
        for tp_id, first_offset in touched:
            if not commit:
                self.log.mark_aborted(tp_id, pid, first_offset)
            self.log.append_marker(tp_id, pid, epoch, commit, now)
        if commit:
            self.conn.execute(
                "INSERT OR REPLACE INTO offsets (group_id, topic, partition, next_offset,"
                " metadata, commit_ms) SELECT group_id, topic, partition, next_offset, metadata, ?"
                " FROM txn_offsets WHERE pid = ?",
                (now, pid),
            )
        self.conn.execute("DELETE FROM txn_offsets WHERE pid = ?", (pid,))
        self.conn.execute("DELETE FROM txn_partitions WHERE pid = ?", (pid,))
        self.conn.execute(
            "UPDATE producers SET epoch = ?, txn_state = ?, txn_deadline_ms = NULL,"
            " updated_ms = ? WHERE pid = ?",
            (epoch + bump_epoch, TXN_EMPTY, now, pid),
        )
        return epoch + bump_epoch

    def expire(self, now: int) -> list[int]:
        """Abort every transaction past its deadline (fencing its producer); returns pids."""
        rows = self.conn.execute(
            "SELECT pid, epoch FROM producers WHERE txn_state = ? AND txn_deadline_ms < ?",
            (TXN_ONGOING, now),
        ).fetchall()
        for pid, epoch in rows:
            self._finish(pid, epoch, commit=False, now=now)
        return [pid for pid, _ in rows]

    def has_expired(self, now: int) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM producers WHERE txn_state = ? AND txn_deadline_ms < ? LIMIT 1",
                (TXN_ONGOING, now),
            ).fetchone()
            is not None
        )


__all__ = ["NO_PRODUCER", "Transactions"]
